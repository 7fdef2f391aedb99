"""The party side of SecAgg+: a state machine that answers the server's four requests."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedfuse.secure._crypto import (
    KEY_BYTES,
    add_prg_,
    agree,
    decrypt,
    encrypt,
    mask_seed,
    share_key,
)
from fedfuse.secure._errors import SecAggError
from fedfuse.secure._protocol import (
    CIPHERTEXT_BYTES,
    INDEX_BYTES,
    KEY_FIELDS,
    STAGES,
    check_bytes,
    check_ids,
    check_keys,
    check_message,
    encode_share,
)
from fedfuse.secure._shamir import PRIME, SHARE_BYTES, shamir_split

__all__ = ["SecAggParty"]


class SecAggParty:
    """One party's side of a SecAgg+ round over its quantized ``vector`` (``uint32``).

    ``handle(request) -> response`` runs the stages in order (advertise, share, mask, unmask)
    and refuses, with ``SecAggError``, a request of another session, out of order or replayed,
    malformed, with a neighbour set that includes the party itself or a threshold that is not
    a strict majority of its neighbours, shares it cannot decrypt, or an unmask request whose
    survivors are not a subset of the participants, leave out the party, or leave fewer than
    ``t`` of its neighbours. A refused request changes nothing. All randomness comes from the
    OS (``secrets``): two X25519 key pairs and a 32-byte self-mask seed ``b`` per round.

    The masked input is ``y = x + PRG(b) + sum_{v in N(u) & U2} ±PRG(s_uv)  (mod 2**32)``, ``+``
    when ``u < v``, ``-`` otherwise, so the pairwise masks cancel in the sum.
    """

    def __init__(self, party_id: str, vector: np.ndarray) -> None:
        self.party_id = party_id
        self.vector = vector
        self._next = STAGES[0]

    @property
    def stage(self) -> str:
        """The stage of the next request it will accept (``"done"`` after unmask)."""
        return self._next

    def handle(self, request: dict) -> dict[str, Any]:
        who = f"party {self.party_id!r}"
        if self._next == "done":
            raise SecAggError(f"{who}: the round is over, got another request")
        stage = request.get("stage") if isinstance(request, dict) else None
        if stage != self._next:
            raise SecAggError(f"{who}: expected a {self._next!r} request, got {stage!r}")
        response = getattr(self, f"_{stage}")(who, request)
        self._next = STAGES[STAGES.index(stage) + 1] if stage != STAGES[-1] else "done"
        return {"stage": stage, "session": self._session, **response}

    def _advertise(self, who: str, request: dict) -> dict[str, Any]:
        if not isinstance(self.party_id, str):
            raise SecAggError(f"{who}: party_id must be a string")
        v = self.vector
        if not (isinstance(v, np.ndarray) and v.dtype == np.uint32 and v.ndim == 1):
            raise SecAggError(f"{who}: vector must be a 1-d uint32 array (see Quantizer)")
        if not isinstance(request, dict) or not {"stage", "session"} <= set(request):
            raise SecAggError(f"{who}: an advertise request has a stage and a session")
        session = check_bytes(who, "session", request["session"], 16)
        self._session = session
        self._c, self._s = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        self._b = secrets.token_bytes(KEY_BYTES)
        return {
            "c_pk": self._c.public_key().public_bytes_raw(),
            "s_pk": self._s.public_key().public_bytes_raw(),
            "b_commit": hashlib.sha256(self._b).digest(),
        }

    def _share(self, who: str, request: dict) -> dict[str, Any]:
        check_message(who, request, "share", self._session, ("neighbours", "threshold"))
        neighbours, t = request["neighbours"], request["threshold"]
        if not isinstance(neighbours, dict) or not neighbours:
            raise SecAggError(f"{who}: neighbours must be a non-empty dict")
        if self.party_id in neighbours:
            raise SecAggError(f"{who}: listed as its own neighbour")
        keys = {}
        for v, entry in neighbours.items():
            if not isinstance(v, str):
                raise SecAggError(f"{who}: neighbour ids must be strings")
            check_keys(who, f"keys of {v!r}", entry, set(KEY_FIELDS))
            keys[v] = {
                f: check_bytes(who, f"{f} of {v!r}", entry[f], KEY_BYTES) for f in KEY_FIELDS
            }
        k = len(keys)
        if not (isinstance(t, int) and not isinstance(t, bool) and k / 2 < t <= k):
            raise SecAggError(f"{who}: threshold must be an integer in ({k}/2, {k}], got {t!r}")
        order = sorted(keys)
        try:
            shared = {v: agree(self._c, keys[v]["c_pk"]) for v in order}
        except ValueError as e:
            raise SecAggError(f"{who}: a neighbour's c_pk is not a valid X25519 key") from e
        s_shares = shamir_split(self._s.private_bytes_raw(), t, k)
        b_shares = shamir_split(self._b, t, k)
        ciphertexts = {}
        for v, (x, s_y), (_, b_y) in zip(order, s_shares, b_shares, strict=True):
            plaintext = x.to_bytes(INDEX_BYTES, "big") + s_y.to_bytes(SHARE_BYTES, "big")
            plaintext += b_y.to_bytes(SHARE_BYTES, "big")
            key = share_key(shared[v], self._session, self.party_id, v)
            ciphertexts[v] = encrypt(key, plaintext, self._session, self.party_id, v)
        self._keys, self._shared, self._threshold = keys, shared, t
        return {"shares": ciphertexts}

    def _mask(self, who: str, request: dict) -> dict[str, Any]:
        check_message(who, request, "mask", self._session, ("shares", "participants"))
        participants = check_ids(who, "participants", request["participants"])
        if self.party_id not in participants:
            raise SecAggError(f"{who}: not among the participants")
        live = set(self._keys) & set(participants)
        if len(live) < self._threshold:
            raise SecAggError(
                f"{who}: only {len(live)} neighbours left, below the threshold {self._threshold}"
            )
        ciphertexts = check_keys(who, "shares", request["shares"], live)
        received = {}
        for v in sorted(live):
            data = check_bytes(who, f"the shares from {v!r}", ciphertexts[v], CIPHERTEXT_BYTES)
            key = share_key(self._shared[v], self._session, v, self.party_id)
            try:
                plaintext = decrypt(key, data, self._session, v, self.party_id)
            except InvalidTag as e:
                raise SecAggError(f"{who}: the shares from {v!r} do not authenticate") from e
            x = int.from_bytes(plaintext[:INDEX_BYTES], "big")
            s_y = int.from_bytes(plaintext[INDEX_BYTES : INDEX_BYTES + SHARE_BYTES], "big")
            b_y = int.from_bytes(plaintext[INDEX_BYTES + SHARE_BYTES :], "big")
            if x == 0 or s_y >= PRIME or b_y >= PRIME:
                raise SecAggError(f"{who}: the shares from {v!r} are not points of the field")
            received[v] = (x, s_y, b_y)
        seeds = [(self._b, False)]
        for v in sorted(live):
            try:
                shared = agree(self._s, self._keys[v]["s_pk"])
            except ValueError as e:
                raise SecAggError(f"{who}: the s_pk of {v!r} is not a valid X25519 key") from e
            seeds.append((mask_seed(shared, self._session), self.party_id > v))
        masked = self.vector.copy()
        add_prg_(masked, seeds)
        self._received, self._participants = received, set(participants)
        return {"masked": masked}

    def _unmask(self, who: str, request: dict) -> dict[str, Any]:
        check_message(who, request, "unmask", self._session, ("survivors",))
        survivors = set(check_ids(who, "survivors", request["survivors"]))
        if not survivors <= self._participants:
            raise SecAggError(f"{who}: survivors who never sent shares")
        if self.party_id not in survivors:
            raise SecAggError(f"{who}: not among the survivors although it sent its input")
        alive = survivors & set(self._received)
        if len(alive) < self._threshold:
            raise SecAggError(
                f"{who}: only {len(alive)} neighbours survived, below the threshold "
                f"{self._threshold}"
            )
        b_shares = {
            v: encode_share(x, b_y) for v, (x, _, b_y) in self._received.items() if v in alive
        }
        s_shares = {
            v: encode_share(x, s_y) for v, (x, s_y, _) in self._received.items() if v not in alive
        }
        self._received = {}
        return {"b_shares": b_shares, "s_shares": s_shares}
