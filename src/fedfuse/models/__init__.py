"""Model adapters (PyTorch, Keras 3, scikit-learn) and a small model zoo written in plain torch."""

from fedfuse.models._baseline import train_centralized
from fedfuse.models._config import TrainConfig
from fedfuse.models._doc2vec import (
    DOC2VEC_SETTINGS,
    Doc2VecAdapter,
    merge_word_counts,
    prepare_doc2vec,
)
from fedfuse.models._dpsgd import dp_sgd_epsilon, dp_sgd_steps
from fedfuse.models._files import (
    ModelFileError,
    builtin_module_classes,
    check_model_file,
    load_torch_model,
)
from fedfuse.models._keras import KerasAdapter, keras_optimizer, load_keras_model
from fedfuse.models._optim import OPTIMIZERS, make_optimizer, resolve_optimizer
from fedfuse.models._registry import MODEL_TYPES, ModelType, get_model_type, register_model_type
from fedfuse.models._sklearn import SklearnAdapter
from fedfuse.models._spec import ModelSpec
from fedfuse.models._torch import LossFn, TorchAdapter, torch_seed
from fedfuse.models._zoo import (
    MODELS,
    build_model,
    cifar_cnn,
    logistic_regression,
    mlp,
    mnist_cnn,
)

__all__ = [
    "DOC2VEC_SETTINGS",
    "Doc2VecAdapter",
    "merge_word_counts",
    "prepare_doc2vec",
    "dp_sgd_epsilon",
    "dp_sgd_steps",
    "KerasAdapter",
    "keras_optimizer",
    "load_keras_model",
    "MODEL_TYPES",
    "ModelType",
    "get_model_type",
    "register_model_type",
    "MODELS",
    "ModelSpec",
    "SklearnAdapter",
    "OPTIMIZERS",
    "LossFn",
    "ModelFileError",
    "TorchAdapter",
    "TrainConfig",
    "build_model",
    "builtin_module_classes",
    "check_model_file",
    "cifar_cnn",
    "logistic_regression",
    "load_torch_model",
    "make_optimizer",
    "mlp",
    "mnist_cnn",
    "resolve_optimizer",
    "torch_seed",
    "train_centralized",
]
