"""Independent edge models improved by model sharing: personal layers and fine-tuning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from fedfuse import Federation, LocalPool, Party, TrainConfig
from fedfuse.data import federate
from fedfuse.models import TorchAdapter
from fedfuse.party import PersonalAdapter, TrainTask, head_layer, split_personal
from fedfuse.recipes import compare_personalization, resolve_personal


def _mlp():
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def test_head_layer_and_split():
    weights = TorchAdapter(_mlp()).get_weights()
    assert head_layer(weights) == ("2.bias", "2.weight")
    shared, own = split_personal(weights, ["2"])
    assert sorted(shared) == ["0.bias", "0.weight"] and sorted(own) == ["2.bias", "2.weight"]
    assert resolve_personal("head", weights) == ("2.bias", "2.weight")
    assert resolve_personal("0.weight, 2", weights) == ("0.weight", "2")
    with pytest.raises(ValueError, match="matches no parameter"):
        resolve_personal("5", weights)


def test_personal_layers_never_leave_the_party(small_federation):
    fed = small_federation
    torch.manual_seed(0)
    model = TorchAdapter(_mlp())
    views = {p: PersonalAdapter(model, head_layer(model.get_weights())) for p in fed.party_ids}
    parties = {p: Party(views[p], fed[p], p) for p in fed.party_ids}
    pool = LocalPool(parties)
    shared = views[fed.party_ids[0]].get_weights()
    assert sorted(shared) == ["0.bias", "0.weight"]
    reply = parties[fed.party_ids[0]].handle(TrainTask(1, shared, TrainConfig(epochs=1)))
    assert sorted(reply.weights) == ["0.bias", "0.weight"]  # the update omits the head
    federation = Federation(pool, shared, config=TrainConfig(epochs=1, learning_rate=0.1))
    federation.run(3)
    assert sorted(federation.weights) == ["0.bias", "0.weight"]  # the aggregator never sees it
    heads = [views[p].own["2.weight"] for p in fed.party_ids]
    assert not np.allclose(heads[0], heads[1])  # each party trained its own


def test_finetuned_evaluation_restores_the_received_weights(small_federation):
    party = small_federation[small_federation.party_ids[0]]
    model = TorchAdapter(_mlp())
    tuned = PersonalAdapter(
        model, finetune=TrainConfig(epochs=3, learning_rate=0.1), finetune_data=party.train
    )
    received = model.get_weights()
    tuned.set_weights(received)
    before = model.evaluate(party.test)["accuracy"]
    after = tuned.evaluate(party.test)["accuracy"]
    assert after > before + 0.2  # fine-tuned from a random model on the party's own data
    for name, arr in model.get_weights().items():
        np.testing.assert_array_equal(arr, received[name])


def test_personalized_models_beat_local_and_global_on_label_skewed_parties(digits):
    train, test = digits
    fed = federate(train, test, num_parties=10, scheme="dirichlet", alpha=0.3, seed=0)
    config = TrainConfig(epochs=1, batch_size=16, optimizer="sgd", learning_rate=0.1)
    report = compare_personalization(fed, _mlp, config, 30, finetune_epochs=5, seed=0)
    mean = report["mean"]
    assert set(report["parties"]) == set(fed.party_ids)
    assert report["personal_layers"] == ["2.bias", "2.weight"]
    assert mean["finetuned"] > mean["global"] + 0.03
    assert mean["finetuned"] > mean["local"] + 0.01
    assert mean["personal"] > mean["global"] + 0.02
    assert mean["personal"] > mean["local"] - 0.01
    assert len(report["history"]) == 30


def test_cli_simulate_runs_the_personalize_use(tmp_path, capsys):
    from fedfuse.cli import main

    code = main(
        ["simulate", "--use", "personalize", "--num-parties", "3", "--rounds", "2",
         "--finetune-epochs", "1", "--personal-layers", "head", "--out", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "finetuned" in out and "personal layers: 5.bias, 5.weight" in out
    saved = json.loads((tmp_path / "report.json").read_text())
    assert set(saved["report"]["parties"]) == {"party_0", "party_1", "party_2"}
    assert len(saved["history"]) == 2


def test_unknown_use_is_refused():
    from fedfuse import simulate

    allowed = "'aggregate', 'personalize', 'ensemble', 'oneshot'"
    with pytest.raises(ValueError, match=f"use.name must be one of {allowed}, got 'share'"):
        simulate(use="share", rounds=1)
