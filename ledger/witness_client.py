"""The client side of C2SP tlog-witness: ask a witness to cosign a checkpoint.

Status codes as at C2SP tlog-witness HEAD (2026-07, commit 95978ca, "clarify size zero
and size match handling"): a second root for an already-cosigned size answers 422
(older witnesses, and earlier text: 409 ``text/plain``); both are read as a fork when the
body says so, else a 422 is a bad consistency proof.

Trusts: nothing the witness sends; its cosignatures are verified when its key is given.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .cosignature import verify_cosignature
from .errors import LimitError, MalformedError, PeerUnreachable, SignatureError
from .note import Note, NoteSignature, SignedCheckpoint, Verifier, parse_note
from .peer import MAX_COSIGNATURES, Peer
from .witness import (
    _BY_STATUS,
    SIZE_CONTENT_TYPE,
    AddCheckpointRequest,
    RootMismatchError,
    SizeConflictError,
    WitnessUnavailable,
    _note_bytes,
)


def request_cosignature(url: str, old_size: int, proof: Sequence[bytes],
                        checkpoint_note: bytes | str | SignedCheckpoint | Note, *,
                        witness_key: Verifier | None = None,
                        client: Peer | None = None,
                        timeout: float = 10.0) -> list[NoteSignature]:
    """Ask the witness at ``url`` (its submission prefix) to cosign ``checkpoint_note``,
    given the size it last cosigned and a consistency proof from that size.

    Returns the cosignatures; with ``witness_key`` only that witness's, each verified (the
    spec's client ignores unknown keys). Raises the :class:`WitnessError` matching the
    status: on :class:`SizeConflictError`, ``e.size`` is the witness's size to retry from.
    The answer is bounded (:mod:`ledger.peer`): at most 64 KiB within ``timeout`` seconds
    in total, else :class:`WitnessUnavailable`.
    """
    note = _note_bytes(checkpoint_note)
    body = AddCheckpointRequest(old_size, tuple(proof), note).to_bytes()
    endpoint = url if url.endswith("/add-checkpoint") else url.rstrip("/") + "/add-checkpoint"
    http = client if client is not None else Peer(deadline=timeout)
    try:
        r = http.request("POST", endpoint, body=body, limit=MAX_COSIGNATURES,
                         headers={"content-type": "text/plain"},
                         deadline=timeout if client is None else None)
    except (PeerUnreachable, LimitError, MalformedError) as e:
        raise WitnessUnavailable(f"witness at {endpoint} did not answer within bounds: "
                                 f"{e.message}", url=endpoint) from None
    finally:
        if client is None:
            http.close()
    if r.status == 200:
        return _parse_cosignatures(note, r.body, witness_key, endpoint)
    detail = r.text.strip()[:300]
    ctype = r.header("content-type").split(";")[0].strip()
    if r.status == 409 and ctype == SIZE_CONTENT_TYPE:
        m = re.fullmatch(r"(0|[1-9][0-9]{0,19})\n", r.text)
        if not m:
            raise WitnessUnavailable(f"witness at {endpoint} sent a malformed size {detail!r}",
                                     url=endpoint)
        raise SizeConflictError(f"witness at {endpoint} has size {m.group(1)}, not {old_size}",
                                size=int(m.group(1)), url=endpoint)
    if r.status == 409 or (r.status == 422 and "second root" in detail):
        raise RootMismatchError(f"witness at {endpoint} refused a second root for the same "
                                f"size: {detail}", url=endpoint, checkpoint=note.decode())
    cls = _BY_STATUS.get(r.status)
    if cls is not None:
        raise cls(f"witness at {endpoint}: HTTP {r.status}: {detail}", url=endpoint)
    raise WitnessUnavailable(f"witness at {endpoint}: HTTP {r.status}: {detail}",
                             status=r.status, url=endpoint)


def _parse_cosignatures(note: bytes, resp: bytes, witness_key: Verifier | None,
                        endpoint: str) -> list[NoteSignature]:
    text = parse_note(note).text
    try:
        sigs = list(parse_note(text.encode() + b"\n" + resp).signatures)
    except MalformedError as e:
        raise WitnessUnavailable(f"witness at {endpoint} sent malformed cosignatures: "
                                 f"{e.message}", url=endpoint) from None
    if witness_key is None:
        return sigs
    mine = [s for s in sigs if (s.name, s.key_id) == (witness_key.name, witness_key.key_id)]
    if not mine:
        raise SignatureError(f"witness at {endpoint} returned no cosignature by {witness_key}",
                             hint="check the witness key you pinned for this URL")
    for s in mine:
        verify_cosignature(text, s, witness_key)
    return mine
