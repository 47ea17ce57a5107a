"""Start a real log server (``potd ledger serve``) as a subprocess on a loopback port.

Used by the demo, the benchmarks and the tests: a real process, a real SQLite file, a
real TCP port — never an in-process fake.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .errors import PotdError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    db: str
    key: str
    port: int = field(default_factory=free_port)
    extra: Sequence[str] = ()
    log_file: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.db, self.key = os.path.abspath(self.db), os.path.abspath(self.key)
        if self.log_file:
            self.log_file = os.path.abspath(self.log_file)
        cmd = [sys.executable, "-m", "ledger", "ledger", "serve",
               "--db", self.db, "--key", self.key, "--host", "127.0.0.1", "--port", str(self.port),
               *self.extra]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                     cwd=str(Path(__file__).resolve().parents[1]),
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        atexit.register(self.stop)  # never leave a server behind
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PotdError(f"log server exited with status {self.proc.returncode}",
                                hint=f"see {self.log_file or 'its output'}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise PotdError(f"log server did not become healthy within {timeout}s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
