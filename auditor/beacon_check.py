"""The auditor's side of the seed beacon and the public challenge (see prover.beacon).

drand mode: round ``R`` committed in ``run.open`` is verified under the chain info the
**auditor** pins (``--beacon-chain``, or a known public chain by its hash) — never under
chain info the trainer or a beacon URL supplies — and must have been published after
the time at which a checkpoint containing ``run.open`` is attested to exist (witness
cosignatures under the auditor's witness policy, else the log's timestamp). The seed
then depends on no log signature, so an operator re-signing checkpoints changes nothing.

Trusts: the pinned chain info and log key; the drand threshold; for time, fewer than
``quorum`` of the pinned witnesses lying, or (without witnesses) the log operator.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ledger.beacon_client import BeaconClient
from ledger.drand import ChainInfo, Round, known_chain, verify_round
from ledger.errors import PotdError
from ledger.merkle import check_tree, node_hash
from ledger.note import SignedCheckpoint, open_checkpoint
from ledger.statement import Statement
from prover.beacon import CHALLENGE_FILE, attested_ms, challenge_v1, challenge_v2, trust
from prover.evidence import EvidenceSource

if TYPE_CHECKING:
    from .audit import Audit


class BeaconFail(Exception):
    def __init__(self, status: str, message: str, **evidence: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.evidence = status, message, evidence


def pinned_chain(a: Audit, field: object, what: str) -> tuple[ChainInfo, int]:
    """The chain info the auditor trusts for a committed ``{"type": "drand", "chain",
    "round"}`` field, and the committed round."""
    if not isinstance(field, dict) or field.get("type") != "drand" or not isinstance(
            field.get("chain"), str) or not isinstance(field.get("round"), int) or isinstance(
            field.get("round"), bool) or field["round"] < 1:
        raise BeaconFail("fail", f"{what} is not a drand beacon commitment "
                         "({type: drand, chain: <hash>, round: <n >= 1>})")
    h, r = str(field["chain"]), int(field["round"])
    pinned = a.opts.beacon_chain
    if pinned is not None and pinned.hash_hex != h:
        raise BeaconFail("fail", f"{what} names drand chain {h[:16]}…, not the pinned chain "
                         f"{pinned.hash_hex[:16]}…", committed=h, pinned=pinned.hash_hex)
    info = pinned or known_chain(h)
    if info is None:
        raise BeaconFail("skip", f"{what} names drand chain {h[:16]}…, which is neither "
                         "pinned nor a known public chain: pin its info with --beacon-chain "
                         "FILE to verify the seed", chain=h)
    return info, r


def _round(a: Audit, info: ChainInfo, r: int, carried: object, where: str) -> Round:
    rnd: Round | None = None
    if carried is not None:
        try:
            rnd = Round.from_json(carried if isinstance(carried, dict) else {})
        except PotdError as e:
            raise BeaconFail("fail", f"{where}: malformed drand round: {e.message}") from None
    elif a.opts.beacon_url:
        bc = BeaconClient(a.opts.beacon_url, info)
        try:
            rnd = bc.get_round(r)
        except PotdError as e:
            raise BeaconFail("skip", f"cannot fetch drand round {r}: {e.message}") from None
        finally:
            bc.close()
    if rnd is None:
        raise BeaconFail("fail", f"{where} carries no drand round {r} and no --beacon could "
                         "supply it")
    try:
        verify_round(info, rnd, r)
    except PotdError as e:
        raise BeaconFail("fail", f"drand round {r} rejected: {e.message}") from None
    return rnd


def _attested_before(a: Audit, text: object, index: int, cp: SignedCheckpoint,
                     info: ChainInfo, r: int, what: str) -> tuple[int, str]:
    """Check the checkpoint ``text`` covers log index ``index``, is consistent with the
    audited checkpoint ``cp`` and is attested before round ``r``'s publication."""
    if not isinstance(text, str):
        raise BeaconFail("fail", f"no checkpoint attests when {what} existed")
    try:
        old = open_checkpoint(text, a.client.log_key, origin=cp.origin)  # the audited log's
        if old.size <= index or old.size > cp.size:
            raise BeaconFail("fail", f"the checkpoint attesting {what} has size {old.size}: "
                             f"it must cover index {index} and not exceed {cp.size}")
        check_tree(a.client.consistency_proof(old, cp), cp.size, cp.root, old.size, old.root)
        t, basis = attested_ms(old, a.client.witnesses, a.client.quorum, a.client.policy)
    except PotdError as e:
        raise BeaconFail("fail", f"the checkpoint attesting {what} is rejected: "
                         f"{e.message}") from None
    due = info.round_time(r) * 1000
    if t >= due:
        raise BeaconFail("fail", f"drand round {r} was published at {due // 1000} (unix s), "
                         f"not after {what} is attested to exist ({t} ms, {basis}): its "
                         "randomness was already known when the run committed to it",
                         round=r, round_time=due // 1000, attested_ms=t, basis=basis)
    return t, basis


def drand_seed_beacon(a: Audit, o: Statement, step0: Statement | None, open_index: int,
                      cp: SignedCheckpoint) -> tuple[bytes, dict[str, Any]]:
    """``randomness(R)`` for a drand-mode run, with the evidence for the report."""
    info, r = pinned_chain(a, o.body.get("beacon"), "run.open's beacon")
    body = step0.body if step0 is not None else {}
    rnd = _round(a, info, r, body.get("beacon_round"), "the first step")
    t, basis = _attested_before(a, body.get("open_checkpoint"), open_index, cp, info, r,
                                "run.open")
    return rnd.randomness, {
        "mode": "drand", "chain": info.hash_hex, "scheme": info.scheme, "round": r,
        "round_time": info.round_time(r), "open_attested_ms": t, "time_basis": basis,
        "beacon": rnd.randomness.hex(),
        "trust": trust("drand", basis) + "; no log signature enters the seed"}


def prefix_root(leaf_hashes: list[bytes], n: int) -> bytes:
    """RFC 6962 MTH of the first ``n`` leaf hashes (n >= 1)."""
    level = leaf_hashes[:n]
    while len(level) > 1:  # pairing left to right, carrying an odd last node up: MTH
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def public_challenge(a: Audit, run: str, close: Statement, close_index: int,
                     leaf_hashes: list[bytes], cp: SignedCheckpoint
                     ) -> tuple[bytes | None, dict[str, Any]]:
    """The protocol-fixed challenge seed (None if it cannot be trusted), and its record."""
    field = close.body.get("challenge_beacon")
    if field is None:
        n = close_index + 1
        root = prefix_root(leaf_hashes, n)
        return challenge_v1(run, root, n), {
            "kind": "public", "mode": "log", "tree_size": n, "root": root.hex(),
            "trust": "the trainer cannot change it after run.close is logged, but can "
                     "predict and grind it before (it writes run.close; in a quiet log it "
                     "knows the tree)"}
    try:
        info, r = pinned_chain(a, field, "run.close's challenge_beacon")
        try:
            ev = json.loads(EvidenceSource(a.opts.evidence).read(CHALLENGE_FILE))
        except (PotdError, json.JSONDecodeError, UnicodeDecodeError):
            ev = {}
        ev = ev if isinstance(ev, dict) else {}
        rnd = _round(a, info, r, ev.get("round"), CHALLENGE_FILE)
        t, basis = _attested_before(a, ev.get("close_checkpoint"), close_index, cp, info, r,
                                    "run.close")
    except BeaconFail as e:
        a.check("challenge", "fail" if e.status == "fail" else "skip", e.message, **e.evidence)
        if e.status != "fail":
            a.report["inconclusive"] = True
        return None, {"kind": "public", "mode": "drand", "rejected": e.message}
    a.check("challenge", "pass", f"public challenge from drand round {r}, published after "
            f"run.close is attested to exist ({basis})", round=r)
    return challenge_v2(run, rnd.randomness), {
        "kind": "public", "mode": "drand", "chain": info.hash_hex, "round": r,
        "close_attested_ms": t, "time_basis": basis, "trust": trust("drand", basis)}
