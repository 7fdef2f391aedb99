"""A Keras 3 model (PyTorch backend) federated exactly like a PyTorch one, offline.

scikit-learn's digits split among 3 parties (Dirichlet(1.0) label skew), FedAvg for 4 rounds,
each party training 2 local epochs with Adam named as Keras users write it. The same model also
goes through the Model Fusion API's ``model_type="keras"``: saved as a ``.keras`` file and
loaded from its bytes (``safe_mode=True``), as the aggregator service does with an upload.

Run: ``python examples/keras_federation.py`` (needs ``pip install 'fedfuse[keras]'``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # after choosing the backend

from fedfuse import Federation, LocalPool, TrainConfig
from fedfuse.data import federate, load_dataset
from fedfuse.models import KerasAdapter, get_model_type


def build_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu", name="hidden"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="digits_mlp",
    )


def main(rounds: int = 4) -> dict:
    train, test = load_dataset("digits")
    fed = federate(train, test, num_parties=3, scheme="dirichlet", alpha=1.0, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "digits_mlp.keras"
        build_model().save(path)
        adapter = get_model_type("keras").load(path.read_bytes(), ())  # what the service does
    assert isinstance(adapter, KerasAdapter)

    def central_eval(weights):
        adapter.set_weights(weights)
        return adapter.evaluate(fed.test)

    federation = Federation(
        LocalPool.from_dataset(fed, adapter),
        adapter.get_weights(),
        fusion="fedavg",
        config=TrainConfig(epochs=2, batch_size=32, optimizer="adam", learning_rate=0.01),
        central_eval=central_eval,
        federated_eval=True,
    )
    history = federation.run(rounds)
    return {"weights": sorted(federation.weights), "history": history}


if __name__ == "__main__":
    out = main()
    print("weights:", ", ".join(out["weights"]))
    for r in out["history"]:
        print(
            f"round {r['round']}: central accuracy {100 * r['central']['accuracy']:.1f}%, "
            f"federated accuracy {100 * r['federated']['accuracy']:.1f}%"
        )
