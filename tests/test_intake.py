"""The service's reply intake: a dense update received chunk by chunk into one buffer, checked
as it arrives, gives the round exactly what the whole body gives (same fused weights bit for bit,
same rejection reasons, same bytes counted), and the service's memory does not grow with the
number of parties."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import httpx
import numpy as np
import pytest

from fedfuse.federation import fold_replies
from fedfuse.federation._round import RoundResult
from fedfuse.federation._validate import DEFAULT_MAX_UPDATE_RATIO, validate_update
from fedfuse.fusion import Update, fedavg
from fedfuse.party import EvaluateTask, Evaluation, TrainTask
from fedfuse.runtime import PartyClient, create_federation, reply_from_wire
from fedfuse.service import ServiceSettings
from fedfuse.service._background import background_service
from fedfuse.service._intake import (
    DenseIntake,
    IntakeRefused,
    expected_body_bytes,
    meta_allows_early,
)
from fedfuse.weights import from_bytes, get_codec, to_bytes

SRC = str(Path(__file__).resolve().parents[1] / "src")
META = {"kind": "update", "num_examples": 7, "metrics": {"loss": 0.5}, "is_delta": True}


def model(size: int = 3000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "a.weight": rng.standard_normal((size // 100, 100)).astype(np.float32),
        "b.bias": rng.standard_normal(size // 10).astype(np.float32),
        "c.steps": np.array([3], np.int64),
    }


def delta_of(reference, seed: int, scale: float = 1e-2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        name: (rng.standard_normal(arr.shape) * scale).astype(arr.dtype)
        if arr.dtype.kind == "f"
        else np.zeros_like(arr)
        for name, arr in reference.items()
    }


def feed(intake: DenseIntake, body: bytes, sizes=(1, 5, 3, 1000, 7, 65536)) -> list[str | None]:
    """Feed ``body`` in chunks of the cycled ``sizes``; the reason after each chunk."""
    reasons, position, i = [], 0, 0
    while position < len(body):
        size = sizes[i % len(sizes)]
        reasons.append(intake.feed(body[position : position + size]))
        position, i = position + size, i + 1
    return reasons


def whole_reason(reference, update_weights) -> str | None:
    update = Update(update_weights, META["num_examples"], META["metrics"])
    return validate_update(update, reference, max_ratio=DEFAULT_MAX_UPDATE_RATIO)


def test_a_body_fed_in_odd_chunks_is_the_body_and_parses_the_same():
    reference = model()
    body = to_bytes(delta_of(reference, 1))
    intake = DenseIntake(reference, len(body))
    assert feed(intake, body) == [None] * len(feed(DenseIntake(reference), body))
    received = intake.body()
    assert bytes(received) == body
    reply = reply_from_wire(META, received, "p")
    for name, arr in from_bytes(body).items():
        assert np.array_equal(reply.weights[name], arr)


def test_a_body_larger_than_a_dense_update_is_refused_before_it_is_read():
    reference = model()
    limit = expected_body_bytes(reference)
    with pytest.raises(IntakeRefused) as declared:
        DenseIntake(reference, limit + 1)
    assert declared.value.status == 413
    body = to_bytes(delta_of(reference, 1))
    intake = DenseIntake(reference)
    feed(intake, body)
    with pytest.raises(IntakeRefused) as extra:
        intake.feed(b"\0")  # one byte past what the header states
    assert extra.value.status == 413
    huge_header = (10**9).to_bytes(8, "little")
    with pytest.raises(IntakeRefused, match="header size 1000000000 is too large"):
        DenseIntake(reference).feed(huge_header)


def test_a_short_body_is_refused():
    reference = model()
    body = to_bytes(delta_of(reference, 1))
    intake = DenseIntake(reference)
    feed(intake, body[:-4])
    with pytest.raises(IntakeRefused, match="ended after"):
        intake.body()


def test_a_header_that_does_not_match_the_model_is_refused_with_the_rounds_reason():
    reference = model()
    wrong = dict(delta_of(reference, 1))
    wrong["b.bias"] = np.zeros(7, np.float32)
    body = to_bytes(wrong)
    header_end = 8 + int.from_bytes(body[:8], "little")
    intake = DenseIntake(reference)
    assert intake.feed(body[:header_end]) == whole_reason(reference, from_bytes(body))
    assert "shape (7,)" in intake.reason
    intake.feed(body[header_end:])  # the rest is counted, not kept
    assert intake.data_bytes == sum(a.nbytes for a in wrong.values())


def test_nan_half_way_is_refused_before_the_rest_arrives_with_the_rounds_reason():
    reference = model(20_000)
    poisoned = delta_of(reference, 2)
    poisoned["a.weight"].reshape(-1)[poisoned["a.weight"].size // 2] = np.nan
    body = to_bytes(poisoned)
    intake = DenseIntake(reference, len(body))
    reasons = feed(intake, body, sizes=(4096,))
    expected = whole_reason(reference, from_bytes(body))
    assert expected == "parameter 'a.weight' contains NaN or infinite values"
    first = reasons.index(expected)
    assert first < len(reasons) // 2 + 2  # known about half-way through
    assert all(r == expected for r in reasons[first:])


def test_a_nan_is_named_as_the_round_names_it_when_an_earlier_parameter_is_incomplete():
    # b.bias (late by name, first by offset with float64) is poisoned; so is a.weight
    reference = {"a.weight": np.zeros(4000, np.float32), "b.bias": np.zeros(500, np.float64)}
    poisoned = {"a.weight": np.zeros(4000, np.float32), "b.bias": np.zeros(500, np.float64)}
    poisoned["b.bias"][0] = np.inf
    poisoned["a.weight"][-1] = np.nan
    body = to_bytes(poisoned)
    reasons = feed(DenseIntake(reference), body, sizes=(512,))
    expected = whole_reason(reference, from_bytes(body))
    assert expected == "parameter 'a.weight' contains NaN or infinite values"
    assert set(reasons) <= {None, expected} and reasons[-1] == expected


def test_early_refusal_waits_for_the_round_when_the_metadata_is_bad():
    assert meta_allows_early(META)
    assert not meta_allows_early(META | {"num_examples": 0})
    assert not meta_allows_early(META | {"is_delta": False})
    assert not meta_allows_early(META | {"metrics": {"loss": "x"}})
    assert not meta_allows_early(META | {"evaluation": {"num_examples": 3, "metrics": {}}})
    reference = model()
    wrong = {"a.weight": np.zeros(3, np.float32)}
    intake = DenseIntake(reference, early=False)
    feed(intake, to_bytes(wrong))
    assert intake.reason is None  # the round judges it, with its own first reason


def test_a_spare_buffer_is_reused_only_once_no_array_views_it():
    reference = model()
    body = to_bytes(delta_of(reference, 1))
    spares: list[bytearray] = []
    first = DenseIntake(reference, spares=spares)
    feed(first, body)
    update = reply_from_wire(META, first.body(), "p")  # views into the first buffer
    second = DenseIntake(reference, spares=spares)
    feed(second, to_bytes(delta_of(reference, 2)))
    assert second.body() is not first.body()  # the first is still viewed: not reused
    kept = np.array(update.weights["a.weight"])
    del update
    third = DenseIntake(reference, spares=spares)
    feed(third, to_bytes(delta_of(reference, 3)))
    assert third.body() is first.body() and len(spares) == 2  # nothing views it any more
    assert np.array_equal(kept, delta_of(reference, 1)["a.weight"])
    assert bytes(third.body()) == to_bytes(delta_of(reference, 3))


# ---- through a real service ------------------------------------------------------------------
class ScriptedParty:
    """A remote party whose delta depends only on its name and the round (not on the model),
    so the test can fold the same updates itself. ``kind``: good, nan (a NaN half-way through
    its first parameter) or huge (every entry 1e6: past the norm bound)."""

    def __init__(self, name: str, seed: int, kind: str, reference) -> None:
        self.name, self.seed, self.kind, self.reference = name, seed, kind, reference

    def delta(self, round_num: int) -> dict[str, np.ndarray]:
        delta = delta_of(self.reference, self.seed * 1000 + round_num)
        if self.kind == "nan":
            delta["a.weight"].reshape(-1)[delta["a.weight"].size // 2] = np.nan
        elif self.kind == "huge":
            delta = {k: np.full_like(v, 1e6) for k, v in delta.items()}
        return delta

    def examples(self) -> int:
        return 10 + self.seed

    def handle(self, task):
        if isinstance(task, EvaluateTask):
            return Evaluation(3, {"accuracy": 0.5})
        assert isinstance(task, TrainTask)
        return Update(self.delta(task.round), self.examples(), {"loss": 1.0})


def _run_federation(url: str, parties: list[ScriptedParty], reference, rounds: int):
    """Run a federation of ``parties`` on the service at ``url``: its history, final model, and
    which party each id is."""
    created = create_federation(
        url,
        initial_weights=reference,
        num_parties=len(parties),
        rounds=rounds,
        quorum=1,
        auto_start=True,
        fusion_algorithm="fedavg",
    )
    fid, token = created["aggregator_id"], created["join_token"]
    threads, who = [], {}
    for party in parties:
        client = PartyClient(url, token, name=party.name, poll_wait=5.0)
        who[client.join()["party_id"]] = party
        thread = threading.Thread(target=client.serve, args=(party,), daemon=True)
        thread.start()
        threads.append((thread, client))
    for thread, client in threads:
        thread.join(120)
        client.close()
        assert not thread.is_alive()
    history = httpx.get(f"{url}/v1/federations/{fid}/history", timeout=30).json()["rounds"]
    final = from_bytes(httpx.get(f"{url}/v1/federations/{fid}/model", timeout=30).content)
    return history, final, who


def test_the_service_fuses_what_folding_whole_updates_in_the_same_order_fuses(tmp_path):
    reference = model(20_000)
    kinds = ["good", "good", "nan", "good", "huge", "good"]
    parties = [ScriptedParty(f"p{i}", i, k, reference) for i, k in enumerate(kinds)]
    with background_service(ServiceSettings(data_dir=tmp_path)) as url:
        history, final, who = _run_federation(url, parties, reference, rounds=2)
    assert len(history) == 2
    weights = reference
    for record in history:
        assert len(record["participants"]) == 4, record
        order = [*record["participants"], *record["rejected"]]  # the fold order, then the rest
        replies = [
            (pid, Update(who[pid].delta(record["round"]), who[pid].examples(), {"loss": 1.0}), 0)
            for pid in order
        ]
        expected = fold_replies(
            RoundResult(record["round"], weights, None, {}), replies, fedavg(), get_codec("none")
        )
        assert expected.rejected == record["rejected"]
        reasons = {who[pid].kind: reason for pid, reason in expected.rejected.items()}
        assert reasons["nan"] == "parameter 'a.weight' contains NaN or infinite values"
        assert reasons["huge"].startswith("update norm") and "exceeds the limit" in reasons["huge"]
        assert expected.bytes_up == record["bytes_up"]
        weights = expected.weights
    for name, arr in weights.items():
        assert np.array_equal(final[name], arr), name


# ---- memory flat in the number of parties --------------------------------------------------------
MEMORY_PARAMS = 262_144  # a 1 MiB float32 model


def _party_process(url: str, token: str, count: int) -> subprocess.Popen:
    """``count`` good parties in a child process (their memory is not the service's)."""
    env = {"PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.Popen(
        [sys.executable, __file__, url, token, str(count)], env=env, stderr=subprocess.PIPE
    )


def _peak_service_bytes(tmp_path: Path, parties: int) -> int:
    """The service's peak traced allocations during 2 rounds of ``parties`` remote parties,
    above what it held once the federation was created."""
    reference = {"w": np.zeros(MEMORY_PARAMS, np.float32)}
    with background_service(ServiceSettings(data_dir=tmp_path / str(parties))) as url:
        created = create_federation(
            url, initial_weights=reference, num_parties=parties, rounds=2, auto_start=True
        )
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            proc = _party_process(url, created["join_token"], parties)
            assert proc.wait(240) == 0, proc.stderr.read().decode()[-2000:]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        fid = created["aggregator_id"]
        history = httpx.get(f"{url}/v1/federations/{fid}/history", timeout=30).json()["rounds"]
    assert [len(r["participants"]) for r in history] == [parties, parties]
    return peak - base


def test_service_memory_does_not_grow_by_an_update_per_party(tmp_path):
    """One update body per federation is received at a time and folded before the next is
    read, so 40 parties cost the service what 5 do, but for what the HTTP server reads of each
    waiting upload before TCP holds it back (one socket read, at most ~256 KiB, whatever the
    model's size): far less than the 1 MiB update each party sends."""
    few, many = _peak_service_bytes(tmp_path, 5), _peak_service_bytes(tmp_path, 40)
    model_bytes = MEMORY_PARAMS * 4
    print(f"peak above baseline: 5 parties {few / 2**20:.1f} MiB, 40: {many / 2**20:.1f} MiB")
    assert few < 8 * model_bytes + 4 * 2**20  # O(model): accumulator, buffers, the new model
    assert many - few < 35 * 320 * 1024, (few, many)  # < a socket read per extra party


def _serve_parties(url: str, token: str, count: int) -> None:
    class Good:
        def handle(self, task):
            if isinstance(task, EvaluateTask):
                return Evaluation(3, {"accuracy": 0.5})
            delta = {k: np.full_like(v, 1e-3) for k, v in task.weights.items()}
            return Update(delta, 10, {"loss": 1.0})

    clients = [PartyClient(url, token, name=f"m{i}", poll_wait=5.0) for i in range(count)]
    for client in clients:
        client.join()
    threads = [threading.Thread(target=c.serve, args=(Good(),)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    _serve_parties(sys.argv[1], sys.argv[2], int(sys.argv[3]))


# ---- long polls ---------------------------------------------------------------------------------
def test_a_party_in_a_long_poll_is_live_however_long_it_waits():
    from fedfuse.runtime import RemotePool

    pool = RemotePool(liveness=0.0)
    pool.add_remote("a")
    pool.add_remote("b")
    with pool.polling("a"):
        assert pool.party_ids() == ["a"]  # b's last poll is older than liveness
        assert pool.party_states()["a"]["state"] == "idle"
    assert pool.party_ids() == []


def test_a_waiting_poll_gets_its_task_when_it_is_posted_and_an_idle_one_ends_with_204(tmp_path):
    reference = {"w": np.zeros(4, np.float32)}
    with background_service(ServiceSettings(data_dir=tmp_path)) as url:
        created = create_federation(
            url, initial_weights=reference, num_parties=2, rounds=1, auto_start=True
        )
        first = PartyClient(url, created["join_token"], name="first")
        first.join()
        fid, auth = first.info["federation_id"], first._auth
        idle = httpx.get(f"{url}/v1/federations/{fid}/tasks/next?wait=0.2", headers=auth)
        assert idle.status_code == 204
        answers: list[httpx.Response] = []
        poll = threading.Thread(
            target=lambda: answers.append(
                httpx.get(
                    f"{url}/v1/federations/{fid}/tasks/next?wait=60", headers=auth, timeout=90
                )
            )
        )
        poll.start()
        second = PartyClient(url, created["join_token"], name="second")
        second.join()  # the last party: training starts, and the waiting poll gets its task
        poll.join(60)
        assert answers and answers[0].status_code == 200
        assert json.loads(answers[0].headers["X-Fedfuse-Meta"])["kind"] == "train"
        assert from_bytes(answers[0].content).keys() == {"w"}
        stopped = httpx.post(f"{url}/stop", json={"aggregator_id": fid}, timeout=60)
        assert stopped.status_code == 200, stopped.text
        ended = httpx.get(f"{url}/v1/federations/{fid}/tasks/next?wait=60", headers=auth)
        assert ended.status_code == 410  # its training thread has ended
        first.close()
        second.close()


def test_a_slow_party_gives_up_its_turn_and_both_updates_count_exactly(tmp_path):
    """A's body stalls half-way until B's reply has been taken: B is received meanwhile (A's
    half is spooled and A waits its turn again), and the round fuses both exactly."""
    reference = model(20_000)
    with background_service(ServiceSettings(data_dir=tmp_path)) as url:
        created = create_federation(
            url, initial_weights=reference, num_parties=2, rounds=1, auto_start=True
        )
        clients = {n: PartyClient(url, created["join_token"], name=n) for n in ("a", "b")}
        tasks = {}
        for client in clients.values():
            client.join()
        for name, client in clients.items():
            fid = client.info["federation_id"]
            task = httpx.get(
                f"{url}/v1/federations/{fid}/tasks/next?wait=60", headers=client._auth, timeout=90
            )
            assert task.status_code == 200
            tasks[name] = json.loads(task.headers["X-Fedfuse-Meta"])["task_id"]
        deltas = {"a": delta_of(reference, 11), "b": delta_of(reference, 12)}
        b_done = threading.Event()

        def gated(body: bytes):
            yield body[: len(body) // 2]
            assert b_done.wait(60), "b's reply was held up by a's stalled body"
            yield body[len(body) // 2 :]

        def post(name: str, content) -> httpx.Response:
            client = clients[name]
            meta = {"kind": "update", "num_examples": 5, "metrics": {}}
            return httpx.post(
                f"{url}/v1/federations/{fid}/tasks/{tasks[name]}/reply",
                content=content,
                headers=client._auth | {"X-Fedfuse-Meta": json.dumps(meta)},
                timeout=90,
            )

        answers = {}
        slow = threading.Thread(
            target=lambda: answers.update(a=post("a", gated(to_bytes(deltas["a"]))))
        )
        slow.start()
        answers["b"] = post("b", to_bytes(deltas["b"]))
        b_done.set()
        slow.join(90)
        assert answers["a"].status_code == 200 and answers["b"].status_code == 200
        rest = [  # the federated evaluation, until the federation ends
            threading.Thread(target=c.serve, args=(ScriptedParty(n, 0, "good", reference),))
            for n, c in clients.items()
        ]
        for thread in rest:
            thread.start()
        for thread in rest:
            thread.join(90)
        history = httpx.get(f"{url}/v1/federations/{fid}/history", timeout=30).json()["rounds"]
        final = from_bytes(httpx.get(f"{url}/v1/federations/{fid}/model", timeout=30).content)
        who = {c.info["party_id"]: n for n, c in clients.items()}
        for client in clients.values():
            client.close()
    (record,) = history
    assert [who[p] for p in record["participants"]] == ["b", "a"]
    replies = [(p, Update(deltas[who[p]], 5, {}), 0) for p in record["participants"]]
    expected = fold_replies(
        RoundResult(1, reference, None, {}), replies, fedavg(), get_codec("none")
    )
    for name, arr in expected.weights.items():
        assert np.array_equal(final[name], arr), name
