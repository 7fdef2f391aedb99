import io
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from fedfuse.data import ArrayDataset, PartyData, get_data_handler
from fedfuse.data._loaders import DatasetFormatError
from fedfuse.models import ModelFileError, check_model_file, load_torch_model
from fedfuse.weights import SizeLimitError, SizeLimits


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def tutorial_model() -> nn.Module:
    """The Model Fusion tutorial's CNN, exactly as the notebook writes it."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 1), nn.ReLU(),
        nn.MaxPool2d(2, 2), nn.Dropout2d(p=0.25), nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(),
        nn.Dropout2d(p=0.5), nn.Linear(128, 10), nn.LogSoftmax(dim=1),
    )  # fmt: skip


def test_tutorial_model_file_loads_with_its_weights():
    torch.manual_seed(0)
    model = tutorial_model()
    loaded = load_torch_model(_saved(model))
    assert isinstance(loaded, nn.Sequential) and len(loaded) == 12
    for (name, a), (_, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_custom_classes_are_refused_by_name():
    with pytest.raises(ModelFileError, match=r"refers to '.*Custom', which is not allowed"):
        load_torch_model(_saved(Custom()))


def test_operator_allowed_import_path_admits_a_custom_class():
    model = load_torch_model(_saved(Custom()), allowed_import_paths=[Custom.__module__])
    assert isinstance(model, Custom)


@pytest.mark.parametrize("payload", [_saved(Evil()), pickle.dumps(Evil())])
def test_code_execution_payloads_are_refused(payload, capfd):
    with pytest.raises(ModelFileError):
        load_torch_model(payload)
    assert "pwned" not in capfd.readouterr().out


@pytest.mark.parametrize("junk", [b"", b"hello", b"PK\x03\x04junk"])
def test_junk_is_a_clear_error(junk):
    with pytest.raises(ModelFileError, match="not a model file written by torch.save"):
        load_torch_model(junk)


def test_state_dict_is_refused_with_advice():
    with pytest.raises(
        ModelFileError, match=r"holds a OrderedDict, not a model.*torch.save\(model\)"
    ):
        load_torch_model(_saved(nn.Linear(2, 2).state_dict()))


def test_mnist_pytorch_handler_shapes_and_scales():
    raw = ArrayDataset(np.full((4, 28, 28), 255, np.uint8), np.array([0, 1, 2, 9]))
    party = get_data_handler("mnist_pytorch")(PartyData(raw, raw))
    assert party.train.x.shape == (4, 1, 28, 28) and party.train.x.dtype == np.float32
    assert party.train.x.max() == 1.0 and party.train.y.dtype == np.int64
    flat = ArrayDataset(np.zeros((2, 784), np.float32), np.array([3, 4]))
    assert get_data_handler("mnist_pytorch")(PartyData(flat)).train.x.shape == (2, 1, 28, 28)


def test_data_handler_errors():
    with pytest.raises(
        ValueError, match="unknown data handler 'cifar'; choose one of: .*mnist_pytorch"
    ):
        get_data_handler("cifar")
    bad = ArrayDataset(np.zeros((2, 10), np.float32), np.array([0, 1]))
    with pytest.raises(DatasetFormatError, match="784 values"):
        get_data_handler("mnist_pytorch")(PartyData(bad))
    labels = ArrayDataset(np.zeros((2, 784), np.float32), np.array([0, 12]))
    with pytest.raises(DatasetFormatError, match="labels 0..9"):
        get_data_handler("mnist_pytorch")(PartyData(labels))


def _varied_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.GroupNorm(1, 2), nn.Flatten(),
        nn.Embedding(5, 3), nn.LSTM(3, 4), nn.MultiheadAttention(4, 2), nn.LayerNorm(4),
    )  # fmt: skip


def test_built_in_layers_load_and_their_parameters_are_counted_exactly():
    model = _varied_model()
    data = _saved(model)
    expected = sum(t.numel() for t in model.state_dict().values())
    assert check_model_file(data) == expected
    loaded = load_torch_model(data, limits=SizeLimits(max_params=expected))
    assert [type(m) for m in loaded] == [type(m) for m in model]
    with pytest.raises(SizeLimitError, match=f"holds {expected:,} parameters; the limit is 10 "):
        load_torch_model(data, limits=SizeLimits(max_params=10))


def test_tied_weights_count_once():
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight
    assert check_model_file(_saved(nn.Sequential(a, b))) == 9 + 3 + 3


def test_the_pickle_itself_has_a_size_cap(monkeypatch):
    import fedfuse.models._files as files

    monkeypatch.setattr(files, "_MAX_PICKLE_BYTES", 100)
    with pytest.raises(SizeLimitError, match=r"pickle 'archive/data\.pkl' has .* the limit is 100"):
        load_torch_model(_saved(nn.Linear(2, 2)))


def test_max_bytes_covers_the_whole_archive():
    data = _saved(nn.Linear(100, 100))
    with pytest.raises(SizeLimitError, match="model file inflates to .* the limit is 1,000 bytes"):
        load_torch_model(data, limits=SizeLimits(max_bytes=1000))
