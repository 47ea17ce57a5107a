"""The log side of witnessing: send each new checkpoint to the configured witnesses and
publish only checkpoints that gathered a quorum of cosignatures (C2SP tlog-witness).

After every flush the sequencer calls :meth:`WitnessPublisher.notify`; one background
task then takes the log's latest checkpoint and asks every witness at once (one worker
thread each, keep-alive HTTP) to cosign it, with a consistency proof from the size that
witness last cosigned (it starts at 0; a 409 tells the real size and the request is
retried from there). The cosignatures that come back are verified against the pinned
witness keys, appended after the log's own signature, stored with the checkpoint
(:meth:`~ledger.log.Log.add_cosignatures`) and, once ``quorum`` witnesses have cosigned,
the checkpoint becomes the one ``GET /checkpoint`` serves. Flushes that happen during a
round are covered by the next round, which sends only the newest checkpoint.

Invariants:
* The published checkpoint was signed and stored by this log and cosigned by ``quorum``
  pinned witnesses; it only moves forward. At startup it is the newest stored checkpoint
  that meets the quorum (if any), so a restart keeps serving a witnessed checkpoint even
  while the witnesses are unreachable.
* Sequencing never waits for witnesses. A witness that fails (unreachable, an HTTP error,
  a refusal) is retried with exponential backoff (0.1 s doubling to 30 s); meanwhile the
  last published checkpoint stays published. A refusal for another root at a size it
  cosigned, or for a bad proof, means this log's history differs from what the witness
  saw before: it is reported as an error.
* Nothing ends the background task but :meth:`WitnessPublisher.stop`: an unexpected
  error is reported and the round retried.

Trusts: the witness keys the operator configured; a cosignature is kept only after it
verifies under one of them.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .cosignature import as_cosigner, count_cosignatures
from .errors import MalformedError, PotdError, PushbackError, SignatureError, UsageError
from .log import Log
from .note import (
    ALG_COSIGNATURE_V1,
    ALG_MLDSA44,
    Note,
    NoteSignature,
    SignedCheckpoint,
    Verifier,
    open_checkpoint,
)
from .peer import Peer
from .policy import Policy
from .witness import ProofError, RootMismatchError, SizeConflictError
from .witness_client import request_cosignature

REQUEST_TIMEOUT = 10.0  # seconds per add-checkpoint request, in total (ledger.peer)
MAX_BACKOFF = 30.0
STARTUP_SCAN = 65_536  # stored checkpoints searched (newest first) for a witnessed one
LATENCIES_KEPT = 10_000


def _warn(message: str) -> None:
    print(f"potd ledger serve: {message}", file=sys.stderr, flush=True)


class WitnessTarget:
    """One configured witness: its URL, its cosignature key, and what the log knows of it."""

    def __init__(self, url: str, key: Verifier) -> None:
        key = as_cosigner(key)  # an Ed25519 note key (0x01) is read as its 0x04 twin
        if key.alg not in (ALG_COSIGNATURE_V1, ALG_MLDSA44):
            raise UsageError(f"witness key {key.name}+{key.key_id:08x} is not a "
                             "cosignature key (alg 0x04 or 0x06)",
                             hint="use the key `potd witness keygen` printed (<name>.pub)")
        self.url = url.rstrip("/")
        self.key = key
        self.size = 0  # the size this witness last cosigned, as far as the log knows
        self.failures = 0
        self.retry_at = 0.0
        self.last_error = ""
        self.cosigned = 0  # cosignatures received since startup
        self.busy = False  # a request to this witness is in flight (one at a time)
        self.http = Peer(deadline=REQUEST_TIMEOUT)  # bounded: 64 KiB, 10 s per request

    @classmethod
    def parse(cls, spec: str) -> WitnessTarget:
        """``URL=VKEY``, split on the first ``=`` (the key's base64 may hold more); VKEY
        may also be a file holding the key."""
        url, sep, vkey = spec.partition("=")
        if not sep or not url.startswith(("http://", "https://")) or not vkey:
            raise UsageError(f"witness {spec[:80]!r} is not URL=VKEY",
                             hint="e.g. http://127.0.0.1:8081=witness.example/w1+1234abcd+BA...")
        try:
            if os.path.isfile(vkey):
                vkey = Path(vkey).read_text().strip()
            key = Verifier.parse(vkey)
        except (MalformedError, OSError) as e:
            raise UsageError(f"witness {url}: {getattr(e, 'message', e)}",
                             hint="VKEY is the witness's verifier key, or a file holding "
                                  "it") from None
        return cls(url, key)

    @property
    def name(self) -> str:
        return f"{self.key.name}+{self.key.key_id:08x}"

    def status(self) -> dict[str, Any]:
        return {"url": self.url, "key": self.name, "size": self.size,
                "cosigned": self.cosigned, "failures": self.failures,
                "last_error": self.last_error, "in_flight": self.busy}


def latest_witnessed(log: Log, keys: Sequence[Verifier], quorum: int,
                     scan: int = STARTUP_SCAN, policy: Policy | None = None
                     ) -> SignedCheckpoint | None:
    """The newest stored checkpoint with ``quorum`` valid cosignatures by ``keys`` (or
    meeting ``policy``), searching at most ``scan`` stored checkpoints back."""
    rows_of: Callable[[int, int], list[tuple[int, str, int]]] | None = getattr(
        log.store, "checkpoints", None)
    if rows_of is None:
        return None
    hi, span, seen = log.size + 1, 256, 0  # sizes below hi are left to search
    while hi > 0 and seen < scan:
        lo = max(0, hi - span)
        rows = [r for r in rows_of(lo, hi - lo) if r[0] < hi]
        for _, note, _ in reversed(rows):
            seen += 1
            if note.count("\n\u2014 ") <= quorum:  # the log's line + fewer than quorum
                continue
            try:
                cp = open_checkpoint(note, log.verifier)
                if _met(cp.note, keys, quorum, policy):
                    return cp
            except PotdError:
                continue
        hi, span = lo, span * 4
    return None


def _met(note: Note, keys: Sequence[Verifier], quorum: int, policy: Policy | None) -> bool:
    """Whether ``note``'s valid cosignatures meet the quorum (or the policy's rule)."""
    if policy is not None:
        return policy.satisfied(count_cosignatures(note, policy.witnesses))
    return len(count_cosignatures(note, keys)) >= quorum


def policy_targets(policy: Policy, targets: Sequence[WitnessTarget]) -> list[WitnessTarget]:
    """The witnesses to ask under ``policy``: ``targets`` (``--witness URL=VKEY``), else the
    policy's witnesses that have a URL. UsageError if they cannot meet its quorum."""
    if policy.quorum == b"none":
        raise UsageError("the policy's quorum is none: no cosignature is needed",
                         hint="serve without --policy, or give the policy a quorum")
    if not targets:
        targets = [WitnessTarget(url, v) for v, url in policy.urls.items()]
    ids = {(t.key.name, t.key.key_id) for t in targets}
    reachable = [v for v in policy.witnesses
                 if (as_cosigner(v).name, as_cosigner(v).key_id) in ids]
    if not policy.satisfied(reachable):
        raise UsageError(f"the {len(targets)} witnesses to ask cannot meet the policy's "
                         "quorum", hint="give each witness the policy needs as --witness "
                                        "URL=VKEY, or its URL on the policy's witness line")
    return list(targets)


class WitnessPublisher:
    """Collects cosignatures for the log's checkpoints and keeps the published one."""

    def __init__(self, log: Log | Callable[[], Log], witnesses: Sequence[WitnessTarget],
                 quorum: int, policy: Policy | None = None) -> None:
        """``policy`` (a C2SP tlog-policy) replaces ``quorum``: a checkpoint is published
        once its cosignatures meet the policy's quorum rule."""
        self.policy = policy
        if policy is not None:
            witnesses = policy_targets(policy, witnesses)
            quorum = len(witnesses)  # unused for the rule; keeps the bound checks simple
        if not witnesses:
            raise UsageError("a witness publisher needs at least one witness")
        if not 1 <= quorum <= len(witnesses):
            raise UsageError(f"witness quorum {quorum} must be between 1 and the number of "
                             f"witnesses ({len(witnesses)})")
        self._log: Callable[[], Log] = (lambda: log) if isinstance(log, Log) else log
        self.witnesses = list(witnesses)
        self.quorum = quorum
        self.keys = [w.key for w in self.witnesses]
        self.published: SignedCheckpoint | None = latest_witnessed(
            self._log(), self.keys, 0 if policy else quorum, policy=policy)
        self.rounds = 0  # rounds that published a checkpoint
        self.latencies: deque[float] = deque(maxlen=LATENCIES_KEPT)  # flush -> published
        self._flushed: deque[tuple[int, float]] = deque(maxlen=100_000)  # (size, monotonic)
        self._waiters: list[tuple[int, asyncio.Future[SignedCheckpoint]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # one thread per witness (one request each at most) and one to store cosignatures
        self._pool = ThreadPoolExecutor(len(self.witnesses) + 1, "potd-witness")

    # -- lifecycle (event loop) ------------------------------------------------------

    def _rule(self) -> str:
        if self.policy is not None:
            return f"the policy's quorum {self.policy.quorum.decode('utf-8', 'replace')!r}"
        return f"{self.quorum} of {len(self.witnesses)}"

    def start(self) -> None:
        self._wake.set()  # a first round at once: the latest checkpoint may be unwitnessed
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(PushbackError("the log is shutting down before a witnessed "
                                                "checkpoint covered this write",
                                                retry_after=5.0))
        self._waiters.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for w in self.witnesses:
            w.http.close()

    def notify(self, size: int) -> None:
        """A flush produced the checkpoint of ``size``: witness it soon."""
        self._flushed.append((size, time.monotonic()))
        self._wake.set()

    async def wait_for(self, size: int, timeout: float) -> SignedCheckpoint:
        """The published checkpoint once its size is at least ``size``; raises
        :class:`PushbackError` after ``timeout`` seconds."""
        cp = self.published
        if cp is not None and cp.size >= size:
            return cp
        fut: asyncio.Future[SignedCheckpoint] = asyncio.get_running_loop().create_future()
        self._waiters.append((size, fut))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise PushbackError(
                f"stored, but no checkpoint of size {size} or more met the witness quorum "
                f"({self._rule()}) within {timeout:.0f} s",
                retry_after=5.0, hint="the write is durable in the log; its witnessed "
                "checkpoint follows at GET /checkpoint once the witnesses answer") from None

    def stats(self) -> dict[str, Any]:
        """For ``GET /health``: the published size, each witness's state, and the time
        from a flush to the publication of a witnessed checkpoint covering it."""
        lat = sorted(self.latencies)

        def ms(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2) if lat else None

        cp = self.published
        return {"quorum": self.quorum, "rule": self._rule(),
                "published_size": cp.size if cp else None,
                "rounds": self.rounds,
                "publish_ms": {"count": len(lat), "p50": ms(0.5), "p99": ms(0.99),
                               "max": ms(1.0)},
                "witnesses": [w.status() for w in self.witnesses]}

    # -- the rounds --------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            cp = self._log().checkpoint()
            if self.published is not None and cp.size <= self.published.size:
                continue
            try:
                done = await self._round(cp)
            except Exception as e:  # storage trouble or a bug: keep serving, retry
                _warn(f"witnessing size {cp.size} failed: {e!r}")
                done = False
            if not done:
                now = time.monotonic()
                wait = min([w.retry_at for w in self.witnesses if w.retry_at > now] or [now])
                await asyncio.sleep(max(0.05, wait - now))
                self._wake.set()

    async def _round(self, cp: SignedCheckpoint) -> bool:
        """Ask every available witness to cosign ``cp``; publish as soon as ``quorum``
        cosigned. Slower witnesses are not waited for: their requests finish in the
        background (a witness has at most one request in flight, so a hung one is
        skipped by later rounds until its request times out)."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        todo = [w for w in self.witnesses if w.retry_at <= now and not w.busy]
        for w in todo:
            w.busy = True
        got: dict[int, list[NoteSignature]] = {}

        async def ask(i: int, w: WitnessTarget) -> None:
            got[i] = await loop.run_in_executor(self._pool, self._ask, w, cp)

        note = cp.note
        for fut in asyncio.as_completed([ask(self.witnesses.index(w), w) for w in todo]):
            await fut
            have = {(s.name, s.key_id) for s in cp.note.signatures}
            merged = list(cp.note.signatures)  # the log's own signature first, then the
            for i in sorted(got):  # cosignatures in the order the witnesses are configured
                for s in got[i]:
                    if (s.name, s.key_id) not in have:
                        have.add((s.name, s.key_id))
                        merged.append(s)
            note = Note(cp.note.text, tuple(merged))
            if _met(note, self.keys, self.quorum, self.policy):
                break
        else:
            return False
        signed = SignedCheckpoint(cp.checkpoint, note)
        log = self._log()
        await loop.run_in_executor(self._pool, log.add_cosignatures, signed)
        self._publish(signed)
        return True

    def _publish(self, cp: SignedCheckpoint) -> None:
        self.published = cp
        self.rounds += 1
        now = time.monotonic()
        while self._flushed and self._flushed[0][0] <= cp.size:
            self.latencies.append(now - self._flushed.popleft()[1])
        waiting = []
        for size, fut in self._waiters:
            if fut.done():
                continue
            if size <= cp.size:
                fut.set_result(cp)
            else:
                waiting.append((size, fut))
        self._waiters = waiting

    def _ask(self, w: WitnessTarget, cp: SignedCheckpoint) -> list[NoteSignature]:
        """One witness's cosignatures on ``cp`` (worker thread); [] if it did not cosign."""
        try:
            return self._ask_once(w, cp)
        finally:
            w.busy = False

    def _ask_once(self, w: WitnessTarget, cp: SignedCheckpoint) -> list[NoteSignature]:
        try:
            for _ in range(3):  # a 409 tells the witness's size: retry from there
                if w.size > cp.size:
                    raise UsageError(f"the witness has cosigned size {w.size}, beyond this "
                                     f"log's {cp.size}: another log signs with this key, or "
                                     "this log lost entries")
                proof = self._log().consistency_proof(w.size, cp.size)
                try:
                    sigs = request_cosignature(w.url, w.size, proof, cp.to_bytes(),
                                               witness_key=w.key, client=w.http)
                except SizeConflictError as e:
                    w.size = e.size
                    continue
                if w.failures:
                    _warn(f"witness {w.url} cosigns again (size {cp.size})")
                w.size, w.failures, w.last_error = cp.size, 0, ""
                w.cosigned += 1
                return sigs
            raise UsageError("the witness kept answering 409 (its size keeps changing)")
        except PotdError as e:
            self._failed(w, cp, e)
            return []

    def _failed(self, w: WitnessTarget, cp: SignedCheckpoint, e: Exception) -> None:
        w.failures += 1
        w.retry_at = time.monotonic() + min(MAX_BACKOFF, 0.1 * 2 ** (w.failures - 1))
        w.last_error = getattr(e, "message", str(e))
        if isinstance(e, (RootMismatchError, ProofError, SignatureError)):
            _warn(f"ERROR: witness {w.url} refused checkpoint size {cp.size}: {w.last_error}")
        elif w.failures == 1 or w.failures % 20 == 0:
            _warn(f"witness {w.url} did not cosign size {cp.size} ({w.failures} failures in "
                  f"a row; retrying with backoff): {w.last_error}")
