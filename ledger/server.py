"""The log server: thin HTTP over :class:`~ledger.log.Log` and the sequencer.

Read API (C2SP tlog-tiles): ``GET /checkpoint``, ``GET /tile/<L>/<N>[.p/<W>]``,
``GET /tile/entries/<N>[.p/<W>]``. Write and convenience API (JSON, docs/protocol.md §2.5):
``POST /add``, ``POST /add-batch``, ``GET /proof/inclusion``, ``GET /proof/consistency``,
``GET /entries``, ``GET /runs/<run>``, plus ``GET /health`` and ``GET /openapi.json``.

Every error is JSON ``{"error": code, "detail": text, "hint": text, ...}`` with the
status of docs/protocol.md §2.5: 400 malformed, 401 bad signature, 403 signer not allowed, 404, 409
conflict, 413 too large, 503 pushback/storage with ``Retry-After``. A request that fails
stores nothing. Full tiles and bundles are immutable and cached for a year; partial ones
and the checkpoint are not cached long.

With witnesses (``witnesses=["URL=VKEY", ...]``, :mod:`ledger.witnessing`), ``GET
/checkpoint`` serves the newest checkpoint cosigned by ``witness_quorum`` of them (503
until there is one). Writes are still answered after durability and integration, with
the log-signed checkpoint of the flush (newer than the published one for a moment); with
``wait_for_witnesses=True`` a write's reply waits (up to ``witness_timeout``, then 503)
for a witnessed checkpoint covering it and carries that one, with proofs at its size.

One process, one sequencer (uvicorn with a single worker). Reads run on the event loop
against the store's read connection (they never wait for a commit), except those that
may read many entries, which run in a thread. Shutdown (SIGINT/SIGTERM) stops accepting
connections, answers the requests in flight and flushes the pool before exiting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
import gzip
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from operator import attrgetter
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .errors import (
    MalformedError,
    PotdError,
    PushbackError,
    UsageError,
)
from .guard import keep_large_buffers, trim_memory
from .http_common import (
    HEX64_RE,
    IMMUTABLE,
    JSON_TYPE,
    NO_CACHE,
    SHORT,
    NotFound,
    RequestTimeout,
    TooLarge,
    error_payload,
    error_response,
    json_response,
    potd_error_response,
    status_of,
    uint_param,
)
from .log import Log
from .metrics import Metrics
from .netutil import listen, make_server
from .note import Signer, b64encode
from .openapi import openapi_document
from .policy import Policy
from .sequencer import Sequencer, verify_signatures
from .statement import Statement, parse_statement, parse_statement_array
from .storage import open_store
from .tiles import ENTRIES_LEVEL, MAX_ENTRY_SIZE, parse_path
from .witnessing import WitnessPublisher, WitnessTarget

VERIFY_CHUNK = 64  # statements per verify task (smaller batches: one task)
PARSE_OFF_LOOP = 64 << 10  # bodies at least this large are parsed on a worker thread
_RAW = attrgetter("raw")
TRIM_AFTER = 0.05  # seconds without a large body before freed memory goes back


class LogServer:
    """The ASGI application's state and handlers."""

    def __init__(self, log: Log, *, open_registration: bool = False, flush_ms: float = 50.0,
                 max_batch: int = 10_000, max_pending: int = 50_000,
                 max_request_bytes: int = 16 << 20, max_buffered_bytes: int = 64 << 20,
                 body_timeout: float = 30.0, entries_page: int = 1000,
                 entries_bytes: int = 1 << 20,
                 witnesses: Sequence[str] = (), witness_quorum: int | None = None,
                 wait_for_witnesses: bool = False, witness_timeout: float = 20.0,
                 gzip_bundles: bool = False, witness_policy: Policy | None = None) -> None:
        store: Any = log.store
        if hasattr(store, "ensure_indexes"):
            store.ensure_indexes()
        self.sequencer = Sequencer(log, open_registration=open_registration, flush_ms=flush_ms,
                                   max_batch=max_batch, max_pending=max_pending)
        self.max_request_bytes = max_request_bytes
        # all request bodies being received or parsed share this budget: past it, 503
        self.max_buffered_bytes = max(max_buffered_bytes, max_request_bytes)
        self.buffered = 0
        self._large_done = 0.0  # when the last large body was released
        self._trim: asyncio.TimerHandle | None = None
        self.body_timeout = body_timeout
        self.max_batch = max_batch
        self.entries_page = entries_page
        self.entries_bytes = entries_bytes
        self.gzip_bundles = gzip_bundles  # Content-Encoding: gzip, as tlog-tiles allows
        # Ed25519 verification of batches: libsodium releases the GIL, so these threads
        # verify on every core while the event loop goes on parsing other requests
        self._verify_workers = max(2, os.cpu_count() or 2)
        self._verify_pool = concurrent.futures.ThreadPoolExecutor(self._verify_workers,
                                                                  "potd-verify")
        self.openapi = json.dumps(openapi_document(log.origin, str(log.verifier))).encode()
        self.publisher: WitnessPublisher | None = None
        self.wait_for_witnesses, self.witness_timeout = wait_for_witnesses, witness_timeout
        if witness_policy is not None:  # a C2SP tlog-policy replaces --witness-quorum
            if witness_quorum is not None:
                raise UsageError("--policy replaces --witness-quorum: give one or the other")
            self.publisher = WitnessPublisher(lambda: self.sequencer.log,
                                              [WitnessTarget.parse(w) for w in witnesses], 0,
                                              policy=witness_policy)
            self.sequencer.on_flush = self.publisher.notify
        elif witnesses:
            targets = [WitnessTarget.parse(w) for w in witnesses]
            q = len(targets) if witness_quorum is None else witness_quorum
            if not 1 <= q <= len(targets):
                raise UsageError(f"--witness-quorum {q} must be between 1 and the number of "
                                 f"witnesses ({len(targets)})")
            # the sequencer replaces its Log after a failed commit: follow it
            self.publisher = WitnessPublisher(lambda: self.sequencer.log, targets, q)
            self.sequencer.on_flush = self.publisher.notify
        elif witness_quorum is not None or wait_for_witnesses:
            raise UsageError("--witness-quorum and --wait-for-witnesses need --witness",
                             hint="add --witness URL=VKEY for each witness")
        self.starlette = self.app()

    @property
    def log(self) -> Log:
        return self.sequencer.log  # replaced after a failed commit

    # -- writes ---------------------------------------------------------------------

    # The write endpoints are plain ASGI (the hot path skips Starlette's routing and
    # middleware); __call__ dispatches POST /add and /add-batch to them directly.

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            if path == "/add":
                return await self.add(scope, receive, send)
            if path == "/add-batch":
                return await self.add_batch(scope, receive, send)
        await self.starlette(scope, receive, send)

    @contextmanager
    def _buffering(self) -> Iterator[list[int]]:
        """Account a request's body against the global budget for the request's life
        (receiving and parsing); on exit the bytes are released and, once no large body
        has been held for :data:`TRIM_AFTER` seconds, the allocator hands freed memory
        back to the system."""
        held = [0]
        try:
            yield held
        finally:
            self.buffered -= held[0]
            if held[0] >= PARSE_OFF_LOOP:
                self._large_done = time.monotonic()
                if self._trim is None:
                    self._trim = asyncio.get_running_loop().call_later(TRIM_AFTER,
                                                                       self._trim_when_idle)

    def _trim_when_idle(self) -> None:
        """Trim once the last large body is gone and no other came for TRIM_AFTER s (not
        between the requests of a storm: trimming and faulting the pages back in again
        costs the next request's CPU)."""
        wait = self._large_done + TRIM_AFTER - time.monotonic()
        if self.buffered >= PARSE_OFF_LOOP or wait > 0:
            self._trim = asyncio.get_running_loop().call_later(
                wait if wait > 0 else TRIM_AFTER, self._trim_when_idle)
            return
        self._trim = None
        trim_memory()

    def _reserve(self, held: list[int], n: int) -> None:
        """Hold ``n`` bytes of the budget for this body. Bodies under 64 KiB (every
        ``/add``) are counted but never refused: the connection cap bounds them, and
        clients holding the budget with large bodies cannot shut out single writes."""
        extra = n - held[0]
        if extra <= 0:
            return
        if n >= PARSE_OFF_LOOP and self.buffered + extra > self.max_buffered_bytes:
            raise PushbackError(
                f"{self.buffered} bytes of request bodies are being received; the server "
                f"buffers at most {self.max_buffered_bytes}", retry_after=1.0,
                hint="retry in a moment; large batches go through one at a time")
        self.buffered += extra
        held[0] = n

    async def _body(self, scope: Scope, receive: Receive, limit: int, what: str,
                    held: list[int]) -> bytes:
        for k, v in scope["headers"]:
            if k == b"content-length":
                if not v.isdigit() or len(v) > 18:
                    raise MalformedError("invalid Content-Length header")
                if int(v) > limit:
                    raise TooLarge(f"{what} of {int(v)} bytes is over the limit of {limit} "
                                   "bytes")
                self._reserve(held, int(v))
        chunks: list[bytes] = []
        n = 0
        try:
            async with asyncio.timeout(self.body_timeout):
                while True:
                    msg = await receive()
                    if msg["type"] != "http.request":
                        raise MalformedError("the client went away before sending its "
                                             "request body")
                    chunk = msg.get("body", b"")
                    n += len(chunk)
                    if n > limit:
                        raise TooLarge(f"{what} is over the limit of {limit} bytes")
                    self._reserve(held, n)
                    chunks.append(chunk)
                    if not msg.get("more_body", False):
                        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except TimeoutError:
            raise RequestTimeout(f"the {what} did not arrive within {self.body_timeout:g} s "
                                 f"({n} bytes received)") from None

    async def _reply(self, send: Send, status: int, body: bytes,
                     headers: dict[str, str] | None = None) -> None:
        h = [(b"content-type", b"application/json"),
             (b"content-length", str(len(body)).encode())]
        if headers:
            h += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": h})
        await send({"type": "http.response.body", "body": body})

    async def _write(self, send: Send, work: Awaitable[bytes]) -> None:
        try:
            body = await work
        except PotdError as e:
            if status_of(e) == 500:
                _log_crash("POST", e)
            await self._reply(send, *error_payload(e))
            return
        except Exception as e:  # a bug: report it, answer 500, keep serving
            _log_crash("POST", e)
            await self._reply(send, 500, json.dumps(
                {"error": "internal", "detail": "internal error; the log operator has the "
                                                "details"}).encode())
            return
        await self._reply(send, 200, body)

    async def add(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._write(send, self._add(scope, receive))

    async def _add(self, scope: Scope, receive: Receive) -> bytes:
        seq = self.sequencer
        with seq.arriving(), self._buffering() as held:
            body = await self._body(scope, receive,
                                    min(MAX_ENTRY_SIZE, self.max_request_bytes), "statement",
                                    held)
            st = parse_statement(body, lazy=True)  # the write path reads no body
            verify_signatures([st], False)
        return await self._witnessed(await seq.submit([st], batch=False, verified=True))

    async def _witnessed(self, reply: bytes) -> bytes:
        """With --wait-for-witnesses: hold a write's reply until a checkpoint covering it
        met the witness quorum, and answer with that checkpoint and proofs at its size."""
        pub = self.publisher
        if pub is None or not self.wait_for_witnesses:
            return reply
        data = json.loads(reply)
        items = data if isinstance(data, list) else [data]
        indexes = [int(it["index"]) for it in items]
        cp = await pub.wait_for(max(indexes) + 1, self.witness_timeout)
        proofs = await asyncio.to_thread(self.log.inclusion_proofs, indexes, cp.size)
        for it, proof in zip(items, proofs, strict=True):
            it["checkpoint"] = str(cp)
            it["inclusion_proof"] = [b64encode(h) for h in proof]
        return json.dumps(data, separators=(",", ":")).encode()

    async def add_batch(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._write(send, self._add_batch(scope, receive))

    async def _add_batch(self, scope: Scope, receive: Receive) -> bytes:
        seq = self.sequencer
        with seq.arriving(), self._buffering() as held:
            body = await self._body(scope, receive, self.max_request_bytes, "batch", held)
            if len(body) >= PARSE_OFF_LOOP:  # keep the event loop answering meanwhile
                sts = await asyncio.get_running_loop().run_in_executor(
                    self._verify_pool, functools.partial(parse_statement_array, body,
                                                         lazy=True))
            else:
                sts = parse_statement_array(body, lazy=True)  # the write path reads no body
            del body
            if len(sts) > self.max_batch:
                raise TooLarge(f"batch of {len(sts)} statements; this log takes at most "
                               f"{self.max_batch} per request",
                               hint="split the batch into smaller requests")
            if max(map(len, map(_RAW, sts)), default=0) > MAX_ENTRY_SIZE:  # a C loop
                k = next(k for k, st in enumerate(sts) if len(st.raw) > MAX_ENTRY_SIZE)
                e = TooLarge(f"statement #{k} has {len(sts[k].raw)} bytes; the limit is "
                             f"{MAX_ENTRY_SIZE}")
                setattr(e, "statement", k)  # noqa: B010
                raise e
            await self._verify_batch(sts)
        return await self._witnessed(await seq.submit(sts, batch=True, verified=True))

    async def _verify_batch(self, sts: Sequence[Statement]) -> None:
        """Verify a batch's signatures in chunks on the verify threads, in parallel; a
        failure names the lowest failing statement, as a sequential check would."""
        loop = asyncio.get_running_loop()
        # one chunk per verify thread: each hand-off to a thread and back costs the
        # event loop and the threads CPU, and concurrent requests keep both busy anyway
        chunk = max(VERIFY_CHUNK, -(-len(sts) // self._verify_workers))
        results = await asyncio.gather(
            *(loop.run_in_executor(self._verify_pool, verify_signatures, sts[k:k + chunk],
                                   True, k) for k in range(0, len(sts), chunk)),
            return_exceptions=True)
        for r in results:  # in chunk order: the first error is the lowest statement
            if isinstance(r, BaseException):
                raise r

    # -- reads ----------------------------------------------------------------------

    async def checkpoint(self, request: Request) -> Response:
        if self.publisher is not None:  # only checkpoints that met the witness quorum
            if self.publisher.published is None:
                return error_response(503, "not_witnessed", "no checkpoint has met the "
                                      "witness quorum yet", headers={"Retry-After": "1"})
            cp = self.publisher.published
        else:
            cp = self.log.checkpoint()
        return Response(str(cp), media_type="text/plain; charset=utf-8",
                        headers={"Cache-Control": NO_CACHE})

    async def tile(self, request: Request) -> Response:
        path = "tile/" + request.path_params["path"]
        if len(path) > 200:  # the longest canonical path is about 60 bytes
            raise MalformedError(f"tile path of {len(path)} bytes is too long",
                                 hint="expected tile/<L>/<N>[.p/<W>]")
        tile = parse_path(path)
        try:
            if tile.level == ENTRIES_LEVEL and not tile.full:
                # a partial bundle is assembled from entry rows: off the event loop
                data = await asyncio.to_thread(self.log.tile, tile)
            else:  # hash tiles and full bundles are single stored blobs
                data = self.log.tile(tile)
        except UsageError as e:
            raise NotFound(e.message, hint="this tile is beyond the current tree") from None
        headers = {"Cache-Control": IMMUTABLE if tile.full else SHORT}
        if self.gzip_bundles and tile.level == ENTRIES_LEVEL:
            data = await asyncio.to_thread(gzip.compress, data, 6, mtime=0)
            headers["Content-Encoding"] = "gzip"
        return Response(data, media_type="application/octet-stream", headers=headers)

    def _served_size(self) -> int:
        """The size of the checkpoint GET /checkpoint serves: with witnesses, the newest
        one that met the quorum (proofs then match it by default), else the newest."""
        pub = self.publisher
        if pub is not None and pub.published is not None:
            return pub.published.size
        return self.log.size

    async def inclusion(self, request: Request) -> Response:
        log = self.log
        size = uint_param(request, "size", self._served_size())
        hexleaf = request.query_params.get("leaf_hash")
        if hexleaf is not None:
            if "index" in request.query_params:
                raise UsageError("give either index or leaf_hash, not both")
            if not HEX64_RE.fullmatch(hexleaf):
                raise UsageError("leaf_hash must be 64 lowercase hex digits")
            store: Any = log.store  # a thread: the lookup may first catch the index up
            found = await asyncio.to_thread(store.leaf_index, bytes.fromhex(hexleaf))
            if found is None or found >= size:
                raise NotFound(f"no record with leaf hash {hexleaf} in the tree of size {size}")
            index = int(found)
        else:
            index = uint_param(request, "index")
        if size > log.size:
            raise UsageError(f"tree size {size} is beyond the current size {log.size}")
        if index >= size:
            raise UsageError(f"index {index} is not inside the tree of size {size}")
        proof = log.inclusion_proof(index, size)
        return json_response({"index": index, "size": size,
                              "hashes": [b64encode(h) for h in proof]})

    async def consistency(self, request: Request) -> Response:
        log = self.log
        m = uint_param(request, "from")
        n = uint_param(request, "to", self._served_size())
        if not m <= n <= log.size:
            raise UsageError(f"need from <= to <= {log.size} (the current size); got {m}, {n}")
        proof = log.consistency_proof(m, n)
        return json_response({"from": m, "to": n, "hashes": [b64encode(h) for h in proof]})

    async def entries(self, request: Request) -> Response:
        log = self.log
        size = log.size
        start = uint_param(request, "start")
        end = uint_param(request, "end", min(size, start + self.entries_page))
        if not start <= end <= size:
            raise UsageError(f"need start <= end <= {size} (the current size); got {start}, "
                             f"{end}")
        end = min(end, start + self.entries_page)
        data = await asyncio.to_thread(log.entries, start, end, self.entries_bytes)
        return json_response({"start": start, "end": start + len(data),
                      "entries": [b64encode(e) for e in data]})

    async def run(self, request: Request) -> Response:
        run = request.path_params["run"]
        if not HEX64_RE.fullmatch(run):
            raise UsageError("a run id is 64 lowercase hex digits",
                             hint="run = hex SHA-256 of the canonical JSON of the run.open body")
        store: Any = self.log.store
        indexes = await asyncio.to_thread(store.run_indexes, run)
        if not indexes:
            raise NotFound(f"no run {run} in this log")
        return json_response({"run": run, "indexes": indexes})

    async def health(self, request: Request) -> Response:
        """200 ``"ok"``, or 503 ``"storage_failed"`` with the cause while the last commit
        failed (until a commit or the sequencer's storage probe succeeds)."""
        seq = self.sequencer
        body: dict[str, Any] = {
            "status": "ok", "origin": self.log.origin, "size": self.log.size,
            "pending": seq.pending, "flushes": seq.flushes, "flushed": seq.flushed,
            "flush_seconds": round(seq.flush_seconds, 3), "buffered_bytes": self.buffered}
        if self.publisher is not None:
            body["witnessing"] = self.publisher.stats()
        err = seq.storage_error
        if err is not None:
            body.update(status="storage_failed", error=err.code, detail=err.message,
                        hint=err.hint)
            return Response(json.dumps(body, separators=(",", ":")), status_code=503,
                            media_type=JSON_TYPE,
                            headers={"Cache-Control": NO_CACHE, "Retry-After": "1"})
        return json_response(body)

    async def openapi_json(self, request: Request) -> Response:
        return Response(self.openapi, media_type=JSON_TYPE)

    # -- the app ------------------------------------------------------------------

    def app(self) -> Starlette:
        """The Starlette application for everything but the hot write path."""
        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            await self.sequencer.start()
            if self.publisher is not None:
                self.publisher.start()
            try:
                yield
            finally:
                if self.publisher is not None:
                    await self.publisher.stop()
                await self.sequencer.close()
                self._verify_pool.shutdown(wait=False, cancel_futures=True)
                if self._trim is not None:
                    self._trim.cancel()

        routes = [
            Route("/checkpoint", self.checkpoint, methods=["GET"]),
            Route("/tile/{path:path}", self.tile, methods=["GET"]),
            # plain ASGI (a partial is not a function, so Starlette passes scope/receive/send)
            Route("/add", functools.partial(self.add), methods=["POST"]),
            Route("/add-batch", functools.partial(self.add_batch), methods=["POST"]),
            Route("/proof/inclusion", self.inclusion, methods=["GET"]),
            Route("/proof/consistency", self.consistency, methods=["GET"]),
            Route("/entries", self.entries, methods=["GET"]),
            Route("/runs/{run}", self.run, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/openapi.json", self.openapi_json, methods=["GET"]),
        ]
        handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
            PotdError: _on_potd_error, HTTPException: _on_http_error, Exception: _on_crash}
        app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
        app.router.redirect_slashes = False  # an API: a wrong path is a 404, not a redirect
        return app


async def _on_potd_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PotdError)
    if status_of(exc) == 500:
        return await _on_crash(request, exc)
    return potd_error_response(exc)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    hint = "see GET /openapi.json for the API" if exc.status_code in (404, 405) else ""
    return error_response(exc.status_code, code, str(exc.detail), hint,
                          dict(exc.headers) if exc.headers else None)


def _log_crash(where: str, exc: BaseException) -> None:
    print(f"potd ledger serve: internal error on {where}: {exc!r}", file=sys.stderr, flush=True)


async def _on_crash(request: Request, exc: Exception) -> Response:
    _log_crash(f"{request.method} {request.url.path}", exc)
    return error_response(500, "internal", "internal error; the log operator has the details")


def create_app(log: Log, **options: Any) -> LogServer:
    """The ASGI app serving ``log`` (options as for :class:`LogServer`)."""
    return LogServer(log, **options)


def serve(db: str, key: str | Signer, *, host: str = "127.0.0.1", port: int = 8080,
          timestamps: bool = False, log_level: str = "warning",
          on_ready: Callable[[str, int], None] | None = None, header_timeout: float = 10.0,
          max_connections: int = 1024, also_sign: Sequence[Signer] = (),
          **options: Any) -> None:
    """Open the log at ``db`` with its private key and serve it until SIGINT/SIGTERM;
    ``also_sign``: keys of the same origin that co-sign each checkpoint (key rotation)."""
    signer = key if isinstance(key, Signer) else Signer.parse(key)
    store = open_store(db, server=True, writer=True)
    try:
        log = Log(store, signer, timestamps=timestamps, also_sign=also_sign)
        app: Any = Metrics(create_app(log, **options))  # + GET /metrics
    except BaseException:
        store.close()
        raise
    try:
        sock = listen(host, port)
    except UsageError:
        store.close()
        raise
    # A long-running server allocates many short-lived containers per request; fewer,
    # later cyclic-GC passes (nothing here relies on them) cost less than frequent ones.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    keep_large_buffers()  # freed memory goes back once a burst of requests ends
    # slowloris and connection floods: a header deadline and a connection cap that stays
    # under the open-file limit (ledger.guard); idle keep-alive connections close after 5 s
    server = make_server(app, sock, on_ready=on_ready, log_level=log_level,
                         header_timeout=header_timeout, max_connections=max_connections,
                         lifespan="on", timeout_graceful_shutdown=30, backlog=2048)
    # uvicorn re-raises SIGINT/SIGTERM after its graceful shutdown; with these handlers
    # that ends here, so a clean shutdown exits 0 instead of dying by the signal.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        store.close()
