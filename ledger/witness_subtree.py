"""The witness's optional ``sign-subtree`` call (C2SP tlog-witness at HEAD, C2SP commit
5ba5ee8, 2026-07-22): cosign a subtree ``[start, end)`` of a checkpoint this witness
already cosigned, given a subtree consistency proof
(draft-ietf-plants-merkle-tree-certs-03 §4.4, :mod:`ledger.subtree`).

Request body: ``subtree <start> <end>``, the subtree hash (base64), at most 63 proof
hashes (base64), an empty line, then the reference checkpoint (a signed note that must
carry a valid cosignature by this witness's key). Answers, in the order checked:

  400  malformed body, an invalid subtree, or ``end`` beyond the checkpoint's size
  404  the checkpoint's origin is not a known log, or this witness's key cannot cosign
       subtrees (only ML-DSA-44 ``subtree/v1`` cosignatures can; Ed25519
       ``cosignature/v1`` covers whole checkpoints only)
  403  the checkpoint carries no valid cosignature by this witness's key
  422  the subtree consistency proof does not verify
  200  one ML-DSA-44 cosignature line over (origin, start, end, hash) with timestamp 0

Trusts: only its own key (the log's signature is not needed: the witness cosigned that
checkpoint after checking it). Stateless: nothing is stored.
"""

from __future__ import annotations

import re

from .cosignature import count_cosignatures
from .errors import ConsistencyError, MalformedError, SignatureError
from .merkle import HASH_SIZE
from .mldsa import cosigned_message
from .note import ALG_MLDSA44, Checkpoint, NoteSignature, b64decode, parse_note
from .subtree import MAX_PROOF, check_subtree, valid_subtree
from .witness import (
    BadRequestError,
    LogSignatureError,
    ProofError,
    UnknownLogError,
    Witness,
)

_RANGE = re.compile(r"subtree (0|[1-9][0-9]{0,18}) (0|[1-9][0-9]{0,18})")


def _hash(line: str, what: str) -> bytes:
    try:
        h = b64decode(line, what)
    except MalformedError as e:
        raise BadRequestError(e.message) from None
    if len(h) != HASH_SIZE:
        raise BadRequestError(f"{what} has {len(h)} bytes, expected {HASH_SIZE}")
    return h


def sign_subtree(witness: Witness, body: bytes) -> bytes:
    """Handle one sign-subtree body; the cosignature line, or a WitnessError."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequestError("request body is not UTF-8") from None
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise BadRequestError("no empty line before the checkpoint")
    lines = head.split("\n")
    m = _RANGE.fullmatch(lines[0])
    if m is None or len(lines) < 2:
        raise BadRequestError("the body must start with 'subtree <start> <end>' and the "
                              "subtree hash")
    start, end = int(m[1]), int(m[2])
    node = _hash(lines[1], "subtree hash")
    if len(lines) - 2 > MAX_PROOF:
        raise BadRequestError(f"{len(lines) - 2} consistency proof lines; at most {MAX_PROOF}")
    proof = [_hash(x, f"proof line {i}") for i, x in enumerate(lines[2:])]
    try:
        signed = parse_note(note)
        cp = Checkpoint.from_text(signed.text)
    except MalformedError as e:
        raise BadRequestError(f"reference checkpoint: {e.message}") from None
    if not valid_subtree(start, end) or end > cp.size:
        raise BadRequestError(f"[{start}, {end}) is not a valid subtree of a tree of size "
                              f"{cp.size}")
    if not witness.state.keys(cp.origin):
        raise UnknownLogError(f"unknown log origin {cp.origin[:100]!r}", origin=cp.origin)
    me = witness.verifier
    if me.alg != ALG_MLDSA44:
        raise UnknownLogError("this witness's key cannot cosign subtrees (an Ed25519 "
                              "cosignature/v1 key); sign-subtree needs an ML-DSA-44 key")
    try:
        if not count_cosignatures(signed, [me]):
            raise SignatureError("no cosignature by this witness")
    except SignatureError as e:
        raise LogSignatureError(f"the reference checkpoint is not cosigned by "
                                f"{me.name}: {e.message}", origin=cp.origin) from None
    try:
        check_subtree(start, end, cp.size, proof, node, cp.root)
    except ConsistencyError as e:
        raise ProofError(f"{cp.origin}: {e.message}", origin=cp.origin) from None
    sig = witness.signer.sign(cosigned_message(me.name, 0, cp.origin, start, end, node))
    return NoteSignature(me.name, me.key_id, bytes(8) + sig).line().encode()
