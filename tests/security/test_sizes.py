"""Threat: a small input that makes fedfuse allocate far more than it received (issue 9, item 2).

Every hostile file here is crafted by hand: a few hundred bytes of pickle that *call* a class,
zip records that declare huge inflated sizes, ``.npy`` headers declaring 10**12 elements, zoo
descriptions of 10**12 parameters, and an aggregator that answers a party with endless or
declared-huge bodies. Each must be refused before anything is built, with a message naming
the cap and the number, while allocating almost nothing (tracemalloc peak under a few MB).
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import tracemalloc
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from torch import nn

import fedfuse.runtime._http_party as http_party
from fedfuse._extras import import_keras
from fedfuse.cli import main
from fedfuse.data import DatasetFormatError, load_party_npz
from fedfuse.models import (
    ModelFileError,
    build_model,
    check_model_file,
    get_model_type,
    load_torch_model,
)
from fedfuse.runtime import PartyClient, ProtocolError
from fedfuse.runtime._party_builder import party_from_join
from fedfuse.weights import SizeLimitError, SizeLimits

SMALL = 4 << 20  # what a refusal may allocate at most, in bytes


def refused_cheaply(call: Callable[[], Any], error: type[Exception], match: str) -> str:
    """Run ``call``, expect ``error`` matching ``match``; assert tracemalloc's peak stayed
    under ``SMALL``. Returns the message."""
    tracemalloc.start()
    try:
        with pytest.raises(error, match=match) as info:
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < SMALL, f"refusing allocated {peak:,} bytes"
    return str(info.value)


def zip_bytes(records: dict[str, bytes], *, declared: dict[str, int] | None = None) -> bytes:
    """A zip of ``records``; ``declared`` overrides a record's inflated size in the directory."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in records.items():
            archive.writestr(name, data)
        for info in archive.filelist:
            info.file_size = (declared or {}).get(info.filename, info.file_size)
    return buffer.getvalue()


def torch_archive(pickled: bytes) -> bytes:
    """A zip laid out as ``torch.save`` writes it, holding ``pickled`` as its ``data.pkl``."""
    return zip_bytes(
        {"archive/data.pkl": pickled, "archive/byteorder": b"little", "archive/version": b"3\n"}
    )


# --- torch model files -----------------------------------------------------------------------


class CallsLinear:
    def __reduce__(self):
        return (nn.Linear, (12000, 12000))  # 144 million parameters from ~400 bytes


class CallsBytearray:
    def __reduce__(self):
        return (bytearray, (10**12,))


@pytest.fixture
def torch_load_never_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch.load ran on a hostile file")

    monkeypatch.setattr(torch, "load", refuse)


@pytest.mark.parametrize(
    ("payload", "name"),
    [(CallsLinear(), "torch.nn.modules.linear.Linear"), (CallsBytearray(), "builtins.bytearray")],
)
def test_a_pickle_that_calls_a_class_is_refused_by_name_before_torch_load(
    payload: Any, name: str, torch_load_never_runs: None
) -> None:
    data = torch_archive(pickle.dumps(payload, protocol=2))
    assert len(data) < 1000
    message = refused_cheaply(
        lambda: load_torch_model(data), ModelFileError, f"calls '{name}' while loading"
    )
    assert "torch.save(model) never does" in message


def test_newobj_with_arguments_is_refused(torch_load_never_runs: None) -> None:
    # GLOBAL Linear, (12000, 12000), NEWOBJ: cls.__new__(cls, 12000, 12000)
    pickled = b"\x80\x02ctorch.nn.modules.linear\nLinear\nq\x00M\xe0.M\xe0.\x86q\x01\x81q\x02."
    refused_cheaply(
        lambda: load_torch_model(torch_archive(pickled)),
        ModelFileError,
        "calls 'torch.nn.modules.linear.Linear'",
    )


class Storage:
    """Pickled by ``StoragePickler`` as a persistent id declaring ``numel`` elements."""

    def __init__(self, numel: int) -> None:
        self.numel = numel


class StoragePickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, Storage):
            return ("storage", torch.FloatStorage, "0", "cpu", obj.numel)
        return None


class HugeTensor:
    def __reduce__(self):
        n = 10**6
        return (torch._utils._rebuild_tensor_v2, (Storage(n * n), 0, (n, n), (n, 1), False, {}))


def test_declared_storages_past_max_params_are_refused(torch_load_never_runs: None) -> None:
    buffer = io.BytesIO()
    StoragePickler(buffer, protocol=2).dump(OrderedDict(w=HugeTensor()))
    message = refused_cheaply(
        lambda: load_torch_model(torch_archive(buffer.getvalue())), SizeLimitError, "limit"
    )
    assert message == (
        "model file holds 1,000,000,000,000 parameters; the limit is 100,000,000 "
        "(--max-model-params)"
    )


def test_a_legitimate_model_counts_exactly_and_an_operator_cap_refuses_it() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    data = buffer.getvalue()
    params = sum(t.numel() for t in model.state_dict().values())
    assert check_model_file(data) == params == 27090
    assert isinstance(load_torch_model(data), nn.Sequential)
    with pytest.raises(SizeLimitError, match="holds 27,090 parameters; the limit is 1,000 "):
        load_torch_model(data, limits=SizeLimits(max_params=1000))


def test_zip_records_declaring_huge_inflated_sizes_are_refused(
    torch_load_never_runs: None,
) -> None:
    data = zip_bytes({"archive/data.pkl": b"\x80\x02N."}, declared={"archive/data.pkl": 3 << 30})
    message = refused_cheaply(lambda: load_torch_model(data), SizeLimitError, "limit")
    assert message == (
        "model file inflates to 3,221,225,472 bytes; the limit is 1,073,741,824 bytes (max_bytes)"
    )


def test_a_deflate_bomb_is_refused_by_its_ratio(torch_load_never_runs: None) -> None:
    data = zip_bytes({"archive/data.pkl": bytes(16 << 20)})  # 16 MiB of zeros, ~16 KB stored
    assert len(data) < 100_000
    refused_cheaply(
        lambda: load_torch_model(data),
        SizeLimitError,
        r"record 'archive/data.pkl' inflates 1,0\d\d times .* the limit is 200 times",
    )


# --- zoo models ------------------------------------------------------------------------------


def test_a_zoo_model_past_max_params_is_refused_without_allocating() -> None:
    message = refused_cheaply(
        lambda: build_model("mlp", (100000, 100000), 10), SizeLimitError, "limit"
    )
    assert message == (
        "model 'mlp' for inputs (100000, 100000) holds 2,000,000,042,410 parameters; the limit "
        "is 100,000,000 (--max-model-params)"
    )
    build_model("mnist_cnn", (1, 28, 28), 10)  # torch's one-time set-up of conv layers
    refused_cheaply(
        lambda: build_model("mnist_cnn", (1, 100000, 100000), 10), SizeLimitError, "parameters"
    )


@pytest.mark.parametrize(
    ("shape", "classes", "message"),
    [
        ((0, 5), 10, r"1 to 4 positive dimensions, got \(0, 5\)"),
        ((-3,), 10, "positive dimensions"),
        ((2,) * 9, 10, "1 to 4 positive dimensions"),
        ((), 10, "1 to 4 positive dimensions"),
        ((8,), 0, "num_classes must be between 1 and 1,000,000, got 0"),
        ((8,), 10**9, "num_classes must be between 1 and 1,000,000"),
        ((8,), "ten", "num_classes must be an integer"),
    ],
)
def test_absurd_zoo_descriptions_are_refused_with_a_message(
    shape: tuple, classes: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_model("mlp", shape, classes)


# --- party .npz files ------------------------------------------------------------------------


def npy_bytes(array: np.ndarray, *, shape: tuple[int, ...] | None = None) -> bytes:
    """``array`` as ``.npy`` bytes whose header may declare another ``shape``."""
    buffer = io.BytesIO()
    header = np.lib.format.header_data_from_array_1_0(array)
    if shape is not None:
        header["shape"] = shape
    np.lib.format.write_array_header_1_0(buffer, header)
    buffer.write(array.tobytes())
    return buffer.getvalue()


def party_npz(**overrides: bytes) -> bytes:
    x, y = np.zeros((4, 3), np.float32), np.arange(4)
    members = {
        "x_train.npy": npy_bytes(x),
        "y_train.npy": npy_bytes(y),
        "x_test.npy": npy_bytes(x),
        "y_test.npy": npy_bytes(y),
    }
    return zip_bytes(members | {f"{k}.npy": v for k, v in overrides.items()})


def test_an_npy_header_declaring_10_to_the_12_elements_is_refused_before_numpy_allocates() -> None:
    data = party_npz(x_train=npy_bytes(np.zeros(4, np.float32), shape=(10**12,)))
    message = refused_cheaply(lambda: load_party_npz(data), SizeLimitError, "limit")
    assert message == (
        "<bytes>: array 'x_train' of shape (1000000000000,) and dtype float32 inflates to "
        "4,000,000,000,000 bytes; the limit is 1,073,741,824 bytes (max_bytes)"
    )


def test_an_npy_header_declaring_more_than_its_record_holds_is_refused() -> None:
    data = party_npz(y_test=npy_bytes(np.zeros(4, np.int64), shape=(10**7,)))
    refused_cheaply(
        lambda: load_party_npz(data),
        DatasetFormatError,
        "'y_test' is corrupt or truncated: its header declares 80,000,000 bytes, the archive "
        "holds 32",
    )


def test_npz_records_declaring_huge_sizes_are_refused() -> None:
    members = {"x_train.npy": npy_bytes(np.zeros(4, np.float32))}
    data = zip_bytes(members, declared={"x_train.npy": 2 << 30})
    refused_cheaply(lambda: load_party_npz(data), SizeLimitError, "inflates to 2,147,483,648 bytes")


def test_a_legitimate_npz_still_loads() -> None:
    party = load_party_npz(party_npz())
    assert party.train.x.shape == (4, 3) and party.test is not None
    assert party.train.y.tolist() == [0, 1, 2, 3]


# --- keras and doc2vec model files -----------------------------------------------------------


def test_a_keras_file_declaring_huge_records_is_refused_before_keras_reads_it() -> None:
    import_keras()  # a dev dependency: the test runs wherever the suite does
    data = zip_bytes(
        {"config.json": b"{}", "model.weights.h5": b"\0" * 64},
        declared={"model.weights.h5": 5 << 30},
    )
    with pytest.raises(SizeLimitError, match="Keras model file inflates to 5,368,709,122 bytes"):
        get_model_type("keras").load(data, ())


def test_a_doc2vec_file_of_the_wrong_shape_is_a_value_error_naming_the_field() -> None:
    pytest.importorskip("gensim")
    with pytest.raises(ValueError, match=r"unknown doc2vec setting\(s\) \['self'\]"):
        get_model_type("doc2vec").load(b'{"self": 1}', ())
    with pytest.raises(ValueError, match="'vector_size' must be between 1 and 10000"):
        get_model_type("doc2vec").load(b'{"vector_size": 1000000000}', ())


# --- a party facing a hostile aggregator -----------------------------------------------------

JOIN = {"federation_id": "f1", "party_id": "p1", "party_token": "secret"}


def fake_aggregator(
    *, model: dict[str, Any] | None = None, task: Callable[[], httpx.Response] | None = None
) -> httpx.MockTransport:
    """An aggregator that answers join with ``model`` and every task poll with ``task()``."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/join":
            return httpx.Response(200, json=JOIN | {"model": model or {"source": "none"}})
        if request.url.path.endswith("/model-file"):
            return httpx.Response(200, content=endless(1 << 20))
        if request.url.path.endswith("/tasks/next") and task is not None:
            return task()
        return httpx.Response(410, json={"detail": "completed"})

    return httpx.MockTransport(handle)


def endless(chunk: int, sent: list[int] | None = None) -> Iterator[bytes]:
    """A body that never ends; ``sent`` counts the chunks the reader pulled."""
    while True:
        if sent is not None:
            sent.append(chunk)
        yield b"\0" * chunk


class NeverCalled:
    def handle(self, task: Any) -> Any:
        raise AssertionError("the party handled a hostile task")


def client(transport: httpx.MockTransport, max_bytes: int = 8 << 20) -> PartyClient:
    limits = SizeLimits(max_bytes=max_bytes)
    return PartyClient("http://aggregator", "token", limits=limits, transport=transport)


def test_a_party_stops_reading_an_endless_task_body_at_its_limit() -> None:
    sent: list[int] = []
    transport = fake_aggregator(task=lambda: httpx.Response(200, content=endless(1 << 20, sent)))
    with client(transport) as party, pytest.raises(SizeLimitError, match="the limit is 8,388,608"):
        party.serve(NeverCalled())
    assert sum(sent) <= (8 << 20) + (1 << 20)


def test_a_party_refuses_a_declared_huge_body_before_reading_it() -> None:
    sent: list[int] = []
    huge = {"content-length": str(10**12)}
    transport = fake_aggregator(
        task=lambda: httpx.Response(200, headers=huge, content=endless(1 << 20, sent))
    )
    with client(transport) as party, pytest.raises(SizeLimitError, match="1,000,000,000,000"):
        party.serve(NeverCalled())
    assert sent == []


def test_a_party_checks_the_task_header_before_building_arrays() -> None:
    header = {"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 16]}}
    text = json.dumps(header).encode()
    body = struct.pack("<Q", len(text)) + text + bytes(16)
    meta = {"task_id": 1, "round": 1, "kind": "evaluate", "split": "test"}
    transport = fake_aggregator(
        task=lambda: httpx.Response(200, headers={"X-Fedfuse-Meta": json.dumps(meta)}, content=body)
    )
    with client(transport) as party:
        message = refused_cheaply(lambda: party.serve(NeverCalled()), SizeLimitError, "limit")
    assert message == (
        "task body from the aggregator holds 1,000,000,000,000 parameters; the limit is "
        "100,000,000 (--max-model-params)"
    )


def test_a_party_refuses_a_model_file_download_past_its_limit() -> None:
    with client(fake_aggregator()) as party:
        party.join()
        with pytest.raises(SizeLimitError, match="model-file inflates to .* limit is 8,388,608"):
            party.model_file()


def write_party_data(path: Path) -> Path:
    x, y = np.zeros((4, 8), np.float32), np.arange(4) % 2
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    return path


def test_a_zoo_model_from_the_join_answer_is_checked_by_the_cap(tmp_path: Path) -> None:
    model = {"source": "zoo", "model": "mlp", "input_shape": [100000, 100000], "num_classes": 2}
    data = write_party_data(tmp_path / "party.npz")
    with client(fake_aggregator(model=model)) as party:
        info = party.join()
        refused_cheaply(
            lambda: party_from_join(party, info, str(data)), SizeLimitError, "--max-model-params"
        )


def test_building_the_zoo_model_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    model = {"source": "zoo", "model": "mlp", "input_shape": [8], "num_classes": 2, "seed": 7}
    data = write_party_data(tmp_path / "party.npz")
    with client(fake_aggregator(model=model)) as party:
        info = party.join()
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        first = party_from_join(party, info, str(data)).adapter.get_weights()
        assert torch.equal(torch.rand(3), expected)
        second = party_from_join(party, info, str(data)).adapter.get_weights()
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_fedfuse_party_exits_2_naming_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model = {"source": "zoo", "model": "mlp", "input_shape": [100000, 100000], "num_classes": 2}
    transport = fake_aggregator(model=model)
    real_client = httpx.Client

    def client_to_fake(*args: Any, transport: Any = None, **kwargs: Any) -> httpx.Client:
        return real_client(*args, transport=fake, **kwargs)

    fake = transport
    monkeypatch.setattr(http_party.httpx, "Client", client_to_fake)
    data = write_party_data(tmp_path / "party.npz")
    code = main(["party", "--server", "http://aggregator", "--token", "t", "--data", str(data)])
    assert code == 2
    err = capsys.readouterr().err
    assert "2,000,000,040,802 parameters; the limit is 100,000,000 (--max-model-params)" in err


@pytest.mark.parametrize(
    "answer",
    [b"[" * 100_000 + b"]" * 100_000, b'{"federation_id": 1}', b"not json", b" " * (2 << 20)],
)
def test_a_malformed_or_oversized_join_answer_is_a_protocol_error(answer: bytes) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=answer))
    with client(transport) as party, pytest.raises((ProtocolError, SizeLimitError)) as info:
        party.join()
    expected = "limit is 1,048,576" if len(answer) > 1 << 20 else "the join answer is not an"
    assert expected in str(info.value)
    assert party.info is None


def test_a_keras_architecture_past_max_params_is_refused_before_keras_builds_it() -> None:
    keras = import_keras()
    with keras.device("meta"):  # only to write the config: 8 billion parameters, on no memory
        big = keras.Sequential([keras.Input((40000,)), keras.layers.Dense(200000)])
    config = json.dumps(keras.saving.serialize_keras_object(big)).encode()
    data = zip_bytes({"config.json": config, "metadata.json": b"{}", "model.weights.h5": b""})
    message = refused_cheaply(
        lambda: get_model_type("keras").load(data, ()), SizeLimitError, "parameters"
    )
    assert message == (
        "Keras model file holds 8,000,200,000 parameters; the limit is 100,000,000 "
        "(--max-model-params)"
    )
