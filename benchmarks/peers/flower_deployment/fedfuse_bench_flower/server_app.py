"""The Flower ``ServerApp``: FedAvg over every SuperNode, every round, timed round by round.

The run config (``pyproject.toml``, overridden by ``flwr run --run-config``) sets the model size,
the rounds, how many nodes must be there (all of them train every round), whether the nodes
evaluate the new model (federated evaluation), and ``out-file``: where the timings go as JSON
(the launcher, ``launch.py``, reads it).

A round starts when the training messages are built (the nodes sampled) and ends when the
updates are fused, or, with federated evaluation, when the evaluation replies are aggregated.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedfuse_bench_flower import workload

app = ServerApp()


class TimedFedAvg(FedAvg):
    """FedAvg that notes when each round's phases end and the slowest node's fit."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rounds: dict[int, dict[str, float]] = {}

    def _note(self, server_round: int, key: str, value: float) -> None:
        self.rounds.setdefault(server_round, {})[key] = value

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._note(server_round, "start", time.time())
        self._note(server_round, "bytes_down", float(arrays.count_bytes() * len(messages)))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Any:
        replies = list(replies)
        self._note(server_round, "received", time.time())
        good = [m for m in replies if not m.has_error()]
        metrics = [m.content["metrics"] for m in good]
        self._note(server_round, "replies", float(len(good)))
        self._note(server_round, "errors", float(len(replies) - len(good)))
        self._note(server_round, "max_fit_cpu", max((m["fit-cpu"] for m in metrics), default=0))
        self._note(server_round, "max_fit_wall", max((m["fit-wall"] for m in metrics), default=0))
        start = self.rounds[server_round]["start"]
        began = [m["fit-started"] - start for m in metrics] or [0.0]
        self._note(server_round, "first_fit_after", min(began))  # polling + process start-up
        self._note(server_round, "last_fit_after", max(began))
        self._note(
            server_round,
            "bytes_up",
            float(sum(m.content["arrays"].count_bytes() for m in good)),
        )
        result = super().aggregate_train(server_round, replies)
        self._note(server_round, "fused", time.time())
        return result

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> Any:
        replies = list(replies)
        cpus = [m.content["metrics"]["eval-cpu"] for m in replies if not m.has_error()]
        self._note(server_round, "max_eval_cpu", max(cpus, default=0.0))
        self._note(server_round, "eval_replies", float(len(cpus)))
        result = super().aggregate_evaluate(server_round, replies)
        self._note(server_round, "evaluated", time.time())
        return result


@app.main()
def main(grid: Grid, context: Context) -> None:
    """FedAvg for ``rounds`` rounds over ``nodes`` nodes; the timings go to ``out-file``."""
    config = context.run_config
    nodes = int(config["nodes"])
    federated_eval = bool(config["federated-eval"])
    cpu0, t_main = time.process_time(), time.time()
    weights = workload.make_weights(int(config["num-params"]))
    strategy = TimedFedAvg(
        fraction_train=1.0,
        fraction_evaluate=1.0 if federated_eval else 0.0,
        min_train_nodes=nodes,
        min_evaluate_nodes=nodes if federated_eval else 0,
        min_available_nodes=nodes,
    )
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(list(weights.values())),
        num_rounds=int(config["rounds"]),
        timeout=float(config["round-timeout"]),
    )
    result = {
        "main_started": t_main,
        "main_ended": time.time(),
        "serverapp_cpu_s": time.process_time() - cpu0,
        "num_params": sum(int(a.size) for a in weights.values()),
        "model_bytes": sum(int(a.nbytes) for a in weights.values()),
        "rounds": {str(r): v for r, v in sorted(strategy.rounds.items())},
    }
    Path(str(config["out-file"])).write_text(json.dumps(result))
