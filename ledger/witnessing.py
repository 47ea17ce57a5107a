"""The log side of witnessing: send each new checkpoint to the configured witnesses and
publish only checkpoints that gathered a quorum of cosignatures (C2SP tlog-witness).

A background task watches the log's size. When it grows, it sends the latest checkpoint
to every witness with a consistency proof from the size that witness last cosigned (a
409 answer tells the log that size; it retries from there), verifies the cosignatures it
gets, stores them with the checkpoint (:meth:`~ledger.log.Log.add_cosignatures`) and, once
``quorum`` witnesses have cosigned, makes it the checkpoint ``GET /checkpoint`` serves.
Sequencing never waits for witnesses: an unreachable witness only delays publication
(retried with backoff), and ``POST /add`` still answers after durability and
integration, with the log-signed checkpoint of its entries.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field

from .errors import MalformedError
from .log import Log
from .note import Note, NoteSignature, SignedCheckpoint, Verifier
from .witness import SizeConflictError, WitnessError, request_cosignature


@dataclass
class WitnessTarget:
    url: str
    key: Verifier
    size: int = 0  # the size this witness last cosigned, as far as the log knows
    failures: int = 0
    retry_at: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> WitnessTarget:
        """``URL=VKEY``, split on the first ``=`` (a key's base64 may hold more)."""
        url, sep, vkey = spec.partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            raise MalformedError(f"witness {spec[:80]!r} is not URL=VKEY",
                                 hint="e.g. http://127.0.0.1:8081=witness.example/w1+...")
        return cls(url.rstrip("/"), Verifier.parse(vkey))


@dataclass
class WitnessPublisher:
    log: Log
    witnesses: list[WitnessTarget]
    quorum: int
    interval: float = 0.01
    published: SignedCheckpoint | None = None
    latencies: list[float] = field(default_factory=list)  # flush -> published, seconds
    _task: asyncio.Task[None] | None = None
    _seen: dict[int, float] = field(default_factory=dict)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def current(self) -> SignedCheckpoint:
        """What ``GET /checkpoint`` serves: the newest checkpoint with a quorum."""
        if self.published is None:
            raise WitnessError("no checkpoint has been witnessed yet",
                               hint="check that the witnesses are running and know this log")
        return self.published

    async def _run(self) -> None:
        while True:
            cp = self.log.checkpoint()
            self._seen.setdefault(cp.size, time.monotonic())
            if self.published is None or cp.size > self.published.size:
                await self._witness(cp)
            await asyncio.sleep(self.interval)

    async def _witness(self, cp: SignedCheckpoint) -> None:
        now = time.monotonic()
        todo = [w for w in self.witnesses if w.retry_at <= now]
        results = await asyncio.gather(*(self._ask(w, cp) for w in todo))
        sigs = [s for r in results for s in r]
        if len({(s.name, s.key_id) for s in sigs}) < self.quorum:
            return
        own = [s for s in cp.note.signatures if (s.name, s.key_id) == (
            self.log.verifier.name, self.log.verifier.key_id)]
        signed = SignedCheckpoint(cp.checkpoint, Note(cp.note.text, tuple(own + sigs)))
        await asyncio.to_thread(self.log.add_cosignatures, signed)
        self.published = signed
        start = self._seen.pop(cp.size, now)
        self.latencies.append(time.monotonic() - start)
        for size in [s for s in self._seen if s < cp.size]:
            del self._seen[size]

    async def _ask(self, w: WitnessTarget, cp: SignedCheckpoint) -> list[NoteSignature]:
        for _ in range(2):  # a 409 tells us the witness's size: retry once from there
            proof = self.log.consistency_proof(w.size, cp.size) if 0 < w.size < cp.size else []
            try:
                sigs = await asyncio.to_thread(request_cosignature, w.url, w.size, proof,
                                               cp.to_bytes(), witness_key=w.key)
            except SizeConflictError as e:
                w.size = e.size
                continue
            except WitnessError as e:
                w.failures += 1
                w.retry_at = time.monotonic() + min(30.0, 0.1 * 2 ** w.failures)
                print(f"potd: witness {w.url} did not cosign size {cp.size}: {e}",
                      file=sys.stderr, flush=True)
                return []
            w.size, w.failures = cp.size, 0
            return sigs
        return []
