"""Connection guard for the log server: slow or idle connections cannot starve it.

uvicorn times out idle keep-alive connections between requests but not a connection
that never finishes its request headers (slowloris), and it has no connection limit
other than ``limit_concurrency``, which answers *new* requests 503 once the slots are
taken, so a few hundred half-open connections would shut out ``/health`` and readers.
:func:`guarded_protocol` returns uvicorn's httptools protocol with two additions:

* a header deadline: a connection must complete each request's headers within
  ``header_timeout`` seconds (checked each second) of its first byte (or of
  connecting), else it is closed;
* a connection cap: past ``max_connections``, a new connection evicts the oldest one
  that is not serving a request (still sending headers, or idle between requests); only
  when every connection is busy is the new one closed.

Request bodies have their own deadline and a global memory budget in the application
(:mod:`ledger.server`); here only connections are counted, plus :func:`trim_memory`,
which hands the memory of large bodies back to the system once they are gone.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from typing import Any


@functools.cache
def _guarded_class() -> Any:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # with the server

    class _Guarded(HttpToolsProtocol):
        header_timeout = 10.0
        max_connections = 1024
        evicted = 0  # connections closed to make room (all instances)
        sweeper: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._busy = False  # headers complete: a request is being served
            self._since = self.loop.time()
            self._headers_since: float | None = self._since
            cls = type(self)
            if cls.sweeper is None:
                cls.sweeper = self.loop.call_later(1.0, cls.sweep, self.connections,
                                                   self.loop)
            if len(self.connections) > self.max_connections:
                self._make_room()

        @classmethod
        def sweep(cls, connections: set[Any], loop: asyncio.AbstractEventLoop) -> None:
            """Once a second: close connections whose headers are overdue (one timer
            for all, instead of one per request)."""
            cls.sweeper = None
            if not connections:
                return
            late = loop.time() - cls.header_timeout
            for c in list(connections):
                since = getattr(c, "_headers_since", None)
                if since is not None and since < late and not c.transport.is_closing():
                    c.transport.close()
            cls.sweeper = loop.call_later(1.0, cls.sweep, connections, loop)

        def _make_room(self) -> None:
            idle = [c for c in self.connections
                    if isinstance(c, _Guarded) and c is not self and not c._busy
                    and not c.transport.is_closing()]
            victim = min(idle, key=lambda c: c._since) if idle else self
            type(self).evicted += 1
            victim.transport.abort()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._headers_since = self.loop.time()

        def on_headers_complete(self) -> None:
            self._headers_since = None
            self._busy = True
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            self._busy = False
            self._since = self.loop.time()
            super().on_response_complete()


    return _Guarded


def guarded_protocol(header_timeout: float = 10.0, max_connections: int = 1024) -> Any:
    """uvicorn's httptools protocol with a header deadline and a connection cap."""
    return type("GuardedHttpToolsProtocol", (_guarded_class(),),
                {"header_timeout": header_timeout, "max_connections": max_connections})


def raise_fd_limit(want: int = 65536) -> int:
    """Raise this process's soft limit on open files towards ``want`` (at most the hard
    limit); return the soft limit in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return int(soft) if soft != resource.RLIM_INFINITY else want


def trim_memory() -> None:
    """Return freed heap memory to the system (glibc ``malloc_trim``; elsewhere no-op), so
    that a burst of large bodies does not stay in the server's RSS after it ends."""
    if _libc is not None:
        _libc.malloc_trim(0)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt() parameters


def keep_large_buffers(threshold: int = 32 << 20) -> None:
    """Serve allocations up to ``threshold`` bytes from the heap and keep freed memory
    until :func:`trim_memory` (glibc; elsewhere no-op). A write request's body and reply
    are each about a megabyte: by default glibc maps each afresh and unmaps it when
    freed, and faulting its pages in again costs the next request's CPU."""
    if _libc is not None:
        _libc.mallopt(M_MMAP_THRESHOLD, threshold)
        _libc.mallopt(M_TRIM_THRESHOLD, 8 * threshold)


def _load_libc() -> Any:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load_libc() if sys.platform.startswith("linux") else None
