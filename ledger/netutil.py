"""Listening sockets for the servers (log and witness): one place for binding rules."""

from __future__ import annotations

import socket

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
