"""``FederationSpec.from_flat``: flat names onto the nested spec, in one place."""

import pytest

from fedfuse import FederationSpec
from fedfuse._settings import SettingsError


def test_choosing_another_fusion_or_partition_drops_the_old_ones_parameters():
    base = FederationSpec.from_flat(
        {"fusion_algorithm": "fedadam", "server_learning_rate": 0.1, "alpha": 0.3}
    )
    assert base.fusion.params == {"server_learning_rate": 0.1}
    assert base.data.partition_params == {"alpha": 0.3}
    other = FederationSpec.from_flat({"fusion_algorithm": "median", "partition": "iid"}, base=base)
    other.validate()  # fedadam's rate and dirichlet's alpha do not follow to median and iid
    assert other.fusion.params == {} and other.data.partition_params == {}
    same = FederationSpec.from_flat({"fusion_algorithm": "fedadam", "b1": 0.8}, base=base)
    assert same.fusion.params == {"server_learning_rate": 0.1, "b1": 0.8}
    whole = FederationSpec.from_flat(
        {"fusion": {"name": "fedyogi", "params": {"b2": 0.9}}}, base=base
    )
    assert whole.fusion.params == {"b2": 0.9}  # params given with the new choice are kept


def test_a_part_may_be_given_whole_and_train_options_may_not_set_the_seed():
    spec = FederationSpec.from_flat({"model": {"name": "mlp", "input_shape": [64]}, "rounds": 3})
    assert (spec.model.name, spec.model.input_shape, spec.rounds) == ("mlp", [64], 3)
    assert FederationSpec.from_flat({"model": "cifar_cnn"}).model.name == "cifar_cnn"
    merged = FederationSpec.from_flat({"train_options": {"compression": "int8"}, "epochs": 2})
    assert (merged.training.compression, merged.training.epochs) == ("int8", 2)
    with pytest.raises(SettingsError, match="seed is derived per party and round"):
        FederationSpec.from_flat({"train_options": {"seed": 3}})
