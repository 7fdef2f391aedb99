"""Flow 2 from Python: an aggregator service and parties that bring their own model and code.

Run it:  .venv/bin/python examples/remote_parties.py

This re-tells the Flower blog post (a FedAvg server, two client processes): each party is a
Flower-style client object — ``fit(parameters, config)`` and ``evaluate(parameters, config)``
over a list of arrays — wrapped by fedfuse and connected with one call, ``run_party``. The
parties here run on threads of this process for a self-contained example; on real sites each
one runs the same ``run_party`` call (or ``fedfuse party``) on its own machine, dialling out to
the service's URL. The service never sees their data, only weight deltas.
"""

import threading

import httpx
import numpy as np
import torch
from torch import nn

from fedfuse.data import federate, load_dataset
from fedfuse.runtime import create_federation, run_party
from fedfuse.service import ServiceSettings, background_service

ROUNDS = 4


def make_model() -> nn.Module:
    """The parties' own model: a small CNN on 8x8 digit images."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(16 * 64, 10),
    )  # fmt: skip


class DigitsClient:
    """A Flower-style client: parameters are the model's state_dict values in name order."""

    def __init__(self, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray):
        self.model = make_model()
        self.names = sorted(self.model.state_dict())
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.x_test, self.y_test = torch.from_numpy(x_test), torch.from_numpy(y_test)

    def _load(self, parameters):
        state = {n: torch.from_numpy(p) for n, p in zip(self.names, parameters, strict=True)}
        self.model.load_state_dict(state)

    def fit(self, parameters, config):
        self._load(parameters)
        optimizer = torch.optim.SGD(self.model.parameters(), lr=config["learning_rate"])
        torch.manual_seed(config["seed"])
        for _ in range(config["epochs"]):
            for idx in torch.randperm(len(self.y)).split(config["batch_size"]):
                optimizer.zero_grad()
                nn.functional.cross_entropy(self.model(self.x[idx]), self.y[idx]).backward()
                optimizer.step()
        state = self.model.state_dict()
        return [state[n].numpy() for n in self.names], len(self.y), {}

    def evaluate(self, parameters, config):
        self._load(parameters)
        with torch.no_grad():
            out = self.model(self.x_test)
            loss = float(nn.functional.cross_entropy(out, self.y_test))
            accuracy = float((out.argmax(1) == self.y_test).float().mean())
        return loss, len(self.y_test), {"accuracy": accuracy}


def main(data_dir: str = "remote-parties-state") -> list[dict]:
    train, test = load_dataset("digits")
    sites = federate(train, test, num_parties=2, scheme="dirichlet", alpha=1.0, seed=0)
    torch.manual_seed(0)
    initial = {k: v.numpy() for k, v in make_model().state_dict().items()}

    with background_service(ServiceSettings(data_dir=data_dir)) as url:
        federation = create_federation(
            url, initial_weights=initial, num_parties=2, rounds=ROUNDS, epochs=2,
            batch_size=16, learning_rate=0.1, auto_start=True,
        )  # fmt: skip
        parties = []
        for name, site in sites.items():
            client = DigitsClient(site.train.x, site.train.y, site.test.x, site.test.y)
            args = (url, federation["join_token"], client)
            parties.append(threading.Thread(target=run_party, args=args, kwargs={"name": name}))
        for p in parties:
            p.start()
        for p in parties:
            p.join()
        fid = federation["aggregator_id"]
        rounds = httpx.get(f"{url}/v1/federations/{fid}/history").json()["rounds"]
    for r in rounds:
        metrics = r["federated"]
        print(
            f"round {r['round']}: accuracy {metrics['accuracy']:.4f} over "
            f"{metrics['num_examples']} test examples (weighted by examples)"
        )
    return rounds


if __name__ == "__main__":
    main()
