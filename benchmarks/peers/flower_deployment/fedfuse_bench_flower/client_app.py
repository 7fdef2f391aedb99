"""The Flower ``ClientApp``: the shared ``workload.fit`` / ``workload.evaluate``, timed."""

from __future__ import annotations

import time

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedfuse_bench_flower import workload

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Fit = the parameters + a constant; reports the fit's CPU and wall seconds."""
    started = time.time()
    parameters = msg.content["arrays"].to_numpy_ndarrays()
    new, cpu = workload.fit(parameters)
    metrics = MetricRecord(
        {
            "num-examples": workload.NUM_EXAMPLES,
            "fit-cpu": cpu,
            "fit-started": started,
            "fit-wall": time.time() - started,
        }
    )
    content = RecordDict({"arrays": ArrayRecord(new), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate = constants; reports the evaluation's CPU seconds."""
    parameters = msg.content["arrays"].to_numpy_ndarrays()
    loss, accuracy, cpu = workload.evaluate(parameters)
    metrics = MetricRecord(
        {
            "num-examples": workload.NUM_EXAMPLES,
            "eval-loss": loss,
            "eval-acc": accuracy,
            "eval-cpu": cpu,
        }
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
