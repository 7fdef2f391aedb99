"""The examples are part of the product: each one runs here and its numbers are checked."""

import runpy
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    return runpy.run_path(str(EXAMPLES / name))


def test_tff_style_process():
    out = _load("tff_style_process.py")["main"]()
    assert out["train"]["accuracy"] > 0.8
    assert out["test"]["accuracy"] > 0.75  # writers never seen in training
    assert out["last_round"]["num_examples"] == out["train"]["num_examples"]


def test_simulate_one_call(tmp_path):
    result = _load("simulate_one_call.py")["main"](str(tmp_path / "out"))
    assert len(result.history) == 15
    assert all(len(r["sampled"]) == 5 for r in result.history)
    assert result.history[-1]["central"]["accuracy"] > 0.75
    assert (tmp_path / "out" / "accuracy.png").exists()


def test_federation_loop(tmp_path):
    federation = _load("federation_loop.py")["main"](str(tmp_path))
    assert federation.round == 8
    assert federation.history[-1]["central"]["accuracy"] > 0.9
    assert (tmp_path / "checkpoint.json").exists()


def test_fusion_and_communication():
    federation = _load("fusion_and_communication.py")["main"]()
    history = federation.history
    assert history[-1]["central"]["accuracy"] > 0.85
    assert sum(len(r["skipped"]) for r in history) > 0
    assert all(0.25 < r["bytes_up"] / (len(r["participants"]) * 19240) < 0.26 for r in history)


def test_doc2vec_lee():
    out = _load("doc2vec_lee.py")["main"]()
    assert out["vocabulary"] > 3000
    local = [r["local_lee"] for r in out["parties"].values()]
    # the fused model agrees with human similarity judgements better than any party alone
    assert out["fused_lee"] > 0.3
    assert out["fused_lee"] > max(local) - 0.01
    assert out["fused_lee"] > sum(local) / len(local) + 0.03


def test_keras_federation():
    out = _load("keras_federation.py")["main"]()
    assert out["weights"] == ["hidden/bias", "hidden/kernel", "logits/bias", "logits/kernel"]
    assert out["history"][-1]["central"]["accuracy"] > 0.9


def test_sklearn_hospitals():
    out = _load("sklearn_hospitals.py")["main"]()
    assert out["coef_shape"] == (1, 30)
    assert out["federated"] > 0.93
    assert out["federated"] > out["pooled"] - 0.03


def test_three_uses():
    out = _load("three_uses.py")["main"]()
    assert out["aggregate"]["accuracy"] > 0.8
    personal = out["personalize"]["mean"]
    assert personal["finetuned"] > personal["global"] + 0.05
    ensemble = out["ensemble"]
    assert ensemble["ensemble_classwise"] > ensemble["fedavg"]
    assert ensemble["distilled"] > max(ensemble["edges"].values())
    oneshot = out["oneshot"]
    assert oneshot["matched"] > oneshot["plain"] + 0.1
    assert oneshot["matched_classwise"] > max(oneshot["edges"].values())


def test_remote_parties(tmp_path):
    rounds = _load("remote_parties.py")["main"](str(tmp_path / "state"))
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    assert all(len(r["participants"]) == 2 for r in rounds)
    assert rounds[-1]["federated"]["accuracy"] > 0.85


def test_consensus_ring(tmp_path):
    out = _load("consensus_ring.py")["main"](str(tmp_path / "out"))
    ecl, gossip = out["ecl"].final, out["gossip"].final
    assert ecl["mean_accuracy"] > gossip["mean_accuracy"]
    assert ecl["consensus_distance"] < gossip["consensus_distance"] / 2
    assert out["ecl"].centralized_final["accuracy"] > 0.9
    assert (tmp_path / "out" / "comparison.png").exists()
    assert (tmp_path / "out" / "history.json").exists()


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
BENCHMARK_FILES = sorted(p.name for p in BENCHMARKS.glob("bench_*.py"))


@pytest.mark.parametrize("name", BENCHMARK_FILES)
def test_benchmark_imports_on_the_current_api(name, monkeypatch):
    """Benchmarks are never run here (they take minutes to hours), but each must import: a
    renamed or removed name fails this test instead of the next benchmark run."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # for their shared helper module, _fl
    namespace = runpy.run_path(str(BENCHMARKS / name), run_name="benchmark_import_check")
    assert callable(namespace["main"]), f"{name} has no main()"


def test_every_example_is_run_here():
    source = Path(__file__).read_text()
    untested = [p.name for p in sorted(EXAMPLES.glob("*.py")) if f'"{p.name}"' not in source]
    assert untested == [], f"examples without a test here: {untested}"


def test_private_federation():
    private, plain, secure = _load("private_federation.py")["main"]()
    history = private.history
    assert 10 < len(history) < 25 and "max_epsilon" in private.stop_reason  # the budget ran out
    assert all(r["epsilon"] <= 30.0 for r in history)
    assert [r["epsilon"] for r in history] == sorted(r["epsilon"] for r in history)
    assert history[-1]["central"]["accuracy"] > 0.6
    for name in plain.weights:  # the sum it never saw, to within the quantization step
        np.testing.assert_allclose(secure.weights[name], plain.weights[name], atol=1e-5)
    assert all(len(r["participants"]) == 8 for r in secure.history)


def test_backends():
    runs = _load("backends.py")["main"](num_parties=40, rounds=3)
    assert runs["processes"]["max_weight_gap"] == 0  # bit for bit
    assert runs["cohort"]["max_weight_gap"] <= 1e-5  # CohortPool's documented tolerance
    assert all(run["accuracy"] > 0.3 for run in runs.values())  # 10 classes: chance is 0.1
