"""Listening sockets and guarded uvicorn servers for every potd server (log, witness,
data server): one place for binding rules, connection limits and body deadlines."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, Literal

from .errors import UsageError


def listen(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn (``port`` 0 picks a free one), or UsageError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}",
                         hint="choose another --port, or stop what is using it") from None
    return sock


class BodyError(Exception):
    """A request body that is too large (``status`` 413) or too slow (408)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(request: Any, limit: int, timeout: float) -> bytes:
    """The whole body of a Starlette ``request``: at most ``limit`` bytes arriving within
    ``timeout`` seconds in all, else :class:`BodyError` (413 or 408). A peer that trickles
    its body one byte at a time cannot hold a connection (and its buffer) for longer."""
    import asyncio

    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise BodyError(413, f"request body larger than {limit} bytes")
    except TimeoutError:
        raise BodyError(408, f"the request body did not arrive within {timeout:g} s") \
            from None
    return bytes(body)


def make_server(app: Any, sock: socket.socket, *,
                on_ready: Callable[[str, int], None] | None = None,
                log_level: str = "warning", header_timeout: float = 10.0,
                max_connections: int = 1024, lifespan: Literal["on", "off"] = "off",
                **config: Any) -> Any:
    """A ``uvicorn.Server`` for ``app`` on the bound ``sock``, guarded the same way for
    every potd server (:mod:`ledger.guard`): a header deadline, a connection cap under
    the open-file limit (raised first), idle keep-alive connections closed after 5 s.
    ``on_ready(host, port)`` runs once the server accepts connections."""
    import uvicorn

    from .guard import guarded_protocol, raise_fd_limit

    fds = raise_fd_limit()
    protocol = guarded_protocol(header_timeout, max(16, min(max_connections, fds - 64)))
    config.setdefault("timeout_keep_alive", 5)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False,
                                           workers=1, lifespan=lifespan, http=protocol,
                                           **config))
    if on_ready is not None:
        host, port = sock.getsockname()[:2]
        orig = server.startup

        async def startup(sockets: list[socket.socket] | None = None) -> None:
            await orig(sockets=sockets)
            on_ready(host, port)

        server.startup = startup  # type: ignore[method-assign]
    return server


def connection_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The click options of :func:`make_server` and :func:`read_body` for a ``serve``
    command: ``--header-timeout``, ``--body-timeout``, ``--max-connections``."""
    import click

    for opt in reversed([
        click.option("--header-timeout", default=10.0, show_default=True,
                     help="Seconds a connection may take to send a request's headers."),
        click.option("--body-timeout", default=30.0, show_default=True,
                     help="Seconds a request body may take to arrive (then 408)."),
        click.option("--max-connections", default=1024, show_default=True,
                     help="Open connections; past it the oldest idle or half-open one "
                          "is closed."),
    ]):
        f = opt(f)
    return f
