"""C2SP tlog-proof@v1: an inclusion proof carried offline with its (cosigned) checkpoint.

Format (c2sp.org/tlog-proof, lines separated by U+000A)::

    c2sp.org/tlog-proof@v1
    extra <base64>            optional, opaque, NOT authenticated
    index <decimal, no leading zeroes>
    <base64 hash>             zero or more: the RFC 6962 inclusion proof, leaf side first

    <the signed checkpoint note, verbatim>

Verifying (the spec's four steps): the caller computes the leaf hash from the entry; the
checkpoint must be signed by the pinned log key (origin = key name); the witness policy
must hold; the inclusion proof must bind the leaf to the checkpoint's root.

Bounds: a proof file is at most :data:`MAX_PROOF_BYTES`, with at most 64 proof hashes
(a tree of up to 2^64 leaves); anything else is a MalformedError, never a traceback.

Trusts: nothing in the file; the log key and witness policy come from the caller.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .cosignature import count_cosignatures
from .errors import InclusionError, MalformedError, SignatureError
from .merkle import HASH_SIZE, check_record
from .note import SignedCheckpoint, Verifier, b64decode, b64encode, open_checkpoint
from .policy import Policy

HEADER = "c2sp.org/tlog-proof@v1"
MAX_PROOF_BYTES = 1 << 20  # a checkpoint with 100 ML-DSA cosignatures is ~330 KB
MAX_HASHES = 64


@dataclass(frozen=True)
class TlogProof:
    index: int
    hashes: tuple[bytes, ...]
    checkpoint: bytes  # the signed note, verbatim
    extra: bytes | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.index < 2**64:
            raise MalformedError(f"tlog-proof index {self.index} out of range")
        if len(self.hashes) > MAX_HASHES or any(len(h) != HASH_SIZE for h in self.hashes):
            raise MalformedError(f"a tlog-proof holds at most {MAX_HASHES} 32-byte hashes")

    def to_bytes(self) -> bytes:
        lines = [HEADER]
        if self.extra is not None:
            lines.append("extra " + b64encode(self.extra))
        lines.append(f"index {self.index}")
        lines += [b64encode(h) for h in self.hashes]
        return ("\n".join(lines) + "\n\n").encode() + self.checkpoint

    @classmethod
    def from_bytes(cls, data: bytes) -> TlogProof:
        if len(data) > MAX_PROOF_BYTES:
            raise MalformedError(f"tlog-proof of {len(data)} bytes; at most "
                                 f"{MAX_PROOF_BYTES} are read")
        head, sep, checkpoint = data.partition(b"\n\n")
        if not sep:
            raise MalformedError("tlog-proof has no empty line before its checkpoint",
                                 hint="see c2sp.org/tlog-proof")
        try:
            lines = head.decode("ascii").split("\n")
        except UnicodeDecodeError:
            raise MalformedError("tlog-proof header lines are not ASCII") from None
        if lines[0] != HEADER:
            raise MalformedError(f"not a tlog-proof: first line {lines[0][:40]!r}, expected "
                                 f"{HEADER!r}")
        rest = lines[1:]
        extra = None
        if rest and rest[0].startswith("extra "):
            extra = b64decode(rest.pop(0)[6:], "tlog-proof extra data")
        if not rest or not re.fullmatch(r"index (0|[1-9][0-9]{0,19})", rest[0]):
            raise MalformedError("tlog-proof: expected 'index <decimal>' (no leading zeroes)")
        index = int(rest.pop(0)[6:])
        if len(rest) > MAX_HASHES:
            raise MalformedError(f"tlog-proof has {len(rest)} proof lines; at most "
                                 f"{MAX_HASHES}")
        hashes = []
        for i, line in enumerate(rest):
            h = b64decode(line, f"tlog-proof hash #{i}")
            if len(h) != HASH_SIZE:
                raise MalformedError(f"tlog-proof hash #{i} has {len(h)} bytes, expected 32")
            hashes.append(h)
        return cls(index, tuple(hashes), checkpoint, extra)


def looks_like_tlog_proof(data: bytes) -> bool:
    return data.startswith(HEADER.encode() + b"\n")


def check_witness_policy(cp: SignedCheckpoint, witnesses: Sequence[Verifier],
                         quorum: int, policy: Policy | None = None) -> list[Verifier]:
    """At least ``quorum`` of ``witnesses`` (or ``policy``'s quorum rule) cosigned ``cp``;
    returns those that did. Raises SignatureError."""
    if policy is not None:
        ok = count_cosignatures(cp.note, policy.witnesses)
        if not policy.satisfied(ok):
            raise SignatureError(f"checkpoint of size {cp.size}: the cosignatures of "
                                 f"{len(ok)} witnesses do not meet the policy's quorum",
                                 hint="do not trust it until the policy's witnesses cosign it")
        return ok
    ok = count_cosignatures(cp.note, witnesses) if witnesses else []
    if len(ok) < quorum:
        raise SignatureError(f"checkpoint of size {cp.size} has {len(ok)} of the {quorum} "
                             "required witness cosignatures",
                             hint="do not trust it until witnesses cosign it")
    return ok


def verify_tlog_proof(proof: TlogProof, leaf: bytes, log_key: Verifier, *,
                      witnesses: Sequence[Verifier] = (), quorum: int = 0,
                      policy: Policy | None = None, origin: str | None = None
                      ) -> SignedCheckpoint:
    """The spec's verification: log signature, witness policy, then inclusion of ``leaf``
    (the leaf hash) at ``proof.index``. Returns the checkpoint; raises on any failure.
    ``origin``: the log's origin if its key is named otherwise (see open_checkpoint)."""
    cp = open_checkpoint(proof.checkpoint, log_key, origin=origin)
    check_witness_policy(cp, witnesses, quorum, policy)
    if proof.index >= cp.size:
        raise InclusionError(f"index {proof.index} is beyond the checkpoint's size {cp.size}")
    check_record(list(proof.hashes), cp.size, cp.root, proof.index, leaf)
    return cp
