"""Federated evaluation carried with the next training task, through the real service.

With ``--piggyback`` the service sends the global model once per round: round ``r``'s
federated metrics come back with round ``r + 1``'s updates and are stored then, and the last
round's come from one evaluation broadcast when training ends.
"""

from __future__ import annotations

import fedfuse
from fedfuse.data import federate, load_dataset
from service_helpers import Service, cli_create, party_processes, stop_all


def _rounds(tmp_path, *flags: str) -> list[dict]:
    train, test = load_dataset("digits")
    files = federate(train, test, 3, "iid", seed=0).save_npz(tmp_path / "parties")
    service, parties = Service(tmp_path / "data").start(), []
    try:
        answer = cli_create(
            service.url,
            tmp_path,
            *("--num-parties", "3", "--rounds", "3", "--round-timeout", "120"),
            *("--learning-rate", "0.1", "--epochs", "1", *flags),
        )
        fid = answer["aggregator_id"]
        parties = party_processes(service.url, answer["join_token"], files, tmp_path)
        status = service.wait_for(
            lambda s: s["status"] in ("completed", "failed"),
            timeout=300,
            path=f"/v1/federations/{fid}",
        )
        assert status["status"] == "completed", status
        assert [p.wait(120) for p in parties] == [0, 0, 0]
        if "--piggyback" in flags:  # each party logs the received model's evaluation too
            log = (tmp_path / "party0.log").read_text()
            assert "round 2: received model on local test data: " in log, log
        return service.get(f"/v1/federations/{fid}/history").json()["rounds"]
    finally:
        stop_all(parties)
        service.stop()


def test_the_service_piggybacks_and_stores_every_rounds_evaluation(tmp_path):
    rounds = _rounds(tmp_path, "--piggyback")
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for record in rounds:  # every round's model was evaluated by the 3 parties
        assert record["federated"]["num_examples"] > 0, record
        assert 0.0 <= record["federated"]["accuracy"] <= 1.0
    # rounds 1 and 2 were evaluated with the next round's tasks, round 3 by one broadcast
    assert [r.get("federated_with_round") for r in rounds] == [2, 3, None]
    model_bytes = rounds[0]["bytes_dense"] // 3
    # round 2's tasks carried both the training and round 1's evaluation: the model went out
    # once per party, where the separate broadcast sends it twice
    assert rounds[1]["bytes_down"] == 3 * model_bytes
    assert rounds[2]["bytes_down"] == 6 * model_bytes  # its own tasks + the final broadcast


def test_simulate_piggybacks_with_the_flat_setting():
    kwargs = dict(dataset="digits", num_parties=3, rounds=2, epochs=1, centralized=False)
    carried = fedfuse.simulate(piggyback=True, **kwargs).history
    separate = fedfuse.simulate(**kwargs).history
    assert [r.get("federated_with_round") for r in carried] == [2, None]
    # every party sampled: the same parties evaluate the same models on the same data
    assert [r["federated"] for r in carried] == [r["federated"] for r in separate]
