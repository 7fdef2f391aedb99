"""The Model Fusion REST flow with model_type keras and doc2vec (parties hosted by the service)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fedfuse._extras import import_keras
from fedfuse.data import federate, load_dataset, load_lee_corpus
from fedfuse.service import ServiceSettings, create_app

keras = import_keras()


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(ServiceSettings(data_dir=str(tmp_path)))) as c:
        yield c


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _run(client, form, model_file, handler, party_files):
    r = client.post("/start-aggregator", data=form, files={"model_file": ("m", model_file)})
    assert r.status_code == 200, r.text
    agg = r.json()["aggregator_id"]
    for data in party_files:
        r = client.post(
            "/start-party",
            files={"data": ("d.npz", data)},
            data={"aggregator_id": agg, "data_handler_class_name": handler},
        )
        assert r.status_code == 200, r.text
    r = client.post("/train", json={"aggregator_id": agg})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed", r.json()["error"]
    return r.json()


def test_keras_model_file_through_rest(client, tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(name="flat"),
                              keras.layers.Dense(32, activation="relu", name="hidden"),
                              keras.layers.Dense(10, name="logits")])  # fmt: skip
    path = tmp_path / "model.keras"
    model.save(path)
    train, test = load_dataset("digits")
    fed = federate(train, test, 2, "iid", seed=0)
    parties = [
        _npz(x_train=(fed[p].train.x * 255).reshape(-1, 8, 8, 1), y_train=fed[p].train.y,
             x_test=(fed[p].test.x * 255).reshape(-1, 8, 8, 1), y_test=fed[p].test.y)
        for p in fed.party_ids
    ]  # fmt: skip

    def as_digits(party):  # a custom handler: 8x8 images, the keras layout
        from fedfuse.data import ArrayDataset, PartyData

        def fix(d):
            return d and ArrayDataset((d.x / 255.0).astype(np.float32), d.y.astype(np.int64))

        return PartyData(fix(party.train), fix(party.test))

    from fedfuse.data import register_data_handler

    register_data_handler("digits_keras", as_digits)
    form = {
        "fusion_algorithm": "fedavg",
        "model_type": "keras",
        "num_parties": 2,
        "rounds": 3,
        "learning_rate": 0.005,
        "epochs": 2,
        "optimizer": "optimizers.Adam",
    }
    answer = _run(client, form, path.read_bytes(), "digits_keras", parties)
    assert answer["metrics"][-1]["federated"]["accuracy"] > 0.8
    assert set(answer["global_model"]) == {
        "hidden/kernel", "hidden/bias", "logits/kernel", "logits/bias"
    }  # fmt: skip


def test_keras_optimizer_names_are_checked_as_keras_names(client):
    def start(model_type, optimizer):
        form = {"fusion_algorithm": "fedavg", "model_type": model_type, "optimizer": optimizer}
        return client.post("/start-aggregator", data=form, files={"model_file": ("m", b"x")})

    r = start("keras", "Adamm")
    assert r.status_code == 400 and "unknown Keras optimizer 'Adamm'" in r.json()["detail"]
    r = start("pytorch", "Ftrl")  # a Keras-only optimizer
    assert r.status_code == 400 and "optimizer: unknown optimizer 'Ftrl'" in r.json()["detail"]
    r = start("keras", "Ftrl")  # accepted as a Keras name; the junk model file is what fails
    assert r.status_code == 400 and "not a .keras model file" in r.json()["detail"]


def test_doc2vec_through_rest(client):
    docs = load_lee_corpus()
    parties = [
        _npz(x_train=docs[i::3][:80], y_train=np.arange(80), x_test=docs[i::3][80:90],
             y_test=np.arange(10))
        for i in range(3)
    ]  # fmt: skip
    settings = {"vector_size": 24, "min_count": 2, "dm": 0, "epochs": 5, "rounds": 2}
    form = {
        "fusion_algorithm": "doc2vec",
        "model_type": "doc2vec",
        "num_parties": 3,
        "rounds": 2,
        "learning_rate": 0.025,
        "epochs": 5,
    }
    answer = _run(client, form, json.dumps(settings).encode(), "20_newsgroup", parties)
    vectors = np.asarray(answer["global_model"]["wv.vectors"])
    assert vectors.shape[1] == 24 and vectors.shape[0] > 500  # the merged vocabulary
    assert len(answer["metrics"]) == 2 and all(m["fused"] for m in answer["metrics"])


def test_doc2vec_refuses_remote_parties(client):
    form = {"fusion_algorithm": "doc2vec", "model_type": "doc2vec", "num_parties": 1}
    r = client.post("/start-aggregator", data=form, files={"model_file": ("m", b"{}")})
    token = r.json()["join_token"]
    r = client.post("/v1/join", json={"token": token})
    assert r.status_code == 409 and "remote parties cannot join" in r.json()["detail"]
