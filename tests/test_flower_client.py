"""A Flower ``NumPyClient`` written as the Flower blog post (seed 002) writes it, in ClientParty.

Its ``set_parameters`` zips ``net.state_dict().keys()`` with the list it is given and loads it
strictly, so the arrays must come in the model's own order, not fedfuse's sorted-name order.
The models here are built so that the two orders differ.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedfuse.models import TrainConfig
from fedfuse.party import ClientParty, EvaluateTask, Evaluation, TaskError, TrainTask, Update

DEVICE = "cpu"


class Net(nn.Module):
    """``fc2`` is defined before ``fc10``: state_dict order is not sorted order."""

    def __init__(self) -> None:
        super().__init__()
        self.fc2 = nn.Linear(4, 6)
        self.fc10 = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc10(torch.relu(self.fc2(x)))


class Twins(nn.Module):
    """``b`` before ``a``, both of the same shape: shapes alone cannot tell them apart."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Linear(4, 4)
        self.a = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(torch.relu(self.b(x)))


def train(net, trainloader, epochs: int, verbose=False):
    """Train the network on the training set."""
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.001)
    net.train()
    for _epoch in range(epochs):
        for images, labels in trainloader:
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()


def test(net, testloader):
    """Evaluate the network on the entire test set."""
    criterion = torch.nn.CrossEntropyLoss()
    correct, total, loss = 0, 0, 0.0
    net.eval()
    with torch.no_grad():
        for images, labels in testloader:
            outputs = net(images)
            loss += criterion(outputs, labels).item()
            _, predicted = torch.max(outputs.data, 1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    loss /= len(testloader.dataset)
    accuracy = correct / total
    return loss, accuracy


test.__test__ = False  # the seed's name for its evaluation function, not a pytest test

# --- client_1.py of the seed, as written there (NumPyClient is Flower's base class) ---------


def set_parameters(net, parameters: list[np.ndarray]):
    params_dict = zip(net.state_dict().keys(), parameters)  # noqa: B905 - the seed's code
    state_dict = OrderedDict({k: torch.Tensor(v) for k, v in params_dict})
    net.load_state_dict(state_dict, strict=True)


def get_parameters(net) -> list[np.ndarray]:
    return [val.cpu().numpy() for _, val in net.state_dict().items()]


class NumPyClient:
    """Stands in for ``flwr.client.NumPyClient`` (not installed): a plain base class."""


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


# ------------------------------------------------------------------------------------------


def loaders(n_train: int = 48, n_test: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n_train + n_test, 4, generator=g), torch.randint(0, 3, (n_train + n_test,))
    train_set = TensorDataset(x[:n_train], y[:n_train])
    test_set = TensorDataset(x[n_train:], y[n_train:])
    return DataLoader(train_set, batch_size=16), DataLoader(test_set, batch_size=16)


def client(model: type[nn.Module] = Net, seed: int = 0) -> FlowerClient:
    torch.manual_seed(seed)
    return FlowerClient(model(), *loaders())


def global_weights(model: type[nn.Module] = Net, seed: int = 1) -> dict[str, np.ndarray]:
    """What fedfuse sends: the model's weights as a dict sorted by name."""
    torch.manual_seed(seed)
    state = model().state_dict()
    return {name: state[name].numpy().copy() for name in sorted(state)}


def model_parameters(model: type[nn.Module] = Net) -> list[list]:
    """What the service's join answer lists: ``[name, shape]`` in state_dict order."""
    return [[n, list(t.shape)] for n, t in model().state_dict().items()]


def loaded(net: nn.Module) -> dict[str, np.ndarray]:
    return {n: t.detach().numpy().copy() for n, t in net.state_dict().items()}


def test_the_seed_client_cannot_load_arrays_in_sorted_order():
    """Why the order matters: the blog's set_parameters refuses fedfuse's sorted list."""
    weights = global_weights()
    assert list(weights) != list(Net().state_dict())
    with pytest.raises(RuntimeError, match="size mismatch"):
        set_parameters(Net(), list(weights.values()))


def test_fit_gets_the_arrays_in_state_dict_order_and_its_update_is_named_back():
    flower = client()
    party = ClientParty(flower, "site-a")
    start = global_weights()
    reply = party.handle(TrainTask(1, start, TrainConfig(epochs=1)))
    assert isinstance(reply, Update), reply
    assert reply.is_delta and reply.party_id == "site-a"
    assert reply.num_examples == 48 and reply.metrics == {}
    assert list(reply.weights) == sorted(start)
    trained = loaded(flower.net)
    for name in start:  # start + delta is exactly what the client's own model now holds
        np.testing.assert_allclose(start[name] + reply.weights[name], trained[name], atol=1e-6)
        assert not np.allclose(trained[name], start[name])  # it trained, from the global model
    assert party.order_ == ["fc2.weight", "fc2.bias", "fc10.weight", "fc10.bias"]


def test_evaluate_loads_every_array_into_its_own_layer():
    flower = client()
    party = ClientParty(flower)
    start = global_weights(seed=5)
    reply = party.handle(EvaluateTask(3, start))
    assert isinstance(reply, Evaluation), reply
    assert reply.num_examples == 20
    assert set(reply.metrics) == {"loss", "accuracy"}
    assert reply.metrics["accuracy"] in {k / 20 for k in range(21)}
    held = loaded(flower.net)
    for name in start:
        np.testing.assert_array_equal(held[name], start[name])
    loss, accuracy = test(flower.net, flower.testloader)
    assert reply.metrics == {"loss": loss, "accuracy": accuracy}


def test_full_weights_and_the_task_config_reach_the_client():
    seen = {}

    class Recording(FlowerClient):
        def fit(self, parameters, config):
            seen.update(config)
            return super().fit(parameters, config)

    torch.manual_seed(0)
    flower = Recording(Net(), *loaders())
    config = TrainConfig(epochs=3, batch_size=8, learning_rate=0.2, seed=7)
    reply = ClientParty(flower).handle(TrainTask(4, global_weights(), config, send_delta=False))
    assert isinstance(reply, Update) and not reply.is_delta
    held = loaded(flower.net)
    for name, value in reply.weights.items():
        np.testing.assert_array_equal(value, held[name])
    assert seen["round"] == 4 and seen["epochs"] == 3 and seen["batch_size"] == 8
    assert seen["learning_rate"] == 0.2 and seen["seed"] == 7


def test_the_update_does_not_change_when_the_client_trains_again():
    """fit's arrays are views of the model's tensors; the update must be a copy."""
    flower = client()
    party = ClientParty(flower)
    first = party.handle(TrainTask(1, global_weights(), send_delta=False))
    kept = {n: a.copy() for n, a in first.weights.items()}
    party.handle(TrainTask(2, global_weights(seed=9), send_delta=False))
    for name in kept:
        np.testing.assert_array_equal(first.weights[name], kept[name])


def test_check_takes_the_services_order_and_accepts_a_matching_client():
    party = ClientParty(client())
    party.check(model_parameters())
    assert party.order_ == ["fc2.weight", "fc2.bias", "fc10.weight", "fc10.bias"]
    party.check(None)  # the service sent no order: what was known stays
    assert party.order_ == ["fc2.weight", "fc2.bias", "fc10.weight", "fc10.bias"]


def test_check_refuses_a_client_of_another_model_naming_the_first_difference():
    class Wider(Net):
        def __init__(self) -> None:
            super().__init__()
            self.fc10 = nn.Linear(6, 5)

    party = ClientParty(client(Wider))
    with pytest.raises(ValueError) as info:
        party.check(model_parameters())
    message = str(info.value)
    assert "at position 2 the federation's model has fc10.weight of shape (3, 6)" in message
    assert "get_parameters gives shape (5, 6)" in message
    assert party.order_ is None


def test_check_refuses_a_client_with_more_arrays():
    class Deeper(Net):
        def __init__(self) -> None:
            super().__init__()
            self.fc11 = nn.Linear(3, 3)

    with pytest.raises(ValueError) as info:
        ClientParty(client(Deeper)).check(model_parameters())
    message = str(info.value)
    assert "at position 4 the federation's model has no array" in message
    assert "gives shape (3, 3) (4 arrays expected, 6 given)" in message


def test_check_refuses_an_order_in_sorted_names():
    """A service order that is not the client's (here: sorted) is refused before any task."""
    sorted_order = sorted(model_parameters(), key=lambda entry: entry[0])
    with pytest.raises(ValueError, match=r"position 0 .* fc10\.bias of shape \(3,\)"):
        ClientParty(client()).check(sorted_order)


@pytest.mark.parametrize(
    ("parameters", "match"),
    [
        ({"fc2.weight": [6, 4]}, "not a list"),
        ([["fc2.weight", [6, -4]]], "parameter 0 is not"),
        ([["fc2.weight", [6, True]]], "parameter 0 is not"),
        ([["fc2.weight", [6, 4.0]]], "parameter 0 is not"),
        ([["fc2.weight", [6, 4]], [7, [6]]], "parameter 1 is not"),
        ([["fc2.weight", [6, 4]], ["fc2.bias"]], "parameter 1 is not"),
        ([["fc2.weight", [1] * 33]], "at most 32"),
        ([["fc2.weight", [6, 4]], ["fc2.weight", [6, 4]]], "lists parameter 'fc2.weight' twice"),
    ],
)
def test_check_refuses_a_malformed_parameter_list(parameters, match):
    party = ClientParty(client())
    with pytest.raises(ValueError, match=match):
        party.check(parameters)
    assert party.order_ is None


def test_without_the_services_order_it_is_inferred_from_the_shapes(caplog):
    party = ClientParty(client())
    with caplog.at_level(logging.WARNING, "fedfuse.party"):
        reply = party.handle(TrainTask(1, global_weights()))
    assert isinstance(reply, Update), reply
    assert party.order_ == ["fc2.weight", "fc2.bias", "fc10.weight", "fc10.bias"]
    assert caplog.records == []  # every shape is different: the order is certain


def test_repeated_shapes_keep_name_order_and_warn(caplog):
    flower = client(Twins)
    party = ClientParty(flower)
    start = global_weights(Twins)
    with caplog.at_level(logging.WARNING, "fedfuse.party"):
        reply = party.handle(EvaluateTask(1, start))
    assert isinstance(reply, Evaluation), reply
    assert party.order_ == ["a.weight", "a.bias", "b.weight", "b.bias"]
    assert "inferred from shapes, and some shapes repeat" in caplog.text
    held = loaded(flower.net)  # shapes fit, so it loads, but the twins are swapped
    np.testing.assert_array_equal(held["b.weight"], start["a.weight"])


def test_the_services_order_tells_twins_apart(caplog):
    flower = client(Twins)
    party = ClientParty(flower)
    party.check(model_parameters(Twins))
    start = global_weights(Twins)
    with caplog.at_level(logging.WARNING, "fedfuse.party"):
        assert isinstance(party.handle(EvaluateTask(1, start)), Evaluation)
    assert caplog.records == []
    held = loaded(flower.net)
    for name in start:
        np.testing.assert_array_equal(held[name], start[name])


def test_an_explicit_order_is_used_and_checked_against_the_service():
    flower = client(Twins)
    order = ["b.weight", "b.bias", "a.weight", "a.bias"]
    party = ClientParty(flower, order=order)
    assert party.order == order  # stored as given
    start = global_weights(Twins)
    assert isinstance(party.handle(EvaluateTask(1, start)), Evaluation)
    held = loaded(flower.net)
    for name in start:
        np.testing.assert_array_equal(held[name], start[name])
    with pytest.raises(ValueError, match="order= differs .* position 0: 'b.weight' vs 'a.bias'"):
        ClientParty(flower, order=order).check(sorted(model_parameters(Twins)))


def test_a_client_without_get_parameters_gets_the_tasks_name_order():
    seen = []

    class Plain:
        def fit(self, parameters, config):
            seen.append([p.shape for p in parameters])
            return [p + 1 for p in parameters], 5, {"loss": 0.5}

        def evaluate(self, parameters, config):
            return 0.0, 1, {}

    start = global_weights()
    reply = ClientParty(Plain()).handle(TrainTask(1, start))
    assert seen == [[a.shape for a in start.values()]]
    assert isinstance(reply, Update) and reply.metrics == {"loss": 0.5}
    for delta in reply.weights.values():
        np.testing.assert_allclose(delta, 1.0)


def test_fit_returning_the_wrong_count_or_shape_is_a_task_error_naming_the_array():
    class Short(FlowerClient):
        def fit(self, parameters, config):
            arrays, n, metrics = super().fit(parameters, config)
            return arrays[:-1], n, metrics

    class Transposed(FlowerClient):
        def fit(self, parameters, config):
            arrays, n, metrics = super().fit(parameters, config)
            arrays[2] = arrays[2].T
            return arrays, n, metrics

    reply = ClientParty(Short(Net(), *loaders())).handle(TrainTask(1, global_weights()))
    assert reply == TaskError("fit returned 3 arrays, expected 4")
    reply = ClientParty(Transposed(Net(), *loaders())).handle(TrainTask(1, global_weights()))
    assert reply == TaskError(
        "fit returned array 2 (fc10.weight) with shape (6, 3), expected (3, 6)"
    )


def test_a_task_of_another_model_and_a_failing_client_are_task_errors():
    party = ClientParty(client())
    party.check(model_parameters())
    other = global_weights(Twins)
    reply = party.handle(TrainTask(1, other))
    assert isinstance(reply, TaskError)
    assert "the task's arrays are not the model's: missing ['fc10.bias'" in reply.message
    assert "unexpected ['a.bias'" in reply.message

    inferring = ClientParty(client())
    reply = inferring.handle(TrainTask(1, other))
    assert isinstance(reply, TaskError) and "array 0 has shape (6, 4)" in reply.message
    assert inferring.order_ is None  # a failed inference decides nothing

    class Broken(FlowerClient):
        def fit(self, parameters, config):
            raise KeyError("no such column")

    reply = ClientParty(Broken(Net(), *loaders())).handle(TrainTask(1, global_weights()))
    assert reply == TaskError("KeyError: 'no such column'")
