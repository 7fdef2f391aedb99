"""The primitives, all from pyca/cryptography: X25519 key agreement, HKDF-SHA256, AES-GCM for
the shares, and AES-256-CTR as the pseudorandom generator of the masks."""

from __future__ import annotations

import functools
import os

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "add_prg_",
    "KEY_BYTES",
    "NONCE_BYTES",
    "TAG_BYTES",
    "agree",
    "decrypt",
    "encrypt",
    "mask_seed",
    "prg",
    "private_key",
    "public_of",
    "share_key",
]

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_ZERO_IV = bytes(16)


def _label(*parts: bytes) -> bytes:
    """Length-prefixed concatenation, so that no two different tuples give the same label."""
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def agree(private: X25519PrivateKey, public: bytes) -> bytes:
    """The raw X25519 shared secret (raises ``ValueError`` on a low-order public key)."""
    return private.exchange(X25519PublicKey.from_public_bytes(public))


def private_key(private: bytes) -> X25519PrivateKey:
    """An X25519 private key from its raw 32 bytes."""
    return X25519PrivateKey.from_private_bytes(private)


def public_of(private: bytes) -> bytes:
    """The X25519 public key of a raw 32-byte private key."""
    return private_key(private).public_key().public_bytes_raw()


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=info).derive(secret)


def share_key(shared: bytes, session: bytes, sender: str, receiver: str) -> bytes:
    """AES-GCM key for the shares ``sender`` sends ``receiver``: one key per direction."""
    return _hkdf(
        shared, _label(b"fedfuse/secagg/share", session, sender.encode(), receiver.encode())
    )


def mask_seed(shared: bytes, session: bytes) -> bytes:
    """``s_uv = HKDF-SHA256(X25519(s_sk_u, s_pk_v))`` bound to the session (symmetric in u, v)."""
    return _hkdf(shared, _label(b"fedfuse/secagg/mask", session))


def _aad(session: bytes, sender: str, receiver: str) -> bytes:
    return _label(b"fedfuse/secagg/shares", session, sender.encode(), receiver.encode())


def encrypt(key: bytes, plaintext: bytes, session: bytes, sender: str, receiver: str) -> bytes:
    """``nonce || AES-GCM(key, plaintext, aad = (session, sender, receiver))``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _aad(session, sender, receiver))


def decrypt(key: bytes, ciphertext: bytes, session: bytes, sender: str, receiver: str) -> bytes:
    """Inverse of ``encrypt``; raises ``cryptography.exceptions.InvalidTag`` if anything differs."""
    nonce, body = ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:]
    return AESGCM(key).decrypt(nonce, body, _aad(session, sender, receiver))


@functools.lru_cache(maxsize=4)
def _zeros(length: int) -> bytes:
    return bytes(length)


def prg(seed: bytes, size: int) -> np.ndarray:
    """``size`` pseudorandom ``uint32``: the AES-256-CTR keystream of ``seed`` (zero IV; each
    seed is used for one vector only), read little-endian."""
    out = np.empty(size + 4, dtype="<u4")  # update_into wants room for a block more
    _keystream_into(seed, size, out)
    return out[:size].astype(np.uint32, copy=False)


def _keystream_into(seed: bytes, size: int, out: np.ndarray) -> None:
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_IV)).encryptor()
    encryptor.update_into(_zeros(4 * size), memoryview(out).cast("B"))


def add_prg_(target: np.ndarray, seeds: list[tuple[bytes, bool]]) -> None:
    """``target += PRG(seed)`` (or ``-=`` where the flag says so) for each seed, in place,
    through one reused buffer."""
    size = target.size
    scratch = np.empty(size + 4, dtype="<u4")
    for seed, subtract in seeds:
        _keystream_into(seed, size, scratch)
        (np.subtract if subtract else np.add)(target, scratch[:size], out=target)
