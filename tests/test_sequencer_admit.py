"""The sequencer's admission fast path (``Sequencer._admit_fast``) against its exact loop.

The fast path admits a submission whose statements are all steps or run.closes that
follow their runs correctly, and otherwise hands the submission to the exact loop, which
names the refusal. Both must give the same outcome for everything: the same replies
byte for byte, the same refusals (code, status, message, extra fields, position). These
tests replay the same seeded submissions - valid chains, and every way a statement can
fail admission (wrong prev, seq gaps and repeats, duplicates, closed runs, another
signer, a signer not allowed, unknown runs, several runs and several submissions of one
run in one flush) - through a real SQLite log twice, once with the fast path disabled,
and compare the run index each wrote (spans there, rows here).
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from typing import Any

import pytest

from ledger.log import Log
from ledger.merkle import leaf_hash
from ledger.note import Signer
from ledger.sequencer import Sequencer
from ledger.statement import build_statement, parse_statement, run_id

LOG_KEY = Signer.generate("potd.test/admit")
KEYS = [Signer.generate("trainer-a.test"), Signer.generate("trainer-b.test"),
        Signer.generate("stranger.test")]  # the last one is not allowed


class Chain:
    """A run's statements, built on demand; ``at(seq)`` with any prev for mutations."""

    def __init__(self, key: Signer, tag: int) -> None:
        self.key = key
        body = {"seed_commitment": os.urandom(32).hex(),
                "dataset": {"root": os.urandom(32).hex(), "size": 10}, "tag": tag}
        self.run = run_id(body)
        self.stmts = [build_statement("run.open", self.run, 0, body, key)]

    def upto(self, n: int) -> None:
        while len(self.stmts) <= n:
            self.stmts.append(self.step(len(self.stmts), leaf_hash(self.stmts[-1]).hex()))

    def step(self, seq: int, prev: str, key: Signer | None = None) -> bytes:
        return build_statement("step", self.run, seq, {
            "step": seq - 1, "prev": prev, "batch_root": os.urandom(32).hex()},
            key or self.key)

    def close(self, seq: int) -> bytes:
        self.upto(seq - 1)
        return build_statement("run.close", self.run, seq, {
            "prev": leaf_hash(self.stmts[seq - 1]).hex(), "steps": seq - 1}, self.key)


def scenario(seed: int) -> list[list[tuple[list[bytes], bool]]]:
    """Rounds of concurrent submissions (each a list of statements and whether it is a
    batch); every round shares one flush."""
    rnd = random.Random(seed)
    chains = [Chain(KEYS[i % 2], seed * 100 + i) for i in range(4)]
    stranger = Chain(KEYS[2], seed * 100 + 50)
    nxt = [0] * len(chains)  # the next seq each chain's honest writer sends
    rounds: list[list[tuple[list[bytes], bool]]] = []
    for _ in range(14):
        subs: list[tuple[list[bytes], bool]] = []
        for _ in range(rnd.randint(1, 3)):
            c = rnd.randrange(len(chains))
            ch, n = chains[c], rnd.randint(1, 40)
            ch.upto(nxt[c] + n + 2)
            sts = list(ch.stmts[nxt[c]:nxt[c] + n])
            fault = rnd.choice(["none"] * 6 + ["prev", "gap", "repeat", "signer", "stranger",
                                               "unknown", "close", "mix", "dup"])
            k = rnd.randrange(len(sts))
            s0 = nxt[c] + k
            advance = {c: n}  # a faulty submission is refused whole and advances nothing
            if fault == "prev" and s0 > 0:
                sts[k] = ch.step(s0, os.urandom(32).hex())
            elif fault == "gap" and len(sts) > 1:
                sts = sts[:k] + sts[k + 1:] if k < len(sts) - 1 else sts[:k - 1] + sts[k:]
            elif fault == "repeat" and nxt[c] > 1:
                sts = [ch.stmts[nxt[c] - 1], *sts]  # already logged: a duplicate
            elif fault == "dup" and nxt[c] > 1:  # (run, seq) taken by other bytes
                sts = [ch.step(nxt[c] - 1, leaf_hash(ch.stmts[nxt[c] - 2]).hex())]
            elif fault == "signer" and s0 > 0:
                sts[k] = ch.step(s0, leaf_hash(ch.stmts[s0 - 1]).hex(), KEYS[(c + 1) % 2])
            elif fault == "stranger":
                stranger.upto(3)
                sts = stranger.stmts[:3]
            elif fault == "unknown":
                sts = [Chain(KEYS[0], rnd.randrange(1 << 30)).step(1, os.urandom(32).hex())]
            elif fault == "close" and s0 > 0:
                sts = sts[:k] + [ch.close(s0)] + [ch.step(s0 + 1, os.urandom(32).hex())]
            elif fault == "mix":  # two runs interleaved in one batch, both in order
                o = (c + 1) % len(chains)
                chains[o].upto(nxt[o] + 2)
                sts = sts[:k] + chains[o].stmts[nxt[o]:nxt[o] + 2] + sts[k:]
                advance[o] = 2
            else:
                advance = {c: n}
            if fault not in ("none", "mix") and sts != ch.stmts[nxt[c]:nxt[c] + n]:
                advance = {}
            subs.append((sts, len(sts) > 1 or rnd.random() < 0.5))
            for i, m in advance.items():
                nxt[i] += m
        rounds.append(subs)
    return rounds


def outcome(r: Any) -> Any:
    if isinstance(r, bytes):
        return r
    return (type(r).__name__, getattr(r, "code", None), getattr(r, "status", None),
            getattr(r, "message", str(r)), getattr(r, "extra", None),
            getattr(r, "statement", None))


def replay(path: Path, rounds: list[list[tuple[list[bytes], bool]]], fast: bool) -> list[Any]:
    log = Log.create(str(path), LOG_KEY)
    store: Any = log.store
    store.ensure_indexes()
    for key in KEYS[:2]:
        store.set_signer_allowed(str(key.verifier), True)
    seq = Sequencer(log, flush_ms=200)
    out: list[Any] = []
    real = seq._admit_fast

    def admit_fast(*a: Any) -> list[bytes] | None:
        got = real(*a) if fast else None
        out.append(got is not None)  # how many submissions the fast path took
        return got

    seq._admit_fast = admit_fast  # type: ignore[method-assign]

    async def main() -> None:
        await seq.start()
        for subs in rounds:
            got = await asyncio.gather(*[seq.submit([parse_statement(s) for s in sts],
                                                    batch=batch) for sts, batch in subs],
                                       return_exceptions=True)
            out.extend(outcome(r) for r in got)
        await seq.close()

    try:
        asyncio.run(main())
        # the run index as stored (the fast path writes it as spans, the loop as rows)
        out.append(store.conn.execute("SELECT run, seq, idx FROM run_entries ORDER BY run, "
                                      "seq").fetchall())
    finally:
        store.close()
    took = sum(o is True for o in out)
    assert (took > 0) == fast, took
    return [o for o in out if not isinstance(o, bool)]


@pytest.mark.parametrize("seed", range(4))
def test_fast_admission_matches_the_exact_loop(tmp_path: Path, seed: int) -> None:
    rounds = scenario(seed)
    fast = replay(tmp_path / "fast.db", rounds, True)
    exact = replay(tmp_path / "exact.db", rounds, False)
    assert fast == exact
    assert len(fast[-1]) > 100  # the run index, the same in both
    kinds = {o if isinstance(o, bytes) else o[1] for o in fast[:-1]}
    assert any(isinstance(k, bytes) for k in kinds)  # something was admitted
    refused = {k for k in kinds if not isinstance(k, bytes)}
    assert len(refused) >= 3, refused  # and refused in several ways


def test_every_refusal_kind_is_exercised(tmp_path: Path) -> None:
    seen: set[str] = set()
    for seed in range(4):
        for o in replay(tmp_path / f"s{seed}.db", scenario(seed), True)[:-1]:
            if not isinstance(o, bytes):
                seen.add(o[1])
    assert {"wrong_prev", "wrong_seq", "duplicate", "wrong_signer", "signer_not_allowed",
            "unknown_run", "run_closed"} <= seen, seen
