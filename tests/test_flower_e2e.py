"""End to end: the Flower blog post's client (seed 002) as a real party process.

The blog's ``client_1.py`` is written out as its user writes it (``centralized.py`` with the
CIFAR-10 CNN, ``set_parameters`` / ``get_parameters`` over ``net.state_dict()``, the
``FlowerClient`` class verbatim), with two changes: ``flwr`` is not imported (a local
``NumPyClient`` stands in for its base class) and ``fl.client.start_numpy_client(...)`` becomes
``fedfuse.runtime.run_party(url, token, FlowerClient(...))``. CIFAR-10 is replaced by random
arrays of its shape (offline). It trains beside an ordinary ``fedfuse party`` process against a
real ``fedfuse serve``; both parties' updates must be fused in every round.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys

import httpx
import numpy as np
import pytest
import torch
from torch import nn

from service_helpers import Service, env, fedfuse_process, stop_all

pytestmark = pytest.mark.timeout(240)

CENTRALIZED = '''
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
DEVICE = "cpu"

class Net(nn.Module):

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)

def train(net, trainloader, epochs: int, verbose=False):
    """Train the network on the training set."""
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.001)
    net.train()
    for epoch in range(epochs):
        correct, total, epoch_loss = 0, 0, 0.0
        for images, labels in trainloader:
            images, labels = images.to(DEVICE), labels.to(DEVICE)
            optimizer.zero_grad()
            outputs = net(images)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item()
            total += labels.size(0)
            correct += (torch.max(outputs.data, 1)[1] == labels).sum().item()
        if verbose:
            print(f"Epoch {epoch+1}: train loss {epoch_loss / total}, accuracy {correct / total}")

def test(net, testloader):
    """Evaluate the network on the entire test set."""
    criterion = torch.nn.CrossEntropyLoss()
    correct, total, loss = 0, 0, 0.0
    net.eval()
    with torch.no_grad():
        for images, labels in testloader:
            images, labels = images.to(DEVICE), labels.to(DEVICE)
            outputs = net(images)
            loss += criterion(outputs, labels).item()
            _, predicted = torch.max(outputs.data, 1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    loss /= len(testloader.dataset)
    accuracy = correct / total
    return loss, accuracy

def load_datasets():
    # CIFAR-10-shaped arrays from this site's file, in place of the download
    data = np.load("flower_site.npz")
    trainset = TensorDataset(torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"]))
    testset = TensorDataset(torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"]))
    trainloader = DataLoader(trainset, batch_size=32, shuffle=True)
    testloader = DataLoader(testset, batch_size=32)
    return trainloader, testloader

def load_model():
    return Net().to(DEVICE)
'''

CLIENT = """
import logging
import sys
import torch
import numpy as np
from typing import List, Tuple
from collections import OrderedDict
from centralized import load_datasets, load_model, train, test
from fedfuse.runtime import run_party


class NumPyClient:  # stands in for fl.client.NumPyClient (flwr is not installed)
    pass

# サーバーから取得したパラメータでローカルモデルを更新
def set_parameters(net, parameters: List[np.ndarray]):
    params_dict = zip(net.state_dict().keys(), parameters)
    state_dict = OrderedDict({k: torch.Tensor(v) for k, v in params_dict})
    net.load_state_dict(state_dict, strict=True)

# クライアントのローカルモデルで学習したパラメータを取得
def get_parameters(net) -> List[np.ndarray]:
    return [val.cpu().numpy() for _, val in net.state_dict().items()]

net = load_model()
trainloader, testloader = load_datasets()

class FlowerClient(NumPyClient):

    def __init__(self, net, trainloader, testloader):
        self.net = net
        self.trainloader = trainloader
        self.testloader = testloader

    def get_parameters(self, config):
        return get_parameters(self.net)

    def fit(self, parameters, config):
        set_parameters(self.net, parameters)
        train(self.net, self.trainloader, epochs=2, verbose=True)
        return get_parameters(self.net), len(self.trainloader.dataset), {}

    def evaluate(self, parameters, config):
        set_parameters(self.net, parameters)
        loss, accuracy = test(self.net, self.testloader)
        return float(loss), len(self.testloader.dataset), {"accuracy": float(accuracy)}

logging.basicConfig(format="%(message)s")
logging.getLogger("fedfuse").setLevel(logging.INFO)
url, token = sys.argv[1], sys.argv[2]
summary = run_party(url, token, FlowerClient(net, trainloader, testloader))
print(f"flower party: {summary.tasks} tasks, {summary.failed} failed {summary.failures}")
"""


def cifar_model() -> nn.Sequential:
    """The federation's model file: the blog's CNN, layer for layer, as an ``nn.Sequential``
    (its weights are named 0, 3, 7, 9, 11: sorted, they are not in state_dict order)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )  # fmt: skip


def cifar_shaped(path, n_train: int, n_test: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_train + n_test, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, n_train + n_test).astype(np.int64)
    np.savez(path, x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:])


def accuracies(log: str) -> dict[int, float]:
    found = re.findall(r"round (\d+): global model on local test data: .*accuracy ([0-9.]+)", log)
    return {int(r): float(a) for r, a in found}


@pytest.fixture
def service(tmp_path):
    svc = Service(tmp_path / "state").start()
    yield svc
    svc.stop()


def test_the_blogs_flower_client_trains_beside_a_fedfuse_party(service, tmp_path):
    (tmp_path / "centralized.py").write_text(CENTRALIZED)
    (tmp_path / "client_1.py").write_text(CLIENT)
    cifar_shaped(tmp_path / "flower_site.npz", 240, 70, seed=1)
    cifar_shaped(tmp_path / "data_party.npz", 200, 50, seed=2)
    buf = io.BytesIO()
    torch.save(cifar_model(), buf)
    form = {
        "fusion_algorithm": "fedavg", "model_type": "pytorch", "num_parties": 2, "rounds": 2,
        "epochs": 1, "learning_rate": 0.01, "auto_start": "true", "round_timeout": 120,
    }  # fmt: skip
    r = httpx.post(
        service.url + "/start-aggregator",
        data=form,
        files={"model_file": ("cnn.pt", buf.getvalue())},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    fed = r.json()
    fid, token = fed["aggregator_id"], fed["join_token"]

    flower_log = tmp_path / "flower.log"
    with open(flower_log, "wb") as out:
        flower = subprocess.Popen(
            [sys.executable, "client_1.py", service.url, token],
            stdout=out, stderr=subprocess.STDOUT, env=env(), cwd=tmp_path,
        )  # fmt: skip
    ordinary = fedfuse_process(
        "party", "--server", service.url, "--token", token,
        "--data", str(tmp_path / "data_party.npz"), log=tmp_path / "party.log",
    )  # fmt: skip
    try:
        assert [flower.wait(180), ordinary.wait(180)] == [0, 0], flower_log.read_text()
    finally:
        stop_all([flower, ordinary])

    status = service.get(f"/v1/federations/{fid}").json()
    assert status["status"] == "completed" and status["rounds_done"] == 2, status
    rounds = service.get(f"/v1/federations/{fid}/history").json()["rounds"]
    assert [h["round"] for h in rounds] == [1, 2]
    for h in rounds:  # both parties' updates fused every round, none failed or was rejected
        assert sorted(h["participants"]) == ["party_0", "party_1"], h
        assert not h["failed"] and not h["rejected"], h
    flower_out = flower_log.read_text()
    assert "flower party: 4 tasks, 0 failed {}" in flower_out
    assert "Epoch 2: train loss" in flower_out  # the blog's own train() ran, verbose
    assert "inferred" not in flower_out  # the order came from the service's join answer
    # the Flower client's accuracy arrived: the federated accuracy is the example-weighted
    # mean of the two parties' own evaluations (each logged to 4 decimals)
    theirs, ours = accuracies(flower_out), accuracies((tmp_path / "party.log").read_text())
    assert sorted(theirs) == sorted(ours) == [1, 2]
    for h in rounds:
        federated = h["federated"]
        assert federated["num_examples"] == 70 + 50
        expected = (70 * theirs[h["round"]] + 50 * ours[h["round"]]) / 120
        assert federated["accuracy"] == pytest.approx(expected, abs=1e-3)
