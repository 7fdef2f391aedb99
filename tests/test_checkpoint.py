"""Checkpoints survive damage: each file is a whole checkpoint, the previous one is kept, and a
damaged newest one costs one round (resume then equals an uninterrupted run)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import fedfuse.federation._checkpoint as checkpoint_module
from fedfuse.data import federate
from fedfuse.federation import (
    CheckpointError,
    Federation,
    Sampling,
    load_checkpoint,
    save_checkpoint,
)
from fedfuse.models import TorchAdapter, TrainConfig
from fedfuse.runtime import LocalPool
from helpers import blobs

W = {"weight": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.ones(2, np.float32)}


def _save(folder, round_num):
    weights = {k: v + round_num for k, v in W.items()}
    state = {"m": np.full(3, float(round_num)), "t": round_num}
    history = [{"round": r} for r in range(1, round_num + 1)]
    return save_checkpoint(folder, round_num, weights, state, history)


def _truncate(path, keep=40):
    path.write_bytes(path.read_bytes()[:keep])


def test_two_generations_are_kept_and_older_ones_deleted(tmp_path):
    for r in (1, 2, 3):
        _save(tmp_path, r)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.json",
        "round_000002.safetensors",
        "round_000003.safetensors",
    ]
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.round == 3 and checkpoint.file == "round_000003.safetensors"
    assert checkpoint.skipped == []
    np.testing.assert_array_equal(checkpoint.weights["bias"], W["bias"] + 3)
    np.testing.assert_array_equal(checkpoint.fusion_state["m"], np.full(3, 3.0))
    assert checkpoint.fusion_state["t"] == 3
    assert [h["round"] for h in checkpoint.history] == [1, 2, 3]


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_round(tmp_path):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    _truncate(tmp_path / "round_000002.safetensors")
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.round == 1 and checkpoint.file == "round_000001.safetensors"
    assert len(checkpoint.skipped) == 1
    assert checkpoint.skipped[0].startswith("round_000002.safetensors: ")
    assert "truncated" in checkpoint.skipped[0]
    np.testing.assert_array_equal(checkpoint.weights["weight"], W["weight"] + 1)
    assert [h["round"] for h in checkpoint.history] == [1]


def test_a_padded_or_missing_newest_checkpoint_falls_back(tmp_path):
    _save(tmp_path, 1)
    newest = _save(tmp_path, 2)
    newest.write_bytes(newest.read_bytes() + b"\0" * 8)
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.round == 1
    assert "its header describes" in checkpoint.skipped[0]
    newest.unlink()
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.round == 1
    assert checkpoint.skipped == ["round_000002.safetensors: round_000002.safetensors is missing"]


def test_a_corrupt_index_is_not_needed(tmp_path):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    (tmp_path / "checkpoint.json").write_text('{"round": 2, "weig')
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.round == 2 and checkpoint.file == "round_000002.safetensors"
    assert checkpoint.skipped[0].startswith("checkpoint.json: ")
    np.testing.assert_array_equal(checkpoint.fusion_state["m"], np.full(3, 2.0))


def test_an_index_pointing_outside_the_folder_is_not_followed(tmp_path):
    _save(tmp_path, 1)
    outside = _save(tmp_path / "elsewhere", 5)
    index = json.loads((tmp_path / "checkpoint.json").read_text())
    (tmp_path / "checkpoint.json").write_text(
        json.dumps(index | {"weights_file": f"../elsewhere/{outside.name}"})
    )
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.round == 1 and checkpoint.file == "round_000001.safetensors"
    assert checkpoint.skipped == ["checkpoint.json: not a checkpoint index"]


def test_no_usable_checkpoint_is_a_clear_error(tmp_path):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    _truncate(tmp_path / "round_000001.safetensors", keep=0)
    (tmp_path / "round_000002.safetensors").write_bytes(b"\x10" + b"\0" * 7 + b"not json" * 2)
    with pytest.raises(CheckpointError, match="no usable checkpoint") as info:
        load_checkpoint(tmp_path)
    message = str(info.value)
    assert "round_000001.safetensors: round_000001.safetensors is 0 bytes" in message
    assert "round_000002.safetensors: round_000002.safetensors has an unreadable header" in message


def test_nothing_to_resume_from_is_none(tmp_path):
    assert load_checkpoint(tmp_path / "absent") is None
    assert load_checkpoint(tmp_path) is None
    (tmp_path / "round_000001.safetensors.tmp").write_bytes(b"half a file")
    assert load_checkpoint(tmp_path) is None


def test_a_write_that_does_not_verify_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_save = checkpoint_module.save_weights

    def short_write(path, arrays, metadata=None):
        real_save(path, arrays, metadata)
        _truncate(path, keep=path.stat().st_size - 4)

    monkeypatch.setattr(checkpoint_module, "save_weights", short_write)
    with pytest.raises(ValueError, match=r"round_000002\.safetensors\.tmp is \d+ bytes"):
        _save(tmp_path, 2)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert load_checkpoint(tmp_path).round == 1


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def no_space(path, arrays, metadata=None):
        path.write_bytes(b"\0" * 10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_weights", no_space)
    with pytest.raises(OSError, match="No space left"):
        _save(tmp_path, 2)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def _federation(folder):
    train = blobs(400, seed=0)
    fed = federate(train, blobs(100, seed=1), 4, "iid", seed=0)
    torch.manual_seed(0)
    adapter = TorchAdapter(nn.Linear(5, 3))
    return lambda start=None: Federation(
        LocalPool.from_dataset(fed, adapter),
        start or adapter.get_weights(),
        config=TrainConfig(learning_rate=0.1),
        sampling=Sampling(fraction=0.5),
        seed=3,
        checkpoint_dir=folder,
    )


def test_a_damaged_checkpoint_costs_one_round_and_resume_still_matches(tmp_path):
    straight = _federation(None)()
    start = dict(straight.weights)
    straight.run(4)

    make = _federation(tmp_path)
    make(start).run(3)
    _truncate(tmp_path / "round_000003.safetensors", keep=100)
    resumed = make(start)
    assert resumed.round == 2  # the damaged round 3 is trained again
    resumed.run(4)
    assert [r["round"] for r in resumed.history] == [1, 2, 3, 4]
    assert [r["sampled"] for r in resumed.history] == [r["sampled"] for r in straight.history]
    for k in start:
        np.testing.assert_array_equal(resumed.weights[k], straight.weights[k])
    index = json.loads((tmp_path / "checkpoint.json").read_text())
    assert index["weights_file"] == "round_000004.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.json",
        "round_000003.safetensors",
        "round_000004.safetensors",
    ]
