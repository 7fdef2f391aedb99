"""The HTTP party client against the real service app, in memory: no sockets, no processes.

``PartyClient(transport=...)`` takes any httpx transport; ``InApp`` carries its requests into
``fedfuse.service.create_app(...)`` through starlette's ``TestClient``, answers streamed as the
network streams them, so the party's byte caps see the same bodies they would on a socket.
"""

from __future__ import annotations

import io
import logging

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

from fedfuse.cli import main
from fedfuse.party import ClientParty
from fedfuse.runtime import PartyClient, ProtocolError, run_party
from fedfuse.service import ServiceSettings, create_app
from fedfuse.weights import SizeLimitError, SizeLimits, from_bytes
from test_flower_client import FlowerClient, Net, Twins, loaders, test

pytestmark = pytest.mark.timeout(120)
SERVER = "http://testserver"  # the TestClient's host; no socket is opened


class InApp(httpx.BaseTransport):
    """An httpx transport that hands each request to the app behind ``app_client``."""

    def __init__(self, app_client: TestClient) -> None:
        self.app_client = app_client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.app_client.send(request, stream=True)


def flower_model() -> nn.Sequential:
    """The federation's model: ``Net``'s layers in the same order, named 0 and 2, so the
    service's sorted names (0.bias, 0.weight, 2.bias, ...) are not state_dict order."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def model_bytes(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(model, buf)
    return buf.getvalue()


@pytest.fixture
def app_client(tmp_path):
    with TestClient(create_app(ServiceSettings(data_dir=str(tmp_path / "state")))) as client:
        yield client


def create(app_client: TestClient, model: nn.Module | None = None, **form) -> dict:
    base = {
        "fusion_algorithm": "fedavg", "model_type": "pytorch", "num_parties": 1, "rounds": 2,
        "epochs": 1, "learning_rate": 0.1, "round_timeout": 60, "auto_start": "false",
    }  # fmt: skip
    model_file = model_bytes(model if model is not None else flower_model())
    r = app_client.post(
        "/start-aggregator", data=base | form, files={"model_file": ("m.pt", model_file)}
    )
    assert r.status_code == 200, r.text
    return r.json()


def party(app_client: TestClient, token: str, **options) -> PartyClient:
    return PartyClient(SERVER, token, transport=InApp(app_client), poll_wait=5, **options)


def start_training(app_client: TestClient, fid: str) -> None:
    r = app_client.post("/train", json={"aggregator_id": fid, "wait": False})
    assert r.status_code == 202, r.text


def history(app_client: TestClient, fid: str) -> list[dict]:
    return app_client.get(f"/v1/federations/{fid}/history").json()["rounds"]


def test_a_flower_client_joins_polls_replies_and_ends(app_client):
    fed = create(app_client)
    fid = fed["aggregator_id"]
    torch.manual_seed(3)
    flower = FlowerClient(Net(), *loaders())
    with party(app_client, fed["join_token"], name="site") as client:
        info = client.join()
        assert info["federation_id"] == fid and info["party_id"] == "party_0"
        parameters = info["model"]["parameters"]
        assert parameters == [["0.weight", [6, 4]], ["0.bias", [6]], ["2.weight", [3, 6]],
                              ["2.bias", [3]]]  # fmt: skip
        handler = ClientParty(flower, info["party_id"])
        handler.check(parameters)
        start_training(app_client, fid)
        first = client.serve(handler, max_tasks=1)  # one poll, one reply
        assert (first.tasks, first.rounds, first.failed, first.failures) == (1, [1], 0, {})
        rest = client.serve(handler)
    assert (rest.tasks, rest.rounds, rest.failed) == (3, [1, 2], 0)  # evaluate 1, train+eval 2
    assert "completed" in rest.final_status
    rounds = history(app_client, fid)
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["participants"] == ["party_0"] and not r["failed"] for r in rounds)
    # the federated evaluation is the client's own test() of the final model, loaded by position
    final = from_bytes(app_client.get(f"/v1/federations/{fid}/model").content)
    net = Net()
    by_position = zip(net.state_dict(), parameters, strict=True)
    net.load_state_dict({k: torch.from_numpy(final[n]) for k, (n, _) in by_position}, strict=True)
    loss, accuracy = test(net, flower.testloader)
    assert rounds[-1]["federated"]["num_examples"] == len(flower.testloader.dataset)
    assert rounds[-1]["federated"]["accuracy"] == pytest.approx(accuracy)
    assert rounds[-1]["federated"]["loss"] == pytest.approx(loss, rel=1e-5)


def test_a_refused_join_is_a_protocol_error_with_the_services_reason(app_client):
    fed = create(app_client)
    with party(app_client, "not-the-token") as stranger, pytest.raises(ProtocolError) as info:
        stranger.join()
    assert str(info.value) == "join refused (401): invalid join token"
    with party(app_client, fed["join_token"]) as first:
        first.join()
    with party(app_client, fed["join_token"]) as late, pytest.raises(ProtocolError) as info:
        late.join()
    assert "join refused (409): all 1 parties have already joined" in str(info.value)


def test_a_client_of_another_model_is_refused_before_any_task(app_client):
    fed = create(app_client)
    torch.manual_seed(0)
    with pytest.raises(ValueError) as info:
        run_party(SERVER, fed["join_token"], FlowerClient(Twins(), *loaders()),
                  transport=InApp(app_client), poll_wait=5)  # fmt: skip
    assert "at position 0 the federation's model has 0.weight of shape (6, 4)" in str(info.value)
    assert "get_parameters gives shape (4, 4)" in str(info.value)
    assert history(app_client, fed["aggregator_id"]) == []


def test_oversized_answers_are_refused_at_the_partys_caps(app_client):
    big = nn.Sequential(nn.Linear(64, 64))  # 4,160 parameters, 16,640 bytes of float32
    fed = create(app_client, big)
    with party(app_client, fed["join_token"], limits=SizeLimits(max_bytes=4096)) as client:
        client.join()  # a small answer: within the control cap
        with pytest.raises(SizeLimitError, match="the limit is 4,096 bytes"):
            client.model_file()
        start_training(app_client, fed["aggregator_id"])
        with pytest.raises(SizeLimitError, match=r"tasks/next inflates to .* 4,096 bytes"):
            client.serve(ClientParty(FlowerClient(big, *loaders())), max_tasks=1)
    fed = create(app_client, big)
    with party(app_client, fed["join_token"], limits=SizeLimits(max_params=1000)) as client:
        client.join()
        start_training(app_client, fed["aggregator_id"])
        with pytest.raises(SizeLimitError, match="holds 4,160 parameters; the limit is 1,000"):
            client.serve(ClientParty(FlowerClient(big, *loaders())), max_tasks=1)


class Failing(FlowerClient):
    def fit(self, parameters, config):
        raise RuntimeError(f"CUDA out of memory in round {config['round']}")

    def evaluate(self, parameters, config):
        raise RuntimeError("no test data on this site")


def test_every_failed_task_is_logged_counted_and_reported_by_round(app_client, caplog):
    fed = create(app_client)
    fid = fed["aggregator_id"]
    torch.manual_seed(0)
    with party(app_client, fed["join_token"]) as client:
        info = client.join()
        handler = ClientParty(Failing(Net(), *loaders()), info["party_id"])
        handler.check(info["model"]["parameters"])
        start_training(app_client, fid)
        with caplog.at_level(logging.WARNING, "fedfuse.party"):
            summary = client.serve(handler)
    assert summary.tasks == summary.failed == 4 and summary.all_failed
    assert summary.failures == {
        1: "RuntimeError: CUDA out of memory in round 1",
        2: "RuntimeError: CUDA out of memory in round 2",
    }
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "round 1: train task failed: RuntimeError: CUDA out of memory in round 1" in warnings
    assert "round 2: evaluate task failed: RuntimeError: no test data on this site" in warnings
    rounds = history(app_client, fid)
    assert [r["failed"] for r in rounds] == [
        {"party_0": "RuntimeError: CUDA out of memory in round 1"},
        {"party_0": "RuntimeError: CUDA out of memory in round 2"},
    ]
    assert all(r["participants"] == [] for r in rounds)


class RefusingFirstReply(InApp):
    """Delivers every reply but answers the first one with a refusal, as a service that
    closed the task would."""

    refused = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path.endswith("/reply") and not self.refused:
            response.close()
            self.refused = True
            return httpx.Response(409, json={"detail": "task 1 is closed"})
        return response


def test_a_refused_reply_counts_as_a_failed_task(app_client, caplog):
    fed = create(app_client, rounds=1)
    torch.manual_seed(0)
    transport = RefusingFirstReply(app_client)
    with PartyClient(SERVER, fed["join_token"], transport=transport, poll_wait=5) as client:
        client.join()
        start_training(app_client, fed["aggregator_id"])
        with caplog.at_level(logging.WARNING, "fedfuse.party"):
            summary = client.serve(ClientParty(FlowerClient(Net(), *loaders())))
    assert (summary.tasks, summary.failed, summary.all_failed) == (2, 1, False)
    assert summary.failures == {1: "reply refused (409): task 1 is closed"}
    assert "round 1: task 1: reply refused (409): task 1 is closed" in caplog.text


def test_fedfuse_party_exits_1_when_every_task_failed(app_client, tmp_path, monkeypatch, capsys):
    """Data of the wrong width fails every task: the CLI says so and exits non-zero."""
    fed = create(app_client, auto_start="true")  # training starts once the party has joined
    rng = np.random.default_rng(0)
    data = tmp_path / "site.npz"
    np.savez(data, x_train=rng.random((20, 5), dtype=np.float32), y_train=rng.integers(0, 3, 20),
             x_test=rng.random((8, 5), dtype=np.float32), y_test=rng.integers(0, 3, 8))  # fmt: skip

    class InAppPartyClient(PartyClient):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, transport=InApp(app_client), **kwargs)

    monkeypatch.setattr("fedfuse.runtime.PartyClient", InAppPartyClient)
    argv = ["party", "--server", SERVER, "--token", fed["join_token"], "--data", str(data)]
    level = logging.getLogger("fedfuse").level
    try:
        assert main(argv) == 1
    finally:
        logging.getLogger("fedfuse").setLevel(level)
    out = capsys.readouterr().out
    assert "done: answered 4 tasks over rounds [1, 2], 4 failed" in out
    assert "round 1 failed: " in out and "round 2 failed: " in out
    assert "every one of the 4 tasks failed" in out
