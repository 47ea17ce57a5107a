"""A C2SP tlog-witness: cosign a log's checkpoint only if it extends the last one cosigned.

Protocol (c2sp.org/tlog-witness, ``POST <prefix>/add-checkpoint``): the body is
``old <size>\\n``, up to 63 base64 consistency-proof lines, a blank line, then the signed
checkpoint. Answers, in the spec's order of checks:

  400  malformed body, or ``old`` larger than the checkpoint size
  404  the checkpoint's origin is not a known log
  403  no signature by a key pinned for that origin verifies
  409  ``old`` is not the size last cosigned (0 for a fresh origin): body ``<size>\\n``,
       ``Content-Type: text/x.tlog.size``
  422  a size-0 checkpoint whose root is not the empty tree's; a consistency proof
       from the cosigned tree to the new one that does not verify, or a proof with old
       size 0; same size as the cosigned tree but another root (a fork)

Status codes as at C2SP tlog-witness HEAD (2026-07, C2SP commit 95978ca); earlier
versions of the text answered 409 to a fork. ``GET /<hex SHA-256 of origin>/checkpoint``
(the spec's monitoring API) serves the checkpoint last cosigned with this witness's
cosignature.
  200  one ``— <name> <base64>`` cosignature line (c2sp.org/tlog-cosignature, v1)

Invariants:
* For each origin the database holds the latest cosigned (size, root, note). It only moves
  forward along a verified consistency proof, by a compare-and-swap
  (``UPDATE ... WHERE origin=? AND size=? AND root=?`` inside ``BEGIN IMMEDIATE``), so two
  requests racing from one state, in threads or processes, cannot both advance it, and a
  slow request can never roll it back (the race described at the end of the spec).
* The new state is committed (WAL, ``synchronous=FULL``) before the cosignature leaves.
* A rejected request whose log signature verified (422, fork) is kept as evidence.

Trusts: the log keys the operator pinned (``add_log``); nothing in a request. The witness
private key never appears in a log line, ``repr`` or error.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .cosignature import as_cosigning_key, cosign
from .errors import (
    ConsistencyError,
    MalformedError,
    PotdError,
    SignatureError,
    StorageError,
    UsageError,
)
from .merkle import EMPTY_ROOT, HASH_SIZE, check_tree
from .netutil import BodyError, listen, read_body
from .note import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    ALG_MLDSA44,
    Checkpoint,
    Note,
    SignedCheckpoint,
    Signer,
    Verifier,
    b64decode,
    b64encode,
    open_note,
)

log = logging.getLogger("potd.witness")

MAX_PROOF_LINES = 63
MAX_BODY = 256 * 1024  # 63 proof lines + a note with at most 100 signatures fit easily
MAX_SIZE = 2**63 - 1  # SQLite INTEGER; Go witnesses parse sizes as int64 too
SIZE_CONTENT_TYPE = "text/x.tlog.size"
WORKER_THREADS = 4  # add-checkpoint requests handled at once
EVIDENCE_KEPT = 100  # rejected-but-signed requests kept per origin


# --- errors: one class per status of the spec ----------------------------------------

class WitnessError(PotdError):
    """A refused add-checkpoint request; ``status`` is its HTTP status, ``evidence`` the
    checkpoints (notes), sizes and proof involved, for logging."""

    status = 500
    code = "witness_error"
    content_type = "text/plain; charset=utf-8"

    def __init__(self, message: str, *, hint: str | None = None, **evidence: Any) -> None:
        PotdError.__init__(self, message, hint=hint)
        self.evidence = evidence

    def body(self) -> bytes:
        return (self.message + "\n").encode()


class BadRequestError(WitnessError, MalformedError):
    status = 400
    code = "bad_request"
    hint = "send 'old <size>', the proof lines, a blank line, then the signed checkpoint"


class UnknownLogError(WitnessError):
    status = 404
    code = "unknown_log"
    hint = "ask the witness operator to add the log (`potd witness add-log`)"


class LogSignatureError(WitnessError, SignatureError):
    status = 403
    code = "bad_log_signature"
    hint = "the checkpoint must be signed by the log key the witness pinned for its origin"


class SizeConflictError(WitnessError):
    """``old`` is not the witness's size for the origin: retry from :attr:`size`."""

    status = 409
    code = "size_conflict"
    content_type = SIZE_CONTENT_TYPE
    hint = "resend with 'old <size>' set to the witness's size and a proof from that size"

    def __init__(self, message: str, *, size: int, hint: str | None = None,
                 **evidence: Any) -> None:
        super().__init__(message, hint=hint, **evidence)
        self.size = size

    def body(self) -> bytes:
        return f"{self.size}\n".encode()


class ProofError(WitnessError, ConsistencyError):
    status = 422
    code = "bad_consistency_proof"
    hint = ("the proof does not link the cosigned tree to this one: a wrong proof, or a log "
            "that rewrote its history; keep both checkpoints as evidence")


class RootMismatchError(WitnessError, ConsistencyError):
    """Same size as the cosigned tree, another root: the log forked (a split view). 422
    as at C2SP tlog-witness HEAD (409 in earlier versions of the text)."""

    status = 422
    code = "fork"
    hint = ("the log signed two different trees of the same size: keep both checkpoints "
            "as evidence of a split view")


class WitnessUnavailable(WitnessError):
    """Client side: no answer, or an answer the spec does not define (``status`` 0 when no
    HTTP response arrived)."""

    code = "witness_unavailable"
    hint = "check the witness URL and that it is running; retry later"

    def __init__(self, message: str, *, status: int = 0, hint: str | None = None,
                 **evidence: Any) -> None:
        super().__init__(message, hint=hint, **evidence)
        self.status = status


_BY_STATUS: dict[int, type[WitnessError]] = {400: BadRequestError, 403: LogSignatureError,
                                             404: UnknownLogError, 422: ProofError}


# --- the request body ---------------------------------------------------------------

@dataclass(frozen=True)
class AddCheckpointRequest:
    old_size: int
    proof: tuple[bytes, ...]
    note: bytes  # the signed checkpoint, as sent

    def to_bytes(self) -> bytes:
        lines = [f"old {self.old_size}\n", *(b64encode(h) + "\n" for h in self.proof), "\n"]
        return "".join(lines).encode() + self.note

    @classmethod
    def from_bytes(cls, body: bytes) -> AddCheckpointRequest:
        """Parse a request body; raises :class:`BadRequestError` (400)."""
        head, sep, note = body.partition(b"\n\n")
        if not sep:
            raise BadRequestError("request body has no blank line before the checkpoint")
        lines = head.split(b"\n")
        m = re.fullmatch(rb"old (0|[1-9][0-9]{0,18})", lines[0])
        if not m:
            raise BadRequestError(f"first line {lines[0][:40]!r} is not 'old <decimal size>'")
        if len(lines) - 1 > MAX_PROOF_LINES:
            raise BadRequestError(f"{len(lines) - 1} consistency proof lines; at most "
                                  f"{MAX_PROOF_LINES} are allowed")
        proof = []
        for i, ln in enumerate(lines[1:]):
            try:
                h = b64decode(ln, f"consistency proof line {i + 1}")
            except MalformedError as e:
                raise BadRequestError(e.message) from None
            if len(h) != HASH_SIZE:
                raise BadRequestError(f"consistency proof line {i + 1} holds {len(h)} bytes, "
                                      f"not {HASH_SIZE}")
            proof.append(h)
        return cls(int(m.group(1)), tuple(proof), note)


def _note_bytes(checkpoint_note: bytes | str | SignedCheckpoint | Note) -> bytes:
    if isinstance(checkpoint_note, (SignedCheckpoint, Note)):
        return checkpoint_note.to_bytes()
    return checkpoint_note.encode() if isinstance(checkpoint_note, str) else checkpoint_note


# --- state --------------------------------------------------------------------------

@dataclass(frozen=True)
class LogState:
    """What the witness last cosigned for one origin (size 0, empty root: nothing yet)."""

    origin: str
    size: int
    root: bytes
    note: str
    keys: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"origin": self.origin, "size": self.size, "root": b64encode(self.root),
                "keys": list(self.keys), "checkpoint": self.note or None}


_SCHEMA = """
CREATE TABLE IF NOT EXISTS log_key (
    origin TEXT NOT NULL,
    vkey   TEXT NOT NULL,  -- note verifier key, Ed25519 (alg 0x01)
    PRIMARY KEY (origin, vkey)
);
CREATE TABLE IF NOT EXISTS log_state (
    origin  TEXT PRIMARY KEY,
    size    INTEGER NOT NULL,
    root    BLOB NOT NULL,
    note    TEXT NOT NULL,     -- the checkpoint note last cosigned, as received
    updated INTEGER NOT NULL   -- unix ms
);
CREATE TABLE IF NOT EXISTS evidence (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    origin  TEXT NOT NULL,
    at      INTEGER NOT NULL,  -- unix ms
    reason  TEXT NOT NULL,
    detail  TEXT NOT NULL      -- JSON: both checkpoints, sizes and the proof
);
"""


class WitnessState:
    """The witness database (SQLite): pinned log keys and the latest cosigned checkpoint
    per origin. Safe to share between threads (one connection per thread) and processes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._conn().executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        c: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if c is None:
            try:
                c = sqlite3.connect(self.path, isolation_level=None, timeout=30,
                                    check_same_thread=False)
                c.execute("PRAGMA journal_mode=WAL")
                c.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as e:
                raise StorageError(f"cannot open witness database {self.path}: {e}") from None
            self._local.conn = c
            with self._lock:
                self._conns.append(c)
        return c

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed if the block returns, rolled back
        if it raises (SQLite errors become :class:`StorageError`)."""
        c = self._conn()
        # threads of this process queue here rather than in SQLite's busy handler, which
        # sleeps up to 100 ms per retry; BEGIN IMMEDIATE still orders other processes
        with self._write_lock:
            try:
                c.execute("BEGIN IMMEDIATE")
                yield c
                c.execute("COMMIT")
            except BaseException as e:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise StorageError(f"witness database {self.path}: {e}") from None
                raise

    def close(self) -> None:
        with self._lock:
            for c in self._conns:
                c.close()
            self._conns.clear()
        self._local = threading.local()

    def add_log(self, origin: str, vkey: Verifier) -> None:
        """Pin ``vkey`` for ``origin`` (several keys per origin are allowed). A new origin
        starts at size 0; re-adding a known origin keeps its state."""
        if vkey.alg != ALG_ED25519:
            raise UsageError(f"{vkey.name} is not an Ed25519 log key (alg 0x01)",
                             hint="pass the log's verifier key, e.g. from `potd ledger keygen`")
        Checkpoint(origin, 0, EMPTY_ROOT)  # validates the origin line
        with self._write() as c:
            c.execute("INSERT OR IGNORE INTO log_key (origin, vkey) VALUES (?, ?)",
                      (origin, str(vkey)))
            c.execute("INSERT OR IGNORE INTO log_state (origin, size, root, note, updated) "
                      "VALUES (?, 0, ?, '', ?)", (origin, EMPTY_ROOT, _now_ms()))

    def keys(self, origin: str) -> list[Verifier]:
        rows = self._conn().execute("SELECT vkey FROM log_key WHERE origin = ? ORDER BY vkey",
                                    (origin,)).fetchall()
        return [Verifier.parse(r[0]) for r in rows]

    def get(self, origin: str) -> LogState | None:
        row = self._conn().execute("SELECT size, root, note FROM log_state WHERE origin = ?",
                                   (origin,)).fetchone()
        if row is None:
            return None
        return LogState(origin, int(row[0]), bytes(row[1]), str(row[2]))

    def logs(self) -> list[LogState]:
        c = self._conn()
        keys: dict[str, list[str]] = {}
        for origin, vkey in c.execute("SELECT origin, vkey FROM log_key ORDER BY origin, vkey"):
            keys.setdefault(origin, []).append(vkey)
        rows = c.execute("SELECT origin, size, root, note FROM log_state ORDER BY origin")
        return [LogState(o, int(s), bytes(r), str(n), tuple(keys.get(o, ())))
                for o, s, r, n in rows]

    def advance(self, origin: str, old: LogState, size: int, root: bytes, note: str) -> None:
        """Compare-and-swap ``old`` -> (size, root, note). Raises :class:`SizeConflictError`
        with the current size if the state is no longer ``old`` (another request won)."""
        with self._write() as c:
            cur = c.execute("UPDATE log_state SET size = ?, root = ?, note = ?, updated = ? "
                            "WHERE origin = ? AND size = ? AND root = ?",
                            (size, root, note, _now_ms(), origin, old.size, old.root))
            if cur.rowcount != 1:
                row = c.execute("SELECT size FROM log_state WHERE origin = ?",
                                (origin,)).fetchone()
                now = int(row[0]) if row else 0
                raise SizeConflictError(
                    f"{origin}: another request moved the witness from size {old.size} to "
                    f"{now} first", size=now, origin=origin, old_size=old.size, new_size=size)

    def record_evidence(self, origin: str, reason: str, detail: dict[str, Any]) -> None:
        with self._write() as c:
            c.execute("INSERT INTO evidence (origin, at, reason, detail) VALUES (?, ?, ?, ?)",
                      (origin, _now_ms(), reason, json.dumps(detail, sort_keys=True)))
            c.execute("DELETE FROM evidence WHERE origin = ? AND id NOT IN (SELECT id FROM "
                      "evidence WHERE origin = ? ORDER BY id DESC LIMIT ?)",
                      (origin, origin, EVIDENCE_KEPT))

    def evidence(self, origin: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT origin, at, reason, detail FROM evidence"
        args: tuple[str, ...] = ()
        if origin is not None:
            q, args = q + " WHERE origin = ?", (origin,)
        return [{"origin": o, "at": a, "reason": r, **json.loads(d)}
                for o, a, r, d in self._conn().execute(q + " ORDER BY id", args)]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _json_evidence(ev: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in ev.items():
        if isinstance(v, bytes):
            out[k] = b64encode(v)
        elif isinstance(v, list):
            out[k] = [b64encode(x) if isinstance(x, bytes) else x for x in v]
        else:
            out[k] = v
    return out


# --- the witness --------------------------------------------------------------------

class Witness:
    """Checks add-checkpoint requests against :class:`WitnessState` and cosigns."""

    def __init__(self, state: WitnessState, signer: Signer,
                 clock: Callable[[], float] = time.time) -> None:
        signer = as_cosigning_key(signer)  # an Ed25519 note key (0x01) signs as 0x04
        if signer.alg not in (ALG_COSIGNATURE_V1, ALG_MLDSA44):
            raise UsageError(f"witness key {signer.name!r} is not a cosignature key "
                             f"(alg {signer.alg:#04x})",
                             hint="generate one with `potd witness keygen`")
        self.state = state
        self.signer = signer
        self.clock = clock

    @property
    def verifier(self) -> Verifier:
        return self.signer.verifier

    def add_checkpoint(self, body: bytes) -> bytes:
        """Handle one request body; return the cosignature line(s) or raise a
        :class:`WitnessError` whose ``status`` is the spec's answer."""
        req = AddCheckpointRequest.from_bytes(body)
        origin = self._origin(req.note)
        keys = self.state.keys(origin)
        if not keys:
            raise UnknownLogError(f"unknown log origin {origin[:100]!r}", origin=origin)
        try:
            note, _ = open_note(req.note, keys)
            cp = Checkpoint.from_text(note.text)
        except SignatureError as e:
            raise LogSignatureError(f"{origin}: {e.message}", origin=origin) from None
        except MalformedError as e:
            raise BadRequestError(e.message, origin=origin) from None
        if cp.size > MAX_SIZE:
            raise BadRequestError(f"checkpoint size {cp.size} is beyond 2^63-1")
        ev: dict[str, Any] = dict(origin=origin, old_size=req.old_size, new_size=cp.size,
                                  new_checkpoint=req.note.decode(), proof=list(req.proof))
        if req.old_size > cp.size:
            raise BadRequestError(f"old size {req.old_size} is larger than the checkpoint "
                                  f"size {cp.size}", **ev)
        cur = self.state.get(origin)
        if cur is None:  # keys without a state row: only a hand-edited database
            raise UnknownLogError(f"unknown log origin {origin!r}", origin=origin)
        ev.update(cosigned_size=cur.size, cosigned_checkpoint=cur.note)
        if req.old_size != cur.size:
            raise SizeConflictError(f"{origin}: old size {req.old_size} is not the size last "
                                    f"cosigned, {cur.size}", size=cur.size, **ev)
        if cp.size == 0 and cp.root != EMPTY_ROOT:
            raise ProofError("a checkpoint of size 0 must have the empty tree's root", **ev)
        if cp.size == cur.size and cp.root != cur.root:
            self._evidence("fork", ev)
            raise RootMismatchError(f"{origin}: a second root for tree size {cp.size}: the "
                                    "log forked", **ev)
        try:
            check_tree(req.proof, cp.size, cp.root, cur.size, cur.root)
        except ConsistencyError as e:
            self._evidence("bad_consistency_proof", ev)
            raise ProofError(f"{origin}: {e.message}", **ev) from None
        sig = cosign(note.text, self.signer, int(self.clock()))
        # kept with the witness's own cosignature: the monitoring API serves it as is
        self.state.advance(origin, cur, cp.size, cp.root, req.note.decode() + sig.line())
        return sig.line().encode()

    def monitoring_checkpoint(self, origin_hash: str) -> bytes | None:
        """The checkpoint last cosigned for the log whose origin hashes (SHA-256, lowercase
        hex) to ``origin_hash``, with the log's signatures and this witness's cosignature;
        None if there is none (C2SP tlog-witness, monitoring API)."""
        for st in self.state.logs():
            if st.size and hashlib.sha256(st.origin.encode()).hexdigest() == origin_hash:
                return st.note.encode()
        return None

    @staticmethod
    def _origin(note: bytes) -> str:
        first = note.split(b"\n", 1)[0]
        try:
            origin = first.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequestError("checkpoint origin is not valid UTF-8") from None
        if not origin:
            raise BadRequestError("the checkpoint's first line (its origin) is empty")
        return origin

    def _evidence(self, reason: str, ev: dict[str, Any]) -> None:
        detail = _json_evidence(ev)
        log.warning("refused %s checkpoint: %s %s", ev["origin"], reason,
                    json.dumps(detail, sort_keys=True))
        try:
            self.state.record_evidence(ev["origin"], reason, detail)
        except (sqlite3.Error, StorageError) as e:
            log.error("could not store evidence: %s", e)


# --- HTTP (ASGI) --------------------------------------------------------------------

def create_app(witness: Witness, *, body_timeout: float = 30.0) -> Any:
    """The Starlette app: ``POST /add-checkpoint``, ``POST /sign-subtree``
    (:mod:`ledger.witness_subtree`), ``GET /health``, ``GET /state``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    # a few threads: libsodium and SQLite's fsync release the GIL, so they overlap; more
    # only queue on the GIL and the write lock (measured with scripts/bench_witness.py)
    pool = ThreadPoolExecutor(WORKER_THREADS, "witness")

    async def add_checkpoint(request: Request) -> Response:
        try:
            body = await read_body(request, MAX_BODY, body_timeout)
        except BodyError as e:
            return Response(f"{e.message}\n", e.status, media_type="text/plain")
        try:
            sig = await asyncio.get_running_loop().run_in_executor(
                pool, witness.add_checkpoint, body)
        except WitnessError as e:
            if e.status >= 500:
                log.error("add-checkpoint failed: %s", e)
            return Response(e.body(), e.status, headers={"content-type": e.content_type})
        except PotdError as e:  # storage trouble: nothing was cosigned
            log.error("add-checkpoint failed: %s", e)
            return Response(f"{e.message}\n", 500, media_type="text/plain")
        except Exception:  # a bug or a database fault: report it, answer 500, keep serving
            log.exception("add-checkpoint failed")
            return Response("internal error; nothing was cosigned\n", 500,
                            media_type="text/plain")
        return Response(sig, 200, headers={"content-type": "text/plain; charset=utf-8"})

    async def sign_subtree(request: Request) -> Response:
        from .witness_subtree import sign_subtree as handle

        try:
            body = await read_body(request, MAX_BODY, body_timeout)
        except BodyError as e:
            return Response(f"{e.message}\n", e.status, media_type="text/plain")
        try:
            sig = await run_in_threadpool(handle, witness, body)
        except WitnessError as e:
            return Response(e.body(), e.status, headers={"content-type": e.content_type})
        return Response(sig, 200, headers={"content-type": "text/plain; charset=utf-8"})

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "witness": str(witness.verifier)})

    async def monitoring(request: Request) -> Response:
        h = request.path_params["origin_hash"]
        note = (await run_in_threadpool(witness.monitoring_checkpoint, h)
                if re.fullmatch(r"[0-9a-f]{64}", h) else None)
        if note is None:
            return Response("no checkpoint cosigned for that origin\n", 404,
                            media_type="text/plain")
        return Response(note, 200, headers={"content-type": "text/plain; charset=utf-8"})

    async def state(request: Request) -> Response:
        logs = await run_in_threadpool(witness.state.logs)
        return JSONResponse({"witness": str(witness.verifier),
                             "logs": [s.to_json() for s in logs]})

    return Starlette(routes=[Route("/add-checkpoint", add_checkpoint, methods=["POST"]),
                             Route("/sign-subtree", sign_subtree, methods=["POST"]),
                             Route("/health", health, methods=["GET"]),
                             Route("/{origin_hash}/checkpoint", monitoring, methods=["GET"]),
                             Route("/state", state, methods=["GET"])])


def serve(db: str, signer: Signer, logs: Sequence[tuple[str, Verifier]] = (), *,
          host: str = "127.0.0.1", port: int = 8081, log_level: str = "warning",
          on_ready: Callable[[str, int], None] | None = None, header_timeout: float = 10.0,
          body_timeout: float = 30.0, max_connections: int = 1024) -> None:
    """Pin ``logs`` in ``db``, then serve the witness until SIGINT/SIGTERM; connections
    are guarded as the log server's are (:func:`ledger.netutil.make_server`)."""
    from .netutil import make_server

    state = WitnessState(db)
    for origin, vkey in logs:
        state.add_log(origin, vkey)
    app = create_app(Witness(state, signer), body_timeout=body_timeout)
    try:
        sock = listen(host, port)
    except UsageError:
        state.close()
        raise
    server = make_server(app, sock, on_ready=on_ready, log_level=log_level,
                         header_timeout=header_timeout, max_connections=max_connections,
                         backlog=2048)
    try:
        server.run(sockets=[sock])
    finally:
        state.close()


# --- client -------------------------------------------------------------------------
