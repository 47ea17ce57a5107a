"""The one bounded way to talk HTTP to a peer we do not trust (a log, a tile mirror, a
witness, an evidence server).

Every request has
* a cap on the response body, counted *decoded*, and checked against ``Content-Length``
  before reading. Requests ask for ``identity``; a peer that sends gzip/deflate anyway
  is inflated here at most cap + 1 bytes at a time, so a compression bomb costs no more
  than its cap;
* a total deadline (connect, send, headers and body together), enforced by a watchdog
  thread that shuts the socket down when it passes: a peer trickling one byte every few
  seconds, in the headers or the body, cannot hold a request open past it.

Breaking the cap raises :class:`~ledger.errors.ResponseTooLarge`, the deadline
:class:`~ledger.errors.DeadlineExceeded`; a failed or broken connection, or a garbled
HTTP answer, :class:`~ledger.errors.PeerUnreachable`. Error answers (status >= 300) are
read up to :data:`MAX_ERROR_BODY` and truncated there. The caps below follow from the
protocols where they fix sizes. Connections are kept alive, one per thread and origin
(``http.client``: about a third of the cost of ``httpx`` per request).

Trusts: nothing the peer sends.
"""

from __future__ import annotations

import functools
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from .errors import DeadlineExceeded, MalformedError, PeerUnreachable, ResponseTooLarge
from .tiles import TILE_WIDTH

MAX_CHECKPOINT = 512 << 10  # a note with up to 100 signatures: ML-DSA-44 cosignature lines
# are ~3.3 KB each (Ed25519 ones ~130 bytes), so 100 of them fit
MAX_HASH_TILE = 32 * TILE_WIDTH  # 8 KiB
MAX_ENTRY = 65535  # an entry's length is a u16 in its bundle
MAX_BUNDLE = TILE_WIDTH * (2 + MAX_ENTRY)  # 16 MiB + 512 bytes
MAX_PROOF = 64 << 10  # a proof's JSON: at most 2 x 64 hashes of 44 base64 characters
MAX_COSIGNATURES = 64 << 10  # a witness's answer: its signature lines
MAX_JSON = 64 << 20  # other JSON pages (a run's indexes, add-batch receipts)
MAX_ERROR_BODY = 64 << 10  # error answers are read this far, for their detail
MAX_JSON_DEPTH = 64
DEFAULT_DEADLINE = 30.0  # seconds per request, all phases together
_CHUNK = 64 << 10
_TICK = 0.05  # watchdog resolution, seconds


class _Armed:
    __slots__ = ("sock", "end", "fired")

    def __init__(self, sock: socket.socket, end: float) -> None:
        self.sock, self.end, self.fired = sock, end, False


class _Watchdog:
    """Shuts down the sockets of requests past their deadline (one daemon thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: set[_Armed] = set()
        self._thread: threading.Thread | None = None

    def arm(self, sock: socket.socket, end: float) -> _Armed:
        a = _Armed(sock, end)
        with self._lock:
            self._armed.add(a)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="potd-peer-deadline",
                                                daemon=True)
                self._thread.start()
        return a

    def rearm(self, a: _Armed, sock: socket.socket) -> None:
        """Watch ``sock`` instead (the TLS socket that took over a TCP one)."""
        with self._lock:
            if a.fired:
                raise TimeoutError("deadline passed")
            a.sock = sock

    def disarm(self, a: _Armed) -> None:
        """Stop watching; after this returns the socket is never touched again (so the
        caller may close it: no shutdown can hit a reused descriptor)."""
        with self._lock:
            self._armed.discard(a)

    def _loop(self) -> None:
        while True:
            time.sleep(_TICK)
            now = time.monotonic()
            with self._lock:
                for a in [a for a in self._armed if a.end <= now]:
                    self._armed.discard(a)
                    a.fired = True
                    try:  # the plain socket's shutdown: never touch an SSL object here
                        socket.socket.shutdown(a.sock, socket.SHUT_RDWR)
                    except OSError:
                        pass


_watchdog = _Watchdog()


class Response:
    """A complete, bounded HTTP answer."""

    __slots__ = ("status", "_msg", "body", "url")

    def __init__(self, status: int, msg: http.client.HTTPMessage, body: bytes,
                 url: str) -> None:
        self.status, self._msg, self.body, self.url = status, msg, body, url

    def header(self, name: str, default: str = "") -> str:
        """A header's value (names are case-insensitive)."""
        v = self._msg.get(name)
        return default if v is None else str(v)

    @property
    def headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self._msg.items()}

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return parse_json(self.body, self.url)


def parse_json(data: bytes | str, what: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON from an untrusted source, nested at most ``max_depth`` deep; MalformedError
    otherwise (never a RecursionError or a UnicodeDecodeError)."""
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise MalformedError(f"{what}: not valid JSON (or nested too deep)") from None
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        v, depth = stack.pop()
        if depth > max_depth:
            raise MalformedError(f"{what}: JSON nested deeper than {max_depth}")
        stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v)
                     if isinstance(x, (dict, list)))
    return value


def _decoder(encoding: str, url: str) -> Any:
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return None
    if enc in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if enc == "deflate":
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib (or gzip) framing
    raise MalformedError(f"{url}: unsupported Content-Encoding {encoding[:40]!r}")


def _read_body(r: http.client.HTTPResponse, limit: int, url: str, truncate: bool,
               sink: Callable[[bytes], object] | None = None) -> bytes:
    """The decoded body, at most ``limit`` bytes (more: ResponseTooLarge, or with
    ``truncate`` the first ``limit`` bytes). With ``sink`` the body is handed to it in
    blocks of at most 64 KiB as it arrives (memory stays flat) and b"" is returned."""
    dec = _decoder(r.getheader("Content-Encoding") or "", url)
    if dec is None and r.length is not None and not truncate:
        if r.length > limit:
            raise ResponseTooLarge(f"{url}: the peer announces {r.length} bytes, more than "
                                   f"the {limit} allowed")
        if sink is None:
            return r.read()
    if sink is not None:
        got = 0
        while chunk := r.read1(_CHUNK):
            while chunk:
                part = dec.decompress(chunk, _CHUNK) if dec is not None else chunk
                chunk = dec.unconsumed_tail if dec is not None else b""
                got += len(part)
                if got > limit:
                    raise ResponseTooLarge(f"{url}: the peer sent more than the {limit} "
                                           "bytes allowed"
                                           + (" (decoded)" if dec is not None else ""))
                sink(part)
        if dec is not None and (tail := dec.flush()):
            if got + len(tail) > limit:
                raise ResponseTooLarge(f"{url}: the peer sent more than the {limit} bytes "
                                       "allowed (decoded)")
            sink(tail)
        if r.length:  # cut off (or shut down by the deadline): handled like read()'s
            raise http.client.IncompleteRead(b"", r.length)
        return b""
    out = bytearray()
    while len(out) <= limit:
        chunk = r.read1(_CHUNK)
        if not chunk:
            if dec is not None:
                out += dec.flush()
            break
        out += dec.decompress(chunk, limit + 1 - len(out)) if dec is not None else chunk
    if len(out) > limit:
        if truncate:
            return bytes(out[:limit])
        raise ResponseTooLarge(f"{url}: the peer sent more than the {limit} bytes allowed"
                               + (" (decoded)" if dec is not None else ""))
    return bytes(out)


def _split(url: str) -> tuple[str, str, int | None, str]:
    """``(scheme, host, port, path and query)`` of an http(s) URL."""
    start = url.find("//")
    cut = url.find("/", start + 2) if start >= 0 else -1
    origin, target = (url, "/") if cut < 0 else (url[:cut], url[cut:])
    return (*_origin(origin), target.partition("#")[0])


@functools.lru_cache(maxsize=64)
def _origin(origin: str) -> tuple[str, str, int | None]:
    u = urllib.parse.urlsplit(origin)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise MalformedError(f"{origin[:200]!r} is not an http(s) URL",
                             hint="give the peer's URL as http://host:port/...")
    try:
        return u.scheme, u.hostname, u.port
    except ValueError:
        raise MalformedError(f"{origin[:200]!r} has a bad port") from None


class _SinkFailed(Exception):
    """Carries an exception raised by a caller's sink through the transport handling."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class Peer:
    """Bounded HTTP requests, kept-alive connections per thread and origin.

    ``deadline`` is the default total time per request, in seconds. Thread-safe."""

    def __init__(self, *, deadline: float = DEFAULT_DEADLINE,
                 headers: Mapping[str, str] | None = None) -> None:
        self.deadline = deadline
        self.headers = dict(headers or {})  # http.client asks for Accept-Encoding: identity
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[http.client.HTTPConnection] = []
        self._tls: ssl.SSLContext | None = None

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for c in conns:
            c.close()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            try:  # the CA bundle httpx used (certifi comes with it), else the system's
                import certifi

                self._tls = ssl.create_default_context(cafile=certifi.where())
            except ImportError:
                self._tls = ssl.create_default_context()
        return self._tls

    def _conn(self, scheme: str, host: str, port: int | None) -> http.client.HTTPConnection:
        conns: dict[tuple[str, str, int | None], http.client.HTTPConnection] = \
            self._local.__dict__.setdefault("conns", {})
        c = conns.get((scheme, host, port))
        if c is None:
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            c = cls(host, port)
            conns[(scheme, host, port)] = c
        return c

    def get(self, url: str, *, limit: int, deadline: float | None = None,
            headers: Mapping[str, str] | None = None,
            sink: Callable[[bytes], object] | None = None) -> Response:
        return self.request("GET", url, limit=limit, deadline=deadline, headers=headers,
                            sink=sink)

    def request(self, method: str, url: str, *, limit: int, body: bytes | None = None,
                headers: Mapping[str, str] | None = None,
                deadline: float | None = None,
                sink: Callable[[bytes], object] | None = None) -> Response:
        """One request, its answer read in full within ``limit`` bytes and ``deadline``
        seconds (default: the peer's). A kept-alive connection the server had closed is
        replaced once (not once ``sink`` has been handed part of a body).

        ``sink``: a successful (status < 300) body is streamed to it in blocks instead of
        being kept (the Response's ``body`` is then b""); an exception it raises ends the
        request and propagates unchanged."""
        scheme, host, port, target = _split(url)
        hdrs = {**self.headers, **headers} if headers else self.headers
        end = time.monotonic() + (self.deadline if deadline is None else deadline)
        fed = [0]

        def own(b: bytes) -> None:
            fed[0] += 1
            try:
                assert sink is not None
                sink(b)
            except BaseException as e:  # the sink's own failure, not the peer's
                raise _SinkFailed(e) from e
        for attempt in (0, 1):
            conn = self._conn(scheme, host, port)
            reused = conn.sock is not None
            try:
                return self._exchange(conn, method, target, body, hdrs, limit, end, url,
                                      own if sink is not None else None)
            except _SinkFailed as e:
                conn.close()
                raise e.error from None
            except (OSError, http.client.HTTPException, ValueError) as e:
                conn.close()
                if time.monotonic() >= end:
                    raise DeadlineExceeded(f"{url}: no complete answer within "
                                           f"{self.deadline if deadline is None else deadline:g}"
                                           " s") from None
                stale = isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError,
                                       BrokenPipeError))
                if attempt == 0 and reused and stale and not fed[0]:
                    continue
                # the cause is kept: a client tells a refusal or a bad certificate
                # (no retry helps) from a transient failure by it
                raise PeerUnreachable(f"{url}: {type(e).__name__}: {e}") from e
            except BaseException:
                conn.close()
                raise
        raise PeerUnreachable(f"{url}: the connection kept closing")  # pragma: no cover

    def _exchange(self, conn: http.client.HTTPConnection, method: str, target: str,
                  body: bytes | None, hdrs: dict[str, str], limit: int, end: float,
                  url: str, sink: Callable[[bytes], object] | None = None) -> Response:
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed before sending")
        armed = None
        try:
            if conn.sock is None:  # connect under the deadline, the TLS handshake too
                sock = socket.create_connection((conn.host, conn.port), remaining)
                try:
                    armed = _watchdog.arm(sock, end)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    if isinstance(conn, http.client.HTTPSConnection):
                        sock = self._tls_context().wrap_socket(
                            sock, server_hostname=conn.host, do_handshake_on_connect=False)
                        _watchdog.rearm(armed, sock)
                        sock.settimeout(max(0.001, end - time.monotonic()))
                        sock.do_handshake()
                except BaseException:
                    if armed is not None:
                        _watchdog.disarm(armed)
                        armed = None
                    sock.close()
                    raise
                conn.sock = sock
                with self._lock:  # for close(), also after an earlier close()
                    if conn not in self._all:
                        self._all.append(conn)
            else:
                armed = _watchdog.arm(conn.sock, end)
            # each read's own timeout only needs to outlast the deadline: the watchdog
            # enforces the total (a syscall saved per request on a kept-alive connection)
            want = end - time.monotonic()
            per_read = conn.sock.gettimeout()
            if per_read is None or per_read < want:
                conn.sock.settimeout(want + 1.0)
            conn.request(method, target, body=body, headers=hdrs)
            r = conn.getresponse()
            data = _read_body(r, limit if r.status < 300 else min(limit, MAX_ERROR_BODY),
                              url, truncate=r.status >= 300,
                              sink=sink if r.status < 300 else None)
        finally:
            if armed is not None:
                _watchdog.disarm(armed)
        if armed is not None and armed.fired:
            raise TimeoutError("deadline passed")
        if r.will_close or not r.isclosed():  # not read to its end (truncated): drop it
            conn.close()
        return Response(r.status, r.msg, data, url)
