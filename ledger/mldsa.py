"""ML-DSA-44 (FIPS 204) for C2SP tlog-cosignature's post-quantum cosignatures (alg 0x06).

The primitive comes from pyca ``cryptography`` (>= 47, its OpenSSL 3.5 backend): a
maintained, audited C implementation that potd already uses in its tests, rather than a
pure-Python one (``dilithium-py``: slow, its authors say not for production) or liboqs
bindings (a native library to build and ship). Keys are the 32-byte FIPS 204 seed
(private) and the 1312-byte encoded public key; signatures are 2420 bytes, pure ML-DSA
with an empty context string, as the spec requires.

The signed message is C2SP tlog-cosignature's ``cosigned_message`` (section "ML-DSA-44
signed message"): it commits to the cosigner's name and to (origin, start, end, root),
not to the checkpoint's extension lines.

Trusts: nothing; :func:`verify` returns ``False`` for any malformed key or signature.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import mldsa

from .errors import MalformedError

PUBLIC_KEY_SIZE = 1312
SIGNATURE_SIZE = 2420
SEED_SIZE = 32
LABEL = b"subtree/v1\n\x00"
MAX_TIMESTAMP = 2**63 - 1
_HINT = "install cryptography >= 47 from its PyPI wheel (which bundles OpenSSL 3.5)"


class PrivateKey:
    """An ML-DSA-44 signing key from its 32-byte seed; ``repr`` never shows the seed."""

    __slots__ = ("_key", "public_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_SIZE:
            raise MalformedError(f"an ML-DSA-44 seed has {SEED_SIZE} bytes, not {len(seed)}")
        try:
            self._key = mldsa.MLDSA44PrivateKey.from_seed_bytes(seed)
        except UnsupportedAlgorithm:
            raise MalformedError("ML-DSA-44 is not available in this `cryptography` build",
                                 hint=_HINT) from None
        self.public_key: bytes = self._key.public_key().public_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        return bytes(self._key.sign(message))

    def __repr__(self) -> str:
        return "mldsa.PrivateKey(<hidden>)"


def generate_seed() -> bytes:
    return os.urandom(SEED_SIZE)


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        key = mldsa.MLDSA44PublicKey.from_public_bytes(public_key)
    except UnsupportedAlgorithm:
        raise MalformedError("ML-DSA-44 is not available in this `cryptography` build",
                             hint=_HINT) from None
    except ValueError:  # a key the backend refuses
        return False
    try:
        key.verify(signature, message)
        return True
    except InvalidSignature:
        return False


def cosigned_message(cosigner: str, timestamp: int, origin: str, start: int, end: int,
                     root: bytes) -> bytes:
    """tlog-cosignature's ``cosigned_message`` (RFC 8446 presentation language)."""
    name, org = cosigner.encode("utf-8"), origin.encode("utf-8")
    if not 1 <= len(name) <= 255 or not 1 <= len(org) <= 255:
        raise MalformedError("ML-DSA-44 cosignatures cover names and origins of 1 to 255 "
                             f"bytes (cosigner {len(name)}, origin {len(org)})")
    if not 0 <= timestamp <= MAX_TIMESTAMP or not 0 <= start <= end < 2**64 or len(root) != 32:
        raise MalformedError("cosigned message out of range (timestamp < 2^63, "
                             "start <= end < 2^64, 32-byte hash)")
    if start and timestamp:
        raise MalformedError("a subtree with a non-zero start has a zero timestamp")
    return (LABEL + bytes([len(name)]) + name + struct.pack(">Q", timestamp)
            + bytes([len(org)]) + org + struct.pack(">QQ", start, end) + root)
