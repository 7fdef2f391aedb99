"""The server side of SecAgg+: a state machine that asks, checks, folds and unmasks."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedfuse.secure._crypto import KEY_BYTES, add_prg_, agree, mask_seed, private_key, public_of
from fedfuse.secure._errors import SecAggError
from fedfuse.secure._graph import choose_degree, harary_graph
from fedfuse.secure._protocol import (
    CIPHERTEXT_BYTES,
    KEY_FIELDS,
    SESSION_BYTES,
    STAGES,
    check_bytes,
    check_keys,
    check_message,
    decode_share,
)
from fedfuse.secure._shamir import reconstruct

__all__ = ["SecAggServer"]

_FIELDS = {
    "advertise": KEY_FIELDS,
    "share": ("shares",),
    "mask": ("masked",),
    "unmask": ("b_shares", "s_shares"),
}


class SecAggServer:
    """The server's side of one SecAgg+ round over ``party_ids``' ``uint32`` vectors of
    ``vector_size``; it learns only ``sum_{u in U3} x_u mod 2**32``.

    Drive it stage by stage: send ``requests()``, pass each answer to ``receive``, then
    ``advance()``; after the unmask stage ``result()`` is the sum of the survivors' inputs.
    ``receive`` checks everything (who, session, stage, duplicates, fields, sizes) and raises
    ``SecAggError``; a party whose answer is refused counts as dropped (a duplicate is refused
    but the first answer stands). Masked vectors are folded into one running sum as they
    arrive (memory O(vector)). ``advance`` aborts (``SecAggError``, ``stage == "aborted"``)
    when fewer than ``min_parties`` answered or a neighbourhood falls below the threshold.

    The degree ``k`` and threshold ``t`` come from ``choose_degree(|U1|, dropout_rate,
    corruption_rate)`` once the advertisements are in. ``dropped`` maps each party that left
    to ``"<stage>: <why>"`` (a survivor that does not answer the unmask request stays among
    the ``survivors``: its input is in the sum); ``flagged`` names the parties whose unmask
    shares were off (their input still counts, the sum is exact without their shares).

    References:
        Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
        Learning", CCS 2017; Bell et al., CCS 2020.
    """

    def __init__(
        self,
        party_ids: Sequence[str],
        vector_size: int,
        *,
        dropout_rate: float = 0.1,
        corruption_rate: float = 0.0,
        min_parties: int | None = None,
    ) -> None:
        ids = list(party_ids)
        if len(ids) < 2 or len(set(ids)) != len(ids) or not all(isinstance(p, str) for p in ids):
            raise ValueError("SecAggServer: party_ids must be at least 2 distinct strings")
        if not (isinstance(vector_size, int) and vector_size >= 1):
            raise ValueError(
                f"SecAggServer: vector_size must be an integer >= 1, got {vector_size!r}"
            )
        if min_parties is not None and not (isinstance(min_parties, int) and min_parties >= 2):
            raise ValueError(
                f"SecAggServer: min_parties must be None or an integer >= 2, got {min_parties!r}"
            )
        choose_degree(len(ids), dropout_rate, corruption_rate)  # ValueError if it cannot work
        self.party_ids, self.vector_size = ids, vector_size
        self.dropout_rate, self.corruption_rate = dropout_rate, corruption_rate
        self.min_parties = min_parties
        self.session = secrets.token_bytes(SESSION_BYTES)
        self.stage = STAGES[0]
        self.degree: int | None = None
        self.threshold: int | None = None
        self.dropped: dict[str, str] = {}
        self.flagged: dict[str, str] = {}
        self._asked: set[str] = set(ids)
        self._answers: dict[str, Any] = {}
        self._keys: dict[str, dict[str, bytes]] = {}
        self._taken: set[bytes] = set()
        self._graph: dict[str, list[str]] = {}
        self._shares_sent: dict[str, dict[str, bytes]] = {}
        self._u2: set[str] = set()
        self._u3: set[str] = set()
        self._total: np.ndarray | None = None

    @property
    def survivors(self) -> list[str]:
        """U3: the parties whose masked input is in the sum."""
        return sorted(self._u3)

    def requests(self) -> dict[str, dict[str, Any]]:
        """The request for each party still in at the current stage."""
        if self.stage not in STAGES:
            return {}
        base = {"stage": self.stage, "session": self.session}
        live = sorted(p for p in self._asked if p not in self.dropped)
        if self.stage == "advertise":
            return {u: dict(base) for u in live}
        if self.stage == "share":
            return {
                u: {
                    **base,
                    "neighbours": {v: dict(self._keys[v]) for v in self._graph[u]},
                    "threshold": self.threshold,
                }
                for u in live
            }
        if self.stage == "mask":
            participants = sorted(self._u2)
            return {
                u: {
                    **base,
                    "shares": {v: self._shares_sent[v][u] for v in self._graph[u] if v in self._u2},
                    "participants": participants,
                }
                for u in live
            }
        return {u: {**base, "survivors": sorted(self._u3)} for u in live}

    def receive(self, party_id: str, message: dict[str, Any]) -> None:
        """Check and keep one answer (fold it, for a masked vector)."""
        who = f"party {party_id!r}"
        if self.stage not in STAGES:
            raise SecAggError(f"{who}: the round is {self.stage}, no answers taken")
        if party_id not in self._asked:
            raise SecAggError(f"{who}: was not asked at the {self.stage} stage")
        if party_id in self.dropped:
            raise SecAggError(f"{who}: already dropped ({self.dropped[party_id]})")
        if party_id in self._answers:
            raise SecAggError(f"{who}: a second {self.stage} answer")
        try:
            check_message(who, message, self.stage, self.session, _FIELDS[self.stage])
            self._answers[party_id] = getattr(self, f"_check_{self.stage}")(who, party_id, message)
        except SecAggError as e:
            self.dropped[party_id] = f"{self.stage}: {e}"
            raise

    def _check_advertise(self, who: str, u: str, message: dict) -> dict[str, bytes]:
        keys = {f: check_bytes(who, f, message[f], KEY_BYTES) for f in KEY_FIELDS}
        if keys["c_pk"] == keys["s_pk"] or {keys["c_pk"], keys["s_pk"]} & self._taken:
            raise SecAggError(f"{who}: reuses a public key already advertised")
        self._taken |= {keys["c_pk"], keys["s_pk"]}
        return keys

    def _check_share(self, who: str, u: str, message: dict) -> dict[str, bytes]:
        shares = check_keys(who, "shares", message["shares"], set(self._graph[u]))
        for v, data in shares.items():
            check_bytes(who, f"the shares for {v!r}", data, CIPHERTEXT_BYTES)
        return dict(shares)

    def _check_mask(self, who: str, u: str, message: dict) -> bool:
        masked = message["masked"]
        if not (
            isinstance(masked, np.ndarray)
            and masked.dtype == np.uint32
            and masked.shape == (self.vector_size,)
        ):
            raise SecAggError(
                f"{who}: masked must be a uint32 array of shape ({self.vector_size},)"
            )
        if self._total is None:
            self._total = np.zeros(self.vector_size, dtype=np.uint32)
        np.add(self._total, masked, out=self._total)
        return True

    def _check_unmask(self, who: str, u: str, message: dict) -> dict[str, dict]:
        neighbours = set(self._graph[u])
        b = check_keys(who, "b_shares", message["b_shares"], neighbours & self._u3)
        s = check_keys(who, "s_shares", message["s_shares"], neighbours & (self._u2 - self._u3))
        return {
            "b": {v: decode_share(who, data) for v, data in b.items()},
            "s": {v: decode_share(who, data) for v, data in s.items()},
        }

    def advance(self) -> None:
        """Close the current stage with whoever answered; raises ``SecAggError`` on abort."""
        if self.stage not in STAGES:
            raise SecAggError(f"the round is {self.stage}")
        for p in self._asked - set(self._answers) - set(self.dropped):
            self.dropped[p] = f"{self.stage}: no answer"
        answers, self._answers = self._answers, {}
        try:
            self._close(answers)
        except SecAggError:
            self.stage, self._total = "aborted", None
            raise
        self._asked = set(answers)
        self.stage = STAGES[STAGES.index(self.stage) + 1] if self.stage != STAGES[-1] else "done"

    def _enough(self, who: set[str], what: str) -> None:
        minimum = max(2, self.min_parties or 2)
        if len(who) < minimum:
            raise SecAggError(f"abort: only {len(who)} parties {what}, at least {minimum} needed")

    def _neighbourhoods(self, owners: set[str], alive: set[str], what: str) -> None:
        for u in sorted(owners):
            count = len(set(self._graph[u]) & alive)
            if count < self.threshold:
                raise SecAggError(
                    f"abort: only {count} neighbours of {u!r} {what}, below the threshold "
                    f"{self.threshold}"
                )

    def _close(self, answers: dict[str, Any]) -> None:
        if self.stage == "advertise":
            self._enough(set(answers), "advertised keys")
            try:
                self.degree, self.threshold = choose_degree(
                    len(answers), self.dropout_rate, self.corruption_rate
                )
            except ValueError as e:
                raise SecAggError(f"abort: {e}") from e
            self._keys = answers
            self._graph = harary_graph(sorted(answers), self.degree, self.session)
        elif self.stage == "share":
            self._u2 = set(answers)
            self._enough(self._u2, "sent shares")
            self._neighbourhoods(self._u2, self._u2, "sent shares")
            self._shares_sent = answers
        elif self.stage == "mask":
            self._u3 = set(answers)
            self._enough(self._u3, "sent masked inputs")
            self._neighbourhoods(self._u2, self._u3, "sent masked inputs")
            self._shares_sent = {}
        else:
            self._neighbourhoods(self._u2, set(answers), "answered the unmask request")
            self._unmask(answers)

    def _recover(self, owner: str, answers: dict[str, Any], kind: str, verify) -> bytes:
        shares = {}
        for position, v in enumerate(self._graph[owner], start=1):
            if v in answers and owner in answers[v][kind]:
                x, y = answers[v][kind][owner]
                if x != position:
                    self.flagged[v] = f"unmask: share of {owner!r} has index {x}, not {position}"
                    continue
                shares[v] = (x, y)
        try:
            secret, off = reconstruct(shares, self.threshold, verify)
        except SecAggError as e:
            raise SecAggError(f"abort: cannot recover the {kind} secret of {owner!r}: {e}") from e
        for v in off:
            self.flagged[v] = f"unmask: its share of {owner!r}'s {kind} secret is off"
        return secret

    def _unmask(self, answers: dict[str, Any]) -> None:
        seeds = []
        for u in sorted(self._u3):
            commit = self._keys[u]["b_commit"]
            b = self._recover(u, answers, "b", lambda c, h=commit: hashlib.sha256(c).digest() == h)
            seeds.append((b, True))
        for u in sorted(self._u2 - self._u3):
            s_pk = self._keys[u]["s_pk"]
            private = private_key(
                self._recover(u, answers, "s", lambda c, pk=s_pk: public_of(c) == pk)
            )
            for v in self._graph[u]:
                if v in self._u3:
                    shared = agree(private, self._keys[v]["s_pk"])
                    seeds.append((mask_seed(shared, self.session), v < u))
        add_prg_(self._total, seeds)

    def result(self) -> np.ndarray:
        """``sum_{u in survivors} x_u mod 2**32`` (``uint32``), once the unmask stage is closed."""
        if self.stage != "done":
            raise SecAggError(f"no result: the round is at {self.stage!r}")
        return self._total
