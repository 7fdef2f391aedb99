"""Secure aggregation (SecAgg+) as sans-I/O state machines for the party and the server.

The server learns ``sum_u x_u mod 2**32`` over the parties that stayed to the end, and nothing
else about any one ``x_u``, as long as fewer than ``threshold`` of any party's neighbours
collude with it. Four stages, each a request from the server and an answer from every party
still in (plain dicts; ``pack``/``unpack`` put the small ones on the wire):

1. advertise: each party sends two X25519 public keys (``c_pk`` for encrypting shares, ``s_pk``
   for pairwise masks) and ``sha256(b)`` of a 32-byte self-mask seed ``b``.
2. share: on a random Harary graph of degree ``k`` (``choose_degree``), each party
   Shamir-shares its ``s`` private key and ``b`` among its neighbours (threshold ``t``), each
   pair of shares AES-GCM encrypted to its neighbour under HKDF(X25519(c_sk_u, c_pk_v)).
3. mask: each party sends ``y_u = x_u + PRG(b_u) + sum_v ±PRG(s_uv)  (mod 2**32)``.
4. unmask: for each neighbour a party reveals the share of ``b`` (it survived) or of the ``s``
   key (it dropped after sharing), never both; the server removes every mask.

Threat model: the semi-honest-server variant **without a PKI**: messages are not signed, so an
actively malicious server could impersonate parties at the advertise stage; the transport
authenticates who talks to the server. Parties check everything else they can (session,
stage order, thresholds, survivors, authenticated shares); the server checks every answer and
locates, or aborts on, shares that do not reconstruct a committed secret.

References:
    Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
    CCS 2017. Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic
    Overhead", CCS 2020.
"""

from fedfuse.secure._errors import SecAggError
from fedfuse.secure._graph import choose_degree, harary_graph
from fedfuse.secure._party import SecAggParty
from fedfuse.secure._quantize import Quantizer
from fedfuse.secure._server import SecAggServer
from fedfuse.secure._shamir import shamir_combine, shamir_split
from fedfuse.secure._wire import pack, unpack

__all__ = [
    "Quantizer",
    "SecAggError",
    "SecAggParty",
    "SecAggServer",
    "choose_degree",
    "harary_graph",
    "pack",
    "shamir_combine",
    "shamir_split",
    "unpack",
]
