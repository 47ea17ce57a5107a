"""The seed beacon and the public challenge from drand (protocol, shared with the auditor).

Beacon modes of a run (``run.open`` decides):

* ``drand`` — ``run.open.body.beacon = {"type": "drand", "chain": <chain hash hex>,
  "round": R}`` with ``R`` a round published *after* ``run.open`` is attested to exist.
  The first ``step`` carries ``beacon_round`` (drand's round JSON: ``round``,
  ``signature``, [``previous_signature``], ``randomness``) and ``open_checkpoint`` (a
  log-signed checkpoint of size > index(run.open), with the witness cosignatures or the
  ``timestamp`` line that attest when it existed). ``beacon = randomness(R) =
  SHA-256(signature)``; the seed is :func:`prover.derive.derive_seed` of it.
* ``log`` (version 1, weaker) — no ``beacon`` field; the first step carries
  ``beacon_checkpoint`` and ``beacon = SHA-256(log signature)`` (:mod:`prover.derive`).

Attested time of a checkpoint (:func:`attested_ms`), given the auditor's witness policy
(``quorum`` k of pinned witnesses): with k > 0, the k-th smallest verified cosignature
time ``t`` (unix s) gives ``(t + 1) * 1000`` ms — if fewer than k of the witnesses lie,
one honest witness saw the checkpoint by then; with k = 0, the checkpoint's ``timestamp``
line (the log operator's word). With a C2SP tlog-policy instead of k: the earliest time
by which the witnesses that had cosigned satisfy its quorum rule. Soundness needs
``attested < round_time(R) * 1000``.

Public challenge (run.close decides): ``run.close.body.challenge_beacon = {"type":
"drand", "chain": hex, "round": R_c}``; the evidence directory holds ``challenge.json``
``{"close_checkpoint": <note>, "round": <round JSON>}``; challenge seed
``SHA-256("potd-challenge-v2\\n" || run id (32 bytes) || randomness(R_c))``. Without it
(log mode): ``SHA-256("potd-challenge-v1\\n" || run id || root(n) || u64 BE n)`` with
``n = index(run.close) + 1`` — fixed once run.close is logged, but predictable (and
grindable) by the trainer who writes run.close.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from ledger.cosignature import as_cosigner, verify_cosignature
from ledger.drand import ChainInfo
from ledger.errors import SignatureError, VerificationError
from ledger.note import SignedCheckpoint, Verifier
from ledger.policy import Policy

CHALLENGE_V1 = b"potd-challenge-v1\n"
CHALLENGE_V2 = b"potd-challenge-v2\n"
CHALLENGE_FILE = "challenge.json"
DEFAULT_LEAD = 6.0  # seconds between committing a round and its publication


def beacon_field(chain: ChainInfo, round_: int) -> dict[str, Any]:
    return {"type": "drand", "chain": chain.hash_hex, "round": round_}


def pick_round(chain: ChainInfo, now: float, lead: float = DEFAULT_LEAD) -> int:
    """The first round published at least ``lead`` seconds (and two periods) after ``now``."""
    at = now + max(lead, 2 * chain.period)
    r = max(1, math.ceil((at - chain.genesis_time) / chain.period) + 1)
    while chain.round_time(r) < at:
        r += 1
    return r


def _cosigned_at(cp: SignedCheckpoint, witnesses: Iterable[Verifier]) -> dict[Verifier, int]:
    """Each witness's latest valid cosignature time on ``cp`` (unix s); bad lines ignored."""
    out: dict[Verifier, int] = {}
    for w in set(witnesses):
        c = as_cosigner(w)
        for s in cp.note.signatures:
            if (s.name, s.key_id) == (c.name, c.key_id):
                try:
                    t = verify_cosignature(cp.note.text, s, w)
                except SignatureError:
                    continue
                out[w] = max(t, out.get(w, t))
    return out


def attested_ms(cp: SignedCheckpoint, witnesses: Sequence[Verifier], quorum: int,
                policy: Policy | None = None) -> tuple[int, str]:
    """When ``cp`` provably existed, in unix ms, and on whose word (see module doc).

    With a C2SP tlog-policy (``policy``, replacing ``witnesses``/``quorum``): the
    earliest cosignature time by which the witnesses that had cosigned satisfy its
    quorum rule (for a flat k-of-n policy, the k-th smallest time, as without one)."""
    if policy is not None and policy.quorum != b"none":
        times = _cosigned_at(cp, policy.witnesses)
        have: list[Verifier] = []
        for w, t in sorted(times.items(), key=lambda wt: wt[1]):
            have.append(w)
            if policy.satisfied(have):
                return (t + 1) * 1000, ("cosignature times of the policy's witnesses (the "
                                        f"earliest that meets its quorum: {t})")
        raise VerificationError(f"the checkpoint of size {cp.size} has cosignatures by "
                                f"{len(times)} of the policy's witnesses, not enough for its "
                                "quorum: no witnessed time",
                                hint="the trainer must keep a witnessed checkpoint (log with "
                                     "--wait-for-witnesses)")
    if quorum > 0 and policy is None:
        times_l = sorted(_cosigned_at(cp, witnesses).values())
        if len(times_l) < quorum:
            raise VerificationError(f"the checkpoint of size {cp.size} has {len(times_l)} of "
                                    f"the {quorum} required witness cosignatures: no witnessed "
                                    "time", hint="the trainer must keep a witnessed "
                                    "checkpoint (log with --wait-for-witnesses)")
        t = times_l[quorum - 1]
        return (t + 1) * 1000, (f"cosignature times of {quorum} of the pinned witnesses "
                                f"(k-th smallest: {t})")
    ts = cp.checkpoint.timestamp_ms
    if ts is None:
        raise VerificationError(f"the checkpoint of size {cp.size} carries no timestamp and "
                                "no witness policy is set: nothing attests when it existed",
                                hint="pin witnesses (--witness, --quorum) or run the log "
                                     "with --timestamps")
    return ts, "the log's timestamp line"


def trust(mode: str, basis: str | None = None) -> str:
    if mode == "drand":
        who = ("fewer than k of the pinned witnesses lie about time" if basis and
               basis.startswith("cosignature") else "the log operator's timestamp is honest "
               "(the operator does not collude with the trainer)")
        return f"fewer than the threshold of the drand chain's nodes collude, and {who}"
    return ("the log operator does not collude with the trainer: its Ed25519 signature "
            "can be re-signed with any nonce, so operator and trainer together can grind "
            "the seed undetectably")


def challenge_v2(run: str, randomness: bytes) -> bytes:
    return hashlib.sha256(CHALLENGE_V2 + bytes.fromhex(run) + randomness).digest()


def challenge_v1(run: str, root: bytes, size: int) -> bytes:
    return hashlib.sha256(CHALLENGE_V1 + bytes.fromhex(run) + root
                          + struct.pack(">Q", size)).digest()
