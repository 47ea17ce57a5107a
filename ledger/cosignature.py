"""C2SP tlog-cosignature: a witness's timestamped signature over a checkpoint.

Two kinds, told apart by the key's algorithm byte (``ledger.note``):
  0x04  Ed25519 ``cosignature/v1``: signs ``cosignature/v1\\ntime <t>\\n`` + the note text
        (extension lines included); 72 bytes = u64 timestamp || Ed25519 signature.
  0x06  ML-DSA-44: signs the binary ``cosigned_message`` (cosigner name, timestamp,
        origin, start 0, end = size, root; no extension lines); 2428 bytes =
        u64 timestamp || ML-DSA-44 signature. :mod:`ledger.mldsa` says which library.

Key forms: a cosigner's Ed25519 key may arrive as a plain note key (0x01, as
transparency-dev's witness tools generate it) or as a cosignature/v1 key (0x04). Both
wrap the same public key; the spec computes the key ID with 0x04, so :func:`as_cosigner`
reads a 0x01 key as its 0x04 twin. Private keys likewise (:func:`as_cosigning_key`).

Timestamps: one at or above 2^63 is refused (the spec's MUST), and so is one more than
:data:`MAX_CLOCK_SKEW` seconds in the verifier's future (the spec's MAY): a witness
cannot date a cosignature ahead to outlive a later, conflicting one.

Trusts: nothing but the witness keys passed in.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable

from . import mldsa
from .errors import MalformedError, SignatureError
from .note import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    ALG_MLDSA44,
    Checkpoint,
    Note,
    NoteSignature,
    Signer,
    Verifier,
    key_id,
)

MAX_TIMESTAMP = mldsa.MAX_TIMESTAMP  # 2^63 - 1
MAX_CLOCK_SKEW = 3600  # seconds
_SIG_SIZES = {ALG_COSIGNATURE_V1: 8 + 64, ALG_MLDSA44: 8 + mldsa.SIGNATURE_SIZE}


def as_cosigner(key: Verifier) -> Verifier:
    """``key`` as a cosignature verifier: an Ed25519 note key (0x01) becomes the
    cosignature/v1 key (0x04) for the same public key; 0x04 and 0x06 keys are unchanged."""
    if key.alg == ALG_ED25519:
        return Verifier(key.name, key_id(key.name, ALG_COSIGNATURE_V1, key.public_key),
                        ALG_COSIGNATURE_V1, key.public_key)
    return key


def as_cosigning_key(key: Signer) -> Signer:
    """The private-key twin of :func:`as_cosigner`."""
    if key.alg == ALG_ED25519:
        return Signer(key.name, key_id(key.name, ALG_COSIGNATURE_V1, key.public_key),
                      ALG_COSIGNATURE_V1, key.seed)
    return key


def cosignature_message(checkpoint_text: str, timestamp: int) -> bytes:
    """The Ed25519 ``cosignature/v1`` signed message."""
    return f"cosignature/v1\ntime {timestamp}\n{checkpoint_text}".encode()


def mldsa_message(checkpoint_text: str, cosigner: str, timestamp: int) -> bytes:
    """The ML-DSA-44 ``cosigned_message`` for a checkpoint (start 0, end = its size)."""
    cp = Checkpoint.from_text(checkpoint_text)
    return mldsa.cosigned_message(cosigner, timestamp, cp.origin, 0, cp.size, cp.root)


def _message(alg: int, cp_text: str, name: str, ts: int) -> bytes:
    return (mldsa_message(cp_text, name, ts) if alg == ALG_MLDSA44
            else cosignature_message(cp_text, ts))


def cosign(cp_text: str, witness: Signer, timestamp: int | None = None) -> NoteSignature:
    """A cosignature over ``cp_text`` by a 0x04 (Ed25519) or 0x06 (ML-DSA-44) key."""
    if witness.alg not in _SIG_SIZES:
        raise MalformedError(f"witness key {witness.name!r} is not a cosignature key "
                             f"(alg {witness.alg:#04x}; 0x04 or 0x06 expected)",
                             hint="generate one with `potd witness keygen`, or read an "
                                  "Ed25519 note key with as_cosigning_key")
    ts = int(time.time()) if timestamp is None else timestamp
    if not 0 <= ts <= MAX_TIMESTAMP:
        raise MalformedError(f"cosignature timestamp {ts} is out of range (0 to 2^63 - 1)")
    sig = witness.sign(_message(witness.alg, cp_text, witness.name, ts))
    return NoteSignature(witness.name, witness.key_id, struct.pack(">Q", ts) + sig)


def verify_cosignature(cp_text: str, sig: NoteSignature, witness: Verifier, *,
                       now: float | None = None) -> int:
    """Check one cosignature; return its timestamp. Raises SignatureError.

    ``witness`` may be an Ed25519 note key (0x01): it is read as its cosignature/v1 twin."""
    w = as_cosigner(witness)
    if w.alg not in _SIG_SIZES:
        raise MalformedError(f"{w.name!r} is not a cosignature verifier key")
    if (sig.name, sig.key_id) != (w.name, w.key_id):
        raise SignatureError(f"cosignature is by {sig.name}+{sig.key_id:08x}, not "
                             f"{w.name}+{w.key_id:08x}")
    want = _SIG_SIZES[w.alg]
    if len(sig.signature) != want:
        raise SignatureError(f"cosignature by {sig.name} has {len(sig.signature)} bytes, "
                             f"want {want}")
    ts = int.from_bytes(sig.signature[:8], "big")
    if ts > MAX_TIMESTAMP:
        raise SignatureError(f"cosignature by {sig.name} has timestamp {ts}, at or above 2^63",
                             hint="tlog-cosignature forbids it; the witness is broken or hostile")
    limit = (time.time() if now is None else now) + MAX_CLOCK_SKEW
    if ts > limit:
        raise SignatureError(f"cosignature by {sig.name} is dated {ts}, more than "
                             f"{MAX_CLOCK_SKEW} s in the future",
                             hint="the witness's clock is wrong (or this machine's)")
    try:
        msg = _message(w.alg, cp_text, w.name, ts)
    except MalformedError as e:
        raise SignatureError(f"cosignature by {sig.name}: {e.message}") from None
    if not w.verify(msg, sig.signature[8:]):
        raise SignatureError(f"invalid cosignature by {w.name}+{w.key_id:08x}")
    return ts


def count_cosignatures(note: Note, witnesses: Iterable[Verifier]) -> list[Verifier]:
    """The witnesses (from ``witnesses``, as given) with a valid cosignature on ``note``.

    A listed witness's bad cosignature raises SignatureError; lines by others are ignored."""
    by_id: dict[tuple[str, int], Verifier] = {}
    for w in witnesses:
        c = as_cosigner(w)
        by_id[(c.name, c.key_id)] = w
    ok: list[Verifier] = []
    for s in note.signatures:
        listed = by_id.get((s.name, s.key_id))
        if listed is not None:
            verify_cosignature(note.text, s, listed)
            if listed not in ok:  # a repeated cosignature line counts once toward a quorum
                ok.append(listed)
    return ok


def explain_missing(note: Note, witnesses: Iterable[Verifier]) -> str:
    """Why listed witnesses have no cosignature on ``note``, when it is not a split view:
    a line under the witness's name but another key ID (a key given in another form or
    for another algorithm, or a rotated key). Empty when nothing is known."""
    ids: dict[str, list[int]] = {}
    for s in note.signatures:
        ids.setdefault(s.name, []).append(s.key_id)
    out = []
    for w in witnesses:
        c = as_cosigner(w)
        seen = [k for k in ids.get(c.name, []) if k != c.key_id]
        if not seen:
            continue
        form = (f"the key given for {w.name} is an Ed25519 note key (0x01), read as the "
                f"cosignature/v1 key {c.key_id:08x}" if w.alg == ALG_ED25519
                else f"the key given for {w.name} has key ID {c.key_id:08x} (alg {c.alg:#04x})")
        out.append(f"{form}, but the note has lines by {w.name} under key ID(s) "
                   + ", ".join(f"{k:08x}" for k in seen)
                   + ": a key in another form or of another algorithm (0x04 Ed25519, "
                     "0x06 ML-DSA-44), or a rotated key; get the witness's current "
                     "cosignature verifier key")
    return "; ".join(out)
