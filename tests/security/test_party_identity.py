"""The client side of identities: a party keeps its secret, an operator's tools send the key.

Threat: someone who knows a party's name (it is in logs and status pages) tries to take its
place by rejoining with it. A restarted ``fedfuse party`` proves it is the same party with the
secret it was given at its first join, kept owner-only in ``--secret-file``; ``fedfuse create``
and ``runtime.create_federation`` reach a service started with an API key.
"""

from __future__ import annotations

import os
import stat

import httpx
import numpy as np
import pytest

from fedfuse import FederationSpec
from fedfuse.cli import main
from fedfuse.runtime import PartyClient, ProtocolError, create_federation
from fedfuse.service import ServiceSettings, background_service

KEY = "s" * 32
WEIGHTS = {"w": np.zeros((2, 2), np.float32)}


def test_a_restarted_party_rejoins_with_its_secret_file_and_a_stranger_cannot(tmp_path):
    secret_file = tmp_path / "site.secret"
    with background_service(ServiceSettings(data_dir=str(tmp_path / "svc"))) as url:
        fed = create_federation(url, initial_weights=WEIGHTS, num_parties=2, rounds=1)
        with PartyClient(url, fed["join_token"], name="site", secret_file=secret_file) as first:
            joined = first.join()
        assert secret_file.read_text() == joined["party_secret"]
        assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600

        with (
            PartyClient(url, fed["join_token"], name="site") as stranger,
            pytest.raises(ProtocolError, match="party name 'site' is taken"),
        ):
            stranger.join()

        with PartyClient(url, fed["join_token"], name="site", secret_file=secret_file) as again:
            rejoined = again.join()
        assert rejoined["party_id"] == joined["party_id"]
        assert rejoined["party_token"] != joined["party_token"]  # the old token is replaced


def test_create_sends_the_api_key_from_a_file_or_the_environment(tmp_path, capsys, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    settings = ServiceSettings(data_dir=str(tmp_path / "svc"), api_key=KEY)
    with background_service(settings) as url:
        with pytest.raises(ProtocolError, match=r"service refused \(401\)"):
            create_federation(url, initial_weights=WEIGHTS, num_parties=1)
        assert create_federation(url, api_key=KEY, initial_weights=WEIGHTS, num_parties=1)

        args = ["create", "--server", url, "--num-parties", "1", "--rounds", "1"]
        assert main(args) == 2
        assert "service refused (401)" in capsys.readouterr().err
        assert main([*args, "--api-key-file", str(key_file)]) == 0
        assert "join_token" in capsys.readouterr().out
        monkeypatch.setenv("FEDFUSE_API_KEY", KEY)
        assert main(args) == 0


def test_create_federation_sends_a_spec_with_flat_changes_by_either_route(tmp_path):
    """``create_federation(server, spec, **flat)``: the nested JSON route for a zoo model, the
    form's ``spec`` field beside uploaded weights; both with the key, both stored nested."""
    spec = FederationSpec.from_flat(
        {"num_parties": 3, "rounds": 4, "fusion_algorithm": "fedadam", "learning_rate": 0.2}
    )
    settings = ServiceSettings(data_dir=str(tmp_path / "svc"), api_key=KEY)
    auth = {"Authorization": f"Bearer {KEY}"}
    with background_service(settings) as url:
        zoo = create_federation(
            url,
            spec,
            api_key=KEY,
            join_token="z" * 20,
            model="mlp",
            input_shape=(8,),
            num_classes=2,
            rounds=2,  # flat changes apply on top of the spec
            server_learning_rate=0.05,
        )
        uploaded = create_federation(url, spec.to_dict(), api_key=KEY, initial_weights=WEIGHTS)
        with pytest.raises(ProtocolError, match=r"refused \(400\).*training\.epochs"):
            create_federation(url, spec, api_key=KEY, initial_weights=WEIGHTS, epochs=0)
        configs = {
            name: httpx.get(f"{url}/v1/federations/{fed['aggregator_id']}", headers=auth).json()
            for name, fed in (("zoo", zoo), ("uploaded", uploaded))
        }
        listed = httpx.get(f"{url}/v1/federations", headers=auth).json()
    assert zoo["join_token"] == "z" * 20
    assert len(listed) == 2 and {row["fusion"] for row in listed} == {"fedadam"}
    zoo_config = configs["zoo"]["config"]
    assert (zoo_config["rounds"], zoo_config["num_parties"]) == (2, 3)
    assert zoo_config["fusion"] == {"name": "fedadam", "params": {"server_learning_rate": 0.05}}
    assert zoo_config["training"]["learning_rate"] == 0.2
    assert zoo_config["model"]["name"] == "mlp" and zoo_config["model"]["input_shape"] == [8]
    uploaded_config = configs["uploaded"]["config"]
    assert uploaded_config == spec.to_dict()  # sent whole, so no service default shows through
    assert configs["uploaded"]["parties_remaining"] == 3
