"""The log server's write path: pool concurrent submissions, flush them as one batch.

A submission is one ``POST /add`` (one statement) or one ``POST /add-batch`` (several,
all-or-nothing). Submissions wait in a pool; one flush at a time takes the pool (up to
``max_batch`` statements, never splitting a submission) and, in a worker thread:

1. verifies each statement's trainer signature (unless the caller did);
2. checks its signer against the operator's allow-list (unless open registration);
3. checks the run's state in order, so a ``run.open`` and its first steps may share a
   flush: ``seq`` is the next one, ``body.prev`` is the run's last leaf hash, the signer
   is the run's signer, the run is not closed;
4. appends every admitted statement with ``Log.append`` - one SQLite transaction with
   the run-index rows and one signed checkpoint for the whole flush;
5. builds each reply (index, leaf hash, the new checkpoint, an inclusion proof at its
   size, and for a ``run.open`` the beacon checkpoint of size index + 1).

A rejected submission does not affect the others in its flush; a rejected statement
rejects its whole ``add-batch``. Nothing is answered 200 before the commit returns, so an
acknowledged statement survives a crash. If the commit fails, every submission of the
flush gets a storage error and nothing of it is stored; the sequencer then reloads its
state from the database. There is no merge delay: a flush starts as soon as the previous
one ends, after gathering the submissions whose requests are already being read (for at
most ``flush_ms``). The pool is bounded: past ``max_pending`` statements, ``submit``
raises :class:`~ledger.errors.PushbackError`.

Run states are cached in memory (bounded) and otherwise loaded from the run index; only
the flush thread touches them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sys
import time
from binascii import b2a_base64
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast

from . import statement_native
from .errors import MalformedError, PotdError, PushbackError, SignatureError, StorageError
from .log import Appended, Log
from .merkle import native
from .statement import Statement, parse_statement, verify_statement_signature
from .storage import IndexedStore
from .storage.base import RunSpan


class Rejected(PotdError):
    """A well-formed, correctly signed statement that the log's state does not admit.

    ``status`` is the HTTP status (403 or 409); ``extra`` holds fields for the client,
    such as the index of an identical statement already in the log.
    """

    def __init__(self, message: str, *, code: str, status: int, hint: str | None = None,
                 **extra: Any) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.status = status
        self.extra = extra


def _python_replies(head: bytes, proofs: Sequence[bytes], leaves: Sequence[bytes], base: int,
                    start: int, end: int) -> bytes:
    """Replies of records ``start..end-1`` of a flush, joined (as the C helper's)."""
    return b",".join(head + proofs[k] + b'],"index":%d,"leaf_hash":"%s"}' % (
        base + k, b2a_base64(leaves[k], newline=False)) for k in range(start, end))


_replies: Callable[[bytes, Sequence[bytes], Sequence[bytes], int, int, int], bytes] = (
    native.replies if native is not None else _python_replies)


def _short(run: str) -> str:
    return run[:16] + "..."


@dataclass(slots=True)
class RunState:
    """What the log needs to know about a run to admit its next statement."""

    signer: str
    next_seq: int
    last_leaf: bytes
    closed: bool


@dataclass
class _Submission:
    statements: list[Statement]
    batch: bool
    future: asyncio.Future[bytes]
    error: PotdError | None = None
    first: int = -1
    states: dict[str, RunState] = field(default_factory=dict)
    verified: bool = False
    leaves: list[bytes] = field(default_factory=list)  # leaf hashes, once admitted
    no_open: bool = False  # admitted by the fast path: no run.open among the statements


def verify_signatures(statements: Sequence[Statement], batch: bool, start: int = 0) -> None:
    """Verify each trainer signature; in a batch, the error names the statement
    (``start`` is the position of ``statements[0]`` in its batch). With the native
    extension the checks run in C without the GIL; a statement that fails there is
    checked again in Python, which raises the error (and is the reference: should it
    pass, checking goes on with the next statement)."""
    i, n = 0, len(statements)
    while i < n:
        bad = statement_native.first_bad_signature(statements, i)
        if bad is None:  # no extension: Python checks the rest
            bad = i
        if bad >= n:
            return
        try:
            verify_statement_signature(statements[bad])
        except SignatureError as e:
            if batch:
                k = start + bad
                e.message = f"statement #{k}: {e.message}"
                e.args = (e.message,)
                setattr(e, "statement", k)  # noqa: B010
            raise
        i = bad + 1


class Sequencer:
    """Pools submissions and flushes them through one :class:`~ledger.log.Log`."""

    def __init__(self, log: Log, *, open_registration: bool = False, flush_ms: float = 50.0,
                 max_batch: int = 10_000, max_pending: int = 50_000,
                 run_cache: int = 100_000) -> None:
        if not hasattr(log.store, "run_last"):
            raise StorageError("the log server needs a store with run and signer indexes",
                               hint="serve a log made by `potd ledger init`")
        self.log = log
        self.open_registration = open_registration
        self.flush_s = max(0.0, flush_ms) / 1000
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._runs: OrderedDict[str, RunState] = OrderedDict()
        self._run_cache = run_cache
        self._pool: list[_Submission] = []
        self._pending = 0  # statements in the pool
        self._arriving = 0  # requests being read that will submit
        self._wake = asyncio.Event()
        self._arrived = asyncio.Event()  # set whenever a request stops arriving
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "potd-flush")
        self.flushes = 0  # successful flushes
        self.flushed = 0  # statements they stored
        self.flush_seconds = 0.0  # time spent in flushes (the worker thread)
        # called on the event loop with the tree size after each flush (the witnessing)
        self.on_flush: Callable[[int], None] | None = None
        # called on the event loop after each committed round: (statements, seconds)
        self.on_round: Callable[[int, float], None] | None = None
        # the storage failure of the last commit, until a commit (or a probe) succeeds
        self.storage_error: StorageError | None = None
        self.probe_s = 1.0  # while failing and idle: probe the storage this often
        # shared store: while idle, catch up with other frontends' commits this often
        self.poll_s: float | None = 0.2 if getattr(log.store, "shared", False) else None

    @property
    def pending(self) -> int:
        return self._pending

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop taking submissions, flush everything pooled, stop the worker."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Mark a request whose body is being read: a flush about to start waits for it
        (at most ``flush_ms``) so that concurrent requests share one commit."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1
            self._arrived.set()

    async def submit(self, statements: Sequence[Statement], *, batch: bool,
                     verified: bool = False) -> bytes:
        """Pool ``statements``; return the JSON reply once they are stored and signed.

        With ``verified=True`` the caller has already checked their signatures (the
        server does, on the event loop, to keep the flush thread short)."""
        n = len(statements)
        if self._closing:
            raise PushbackError("the log is shutting down", retry_after=5.0,
                                hint="retry in a few seconds, against the restarted log")
        if self._pending and self._pending + n > self.max_pending:
            raise PushbackError(f"{self._pending} statements are waiting to be sequenced; "
                                f"the limit is {self.max_pending}", retry_after=1.0)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pool.append(_Submission(list(statements), batch, fut, verified=verified))
        self._pending += n
        self._wake.set()
        return await fut

    # -- the flush loop (event loop side) ------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.storage_error is None and self.poll_s is None:
                await self._wake.wait()
            elif self.storage_error is None:  # shared store: follow the other frontends
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
                except TimeoutError:
                    await loop.run_in_executor(self._executor, self.sync)
                    continue
            else:  # failing: probe now and then, so /health turns ok by itself
                try:
                    await asyncio.wait_for(self._wake.wait(), self.probe_s)
                except TimeoutError:
                    await loop.run_in_executor(self._executor, self._probe)
                    continue
            self._wake.clear()
            if not self._pool:
                if self._closing:
                    return
                continue
            deadline = time.monotonic() + self.flush_s
            while self._arriving and self._pending < self.max_batch and not self._closing:
                left = deadline - time.monotonic()  # woken when a request stops arriving
                if left <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
            take: list[_Submission] = []
            total = 0
            while self._pool and (not take or total + len(self._pool[0].statements)
                                  <= self.max_batch):
                sub = self._pool.pop(0)
                take.append(sub)
                total += len(sub.statements)
            self._pending -= total
            t0 = time.perf_counter()
            try:
                replies = await loop.run_in_executor(self._executor, self._flush, take)
            except BaseException as e:  # a bug: answer everyone, keep serving
                err = e if isinstance(e, PotdError) else PotdError(f"internal error: {e!r}")
                replies = [err] * len(take)
            took = time.perf_counter() - t0
            self.flush_seconds += took
            stored = sum(len(sub.statements) for sub, r in zip(take, replies, strict=True)
                         if isinstance(r, bytes))
            if self.on_round is not None and stored:
                self.on_round(stored, took)
            if self.on_flush is not None:
                self.on_flush(self.log.size)
            for sub, reply in zip(take, replies, strict=True):
                if sub.future.done():
                    continue
                if isinstance(reply, bytes):
                    sub.future.set_result(reply)
                else:
                    sub.future.set_exception(reply)
            if self._pool or self._closing:
                self._wake.set()

    # -- one flush (worker thread) ----------------------------------------------------

    def _flush(self, subs: list[_Submission]) -> list[bytes | PotdError]:
        """Verify, admit and append one flush; reply once its commit has returned.

        On a shared store (PostgreSQL, several frontends) the whole round holds the
        database's coordination row: it starts from the tree other frontends committed
        (forgetting cached run states if they wrote) and commits at the end."""
        writing = getattr(self.log.store, "writing", None)
        try:
            if writing is None:
                done = self._admit_and_append(subs)
            else:
                with writing() as stored:
                    if stored != self.log.size:
                        self._runs.clear()
                        self.log.refresh()
                    done = self._admit_and_append(subs)
        except StorageError as e:
            return self._failed_commit(subs, e)
        if isinstance(done, list):
            return done
        appended, flush_states = done
        if self.storage_error is not None:
            self._recovered()
        for run, state in flush_states.items():
            self._remember(run, state)
        self.flushes += 1
        self.flushed += len(appended.leaf_hashes)
        return self._replies(subs, appended)

    def sync(self) -> None:
        """(Flush thread, idle, shared store) catch up with other frontends' commits, so
        reads here are never far behind; forget run states if the tree grew."""
        try:
            if self.log.refresh():
                self._runs.clear()
        except StorageError as e:
            self._failed(e)

    def _admit_and_append(self, subs: list[_Submission]
                          ) -> list[bytes | PotdError] | tuple[Appended, dict[str, RunState]]:
        for sub in subs:
            if not sub.verified:
                try:
                    verify_signatures(sub.statements, sub.batch)
                except SignatureError as e:
                    sub.error = e
        allowed: set[str] = set()
        if not self.open_registration:
            allowed = self._store().allowed_signers(
                {st.signer for sub in subs if sub.error is None for st in sub.statements})
        flush_states: dict[str, RunState] = {}
        entries: list[bytes] = []
        rows: list[tuple[str, int, int]] = []
        spans: list[RunSpan] = []  # run-index rows of the fast path's submissions
        leaves: list[bytes] = []  # computed once, by _admit
        base = self.log.size
        check = not self.open_registration
        admit = self._admit
        for sub in subs:
            if sub.error is not None:
                continue
            sts = sub.statements
            local: dict[str, RunState] = {}
            sub_spans: list[RunSpan] = []
            fast = self._admit_fast(sts, allowed, check, local, flush_states, sub_spans)
            if fast is not None:
                sub.leaves = got = fast
                sub.no_open = True
            else:  # something to refuse, or a run.open: the exact loop below decides
                local = {}
                sub.leaves = got = []
            try:
                for k, st in enumerate(sts if fast is None else ()):
                    try:
                        if check and st.signer not in allowed:
                            raise Rejected(f"signer {st.signer} is not allowed to write to "
                                           "this log", code="signer_not_allowed", status=403,
                                           hint="ask the log operator to run `potd ledger "
                                                "allow` with this verifier key")
                        run = st.run
                        state = local.get(run) or flush_states.get(run) or self._state(run)
                        local[run] = now = admit(st, state)
                        got.append(now.last_leaf)
                    except PotdError as e:
                        if sub.batch:
                            e.message = f"statement #{k}: {e.message}"
                            e.args = (e.message,)
                            setattr(e, "statement", k)  # noqa: B010
                        raise
            except PotdError as e:
                sub.error = e
                continue
            flush_states.update(local)
            sub.first = first = base + len(entries)
            entries.extend([st.raw for st in sts])
            if fast is not None:
                spans.extend([(run, seq0, first + pos, n) for run, seq0, pos, n in sub_spans])
            else:
                rows.extend(zip([st.run for st in sts], [st.seq for st in sts],
                                range(first, first + len(sts))))
            leaves.extend(got)
        if not entries:
            return [s.error if s.error is not None else PotdError("nothing to do") for s in subs]
        # StorageError: see _flush
        appended = self.log.append(entries, run_rows=rows, run_spans=spans, leaves=leaves)
        return appended, flush_states

    def _failed_commit(self, subs: list[_Submission], e: StorageError
                       ) -> list[bytes | PotdError]:
        self._failed(e)
        self._recover()
        return [s.error if s.error is not None else e for s in subs]

    def _replies(self, subs: list[_Submission], appended: Appended
                 ) -> list[bytes | PotdError]:
        log = self.log
        cp = appended.checkpoint
        base, leaves = appended.first_index, appended.leaf_hashes
        # the replies are built as bytes: the proofs of the flush's consecutive records
        # share their upper parts (built once, by the C helper where it is built), and
        # the part every reply shares (the checkpoint) is encoded once
        proofs = log.appended_proofs_quoted(appended)
        head = b'{"checkpoint":' + json.dumps(str(cp)).encode() + b',"inclusion_proof":['
        out: list[bytes | PotdError] = []
        for sub in subs:
            if sub.error is not None:
                out.append(sub.error)
                continue
            k0, n = sub.first - base, len(sub.statements)
            parts = []
            at = 0  # a run.open's reply also carries its beacon checkpoint
            opens = () if sub.no_open else (
                i for i, st in enumerate(sub.statements) if st.kind == "run.open")
            for i in [*opens, n]:
                if at < i:
                    parts.append(_replies(head, proofs, leaves, base, k0 + at, k0 + i))
                if i < n:
                    k = k0 + i
                    beacon = json.dumps(str(log.checkpoint_at(base + k + 1))).encode()
                    parts.append(b'{"beacon_checkpoint":' + beacon + b"," + head[1:]
                                 + _replies(head, proofs, leaves, base, k, k + 1)[len(head):])
                at = i + 1
            body = b",".join(parts)  # one part: no copy
            # a batch's reply is about 1 KB a statement: bracket it in one copy, not two
            out.append(b"".join((b"[", body, b"]")) if sub.batch else body)
        return out

    def _admit_fast(self, sts: Sequence[Statement], allowed: set[str], check: bool,
                    local: dict[str, RunState], flush_states: dict[str, RunState],
                    spans: list[RunSpan] | None = None) -> list[bytes] | None:
        """The leaf hashes of ``sts`` if every one is a step or run.close that
        :meth:`_admit` admits (filling ``local`` with the runs' new states and ``spans``
        with their run-index rows as ``(run, first seq, first position, count)``), else
        None - then the exact loop, which names the refusal, runs instead and what was
        filled must be dropped.

        The checks are :meth:`_admit`'s for these kinds, per run of consecutive
        statements of one run: the signer is the run's (and allowed), the run is open,
        each seq is the next one and each body.prev is the previous leaf hash."""
        got: list[bytes] = []
        add = got.append
        cur: str | None = None
        signer, nxt, last, closed = "", 0, b"", False
        seq0 = pos0 = 0
        for pos, st in enumerate(sts):
            run = st.run
            if run != cur:
                if cur is not None:
                    local[cur] = RunState(signer, nxt, last, closed)
                    if spans is not None:
                        spans.append((cur, seq0, pos0, nxt - seq0))
                try:
                    state = local.get(run) or flush_states.get(run) or self._state(run)
                except PotdError:  # the exact loop reports it, naming the statement
                    return None
                if state is None or (check and state.signer not in allowed):
                    return None
                cur, signer, nxt, last, closed = (run, state.signer, state.next_seq,
                                                  state.last_leaf, state.closed)
                seq0, pos0 = nxt, pos
            kind = st.kind
            # _prev and _leaf: what the native parser attaches (else the slower accessors)
            if (closed or st.seq != nxt or st.signer != signer or kind == "run.open"
                    or (getattr(st, "_prev", None) or st.prev) != last.hex()):
                return None
            last = getattr(st, "_leaf", None) or st.leaf_hash()
            add(last)
            nxt += 1
            closed = kind == "run.close"
        if cur is not None:
            local[cur] = RunState(signer, nxt, last, closed)
            if spans is not None:
                spans.append((cur, seq0, pos0, nxt - seq0))
        return got

    def _admit(self, st: Statement, state: RunState | None) -> RunState:
        """The run's state after ``st``, or Rejected (403/409) if ``st`` may not follow."""
        if st.kind == "run.open":
            if state is not None:
                self._duplicate(st, f"run {_short(st.run)} is already open", "run_exists")
            return RunState(st.signer, 1, st.leaf_hash(), False)
        if state is None:
            raise Rejected(f"run {_short(st.run)} has no run.open in this log",
                           code="unknown_run", status=409,
                           hint="submit the run's run.open (seq 0) first")
        if st.signer != state.signer:
            raise Rejected(f"run {_short(st.run)} was opened by another signer; statement "
                           f"signed by {st.signer}", code="wrong_signer", status=403,
                           hint="sign every statement of a run with the key of its run.open")
        seq = st.seq
        if seq != state.next_seq or state.closed:
            self._out_of_order(st, state)
        last = state.last_leaf.hex()
        if st.prev != last:
            raise Rejected(f"run {_short(st.run)}: body.prev {st.prev} is not the leaf hash "
                           f"of seq {seq - 1} ({last})", code="wrong_prev",
                           status=409, expected_prev=last,
                           hint="prev = hex SHA-256(0x00 || previous statement's bytes)")
        return RunState(state.signer, seq + 1, st.leaf_hash(), st.kind == "run.close")

    def _out_of_order(self, st: Statement, state: RunState) -> NoReturn:
        """The 409 for a seq that is not the run's next one, or a closed run."""
        run = _short(st.run)
        if st.seq < state.next_seq:
            self._duplicate(st, f"run {run} already has seq {st.seq}; the next is "
                                f"{state.next_seq}")
        if state.closed:
            raise Rejected(f"run {run} is closed", code="run_closed", status=409,
                           hint="a run ends with its run.close; open a new run")
        raise Rejected(f"run {run}: seq {st.seq} is not the next one ({state.next_seq})",
                       code="wrong_seq", status=409, expected_seq=state.next_seq,
                       hint="submit a run's statements in order, without gaps")

    def _store(self) -> IndexedStore:
        return cast(IndexedStore, self.log.store)

    def _duplicate(self, st: Statement, message: str, code: str = "wrong_seq") -> NoReturn:
        """Raise the 409 for a (run, seq) that is taken, naming the index if identical."""
        idx = self._store().run_index(st.run, st.seq)
        if idx is not None and self.log.entries(idx, idx + 1)[0] == st.raw:
            raise Rejected(f"this statement is already in the log at index {idx}",
                           code="duplicate", status=409, index=idx,
                           hint="nothing to do: fetch its proof with GET /proof/inclusion")
        raise Rejected(message, code=code, status=409,
                       hint="each (run, seq) is logged once; continue with the next seq")

    def _state(self, run: str) -> RunState | None:
        state = self._runs.get(run)
        if state is not None:
            self._runs.move_to_end(run)
            return state
        store = self._store()
        last = store.run_last(run)
        if last is None:
            return None
        seq, idx = last
        tail = parse_statement(self.log.entries(idx, idx + 1)[0])
        if seq == 0:
            signer = tail.signer
        else:
            first = store.run_index(run, 0)
            if first is None:
                raise MalformedError(f"run index of {run} has no run.open")
            signer = parse_statement(self.log.entries(first, first + 1)[0]).signer
        state = RunState(signer, seq + 1, tail.leaf_hash(), tail.kind == "run.close")
        self._remember(run, state)
        return state

    def _remember(self, run: str, state: RunState) -> None:
        self._runs[run] = state
        self._runs.move_to_end(run)
        while len(self._runs) > self._run_cache:
            self._runs.popitem(last=False)

    def _failed(self, e: StorageError) -> None:
        if self.storage_error is None or self.storage_error.message != e.message:
            print(f"potd ledger serve: storage failure, writes answered 503: {e.message}",
                  file=sys.stderr, flush=True)
        self.storage_error = e

    def _recovered(self) -> None:
        print("potd ledger serve: storage recovered, writes accepted again",
              file=sys.stderr, flush=True)
        self.storage_error = None

    def _probe(self) -> None:
        """(Flush thread, while failing and idle) try a small write; clear the failure if
        it commits, then reload the tree (nothing of a failed commit was kept)."""
        probe = getattr(self.log.store, "probe_write", None)
        if probe is None:
            return
        try:
            probe()
        except StorageError as e:
            self._failed(e)
            return
        self._recover()
        self._recovered()

    def _recover(self) -> None:
        """After a failed commit: reload the tree and forget cached run states."""
        self._runs.clear()
        try:
            self.log = Log(self.log.store, self.log.signer, timestamps=self.log.timestamps,
                           also_sign=self.log.also_sign)
        except PotdError:
            pass  # the next flush fails again and reports it
