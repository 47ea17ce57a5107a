"""Helpers for the log server tests: a real ``potd ledger serve`` process on a free
loopback port with a real SQLite file, and trainers that build chained statements.

Only plain httpx is used to talk to the server, so these tests do not depend on
``ledger.client``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from ledger.log import Log
from ledger.merkle import leaf_hash
from ledger.note import Signer, Verifier
from ledger.statement import JSON, build_statement, run_id

REPO = Path(__file__).resolve().parents[1]
POTD = [sys.executable, "-c", "from ledger.cli import main; main()"]


def potd(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the potd CLI in a subprocess."""
    return subprocess.run([*POTD, *args], capture_output=True, text=True, cwd=REPO, timeout=60)


class LogServer:
    """A ``potd ledger serve`` subprocess. The database and key persist across restarts."""

    def __init__(self, tmp: Path, *args: str, origin: str = "potd.test/log",
                 db: str | None = None) -> None:
        self.dir = tmp
        self.db: Path | str = db or tmp / "log.db"
        self.keyfile = tmp / "log.key"
        self.args = list(args)
        if not self.keyfile.exists():
            self.signer = Signer.generate(origin)
            self.keyfile.write_text(self.signer.private_string())
            Log.create(str(self.db), self.signer).store.close()
        else:
            self.signer = Signer.parse(self.keyfile.read_text())
        self.vkey: Verifier = self.signer.verifier
        self.proc: subprocess.Popen[bytes] | None = None
        self.preexec: Any = None  # run in the server process before it starts
        self.port = 0
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> LogServer:
        errpath = self.dir / f"server-{self.restarts}.err"
        self.restarts += 1
        self.errfile = errpath
        with open(errpath, "wb") as err:
            self.proc = subprocess.Popen(
                [*POTD, "ledger", "serve", "--db", str(self.db), "--key", str(self.keyfile),
                 "--port", "0", *self.args], stdout=subprocess.DEVNULL, stderr=err, cwd=REPO,
                preexec_fn=self.preexec)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", errpath.read_text())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n"
                                   + errpath.read_text())
            time.sleep(0.02)
        else:
            self.kill()
            raise RuntimeError("server did not start:\n" + errpath.read_text())
        r = httpx.get(self.url + "/health", timeout=10)
        assert r.status_code == 200, r.text
        return self

    def stderr(self) -> str:
        return self.errfile.read_text()

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 30), **kw)

    def size(self) -> int:
        return int(httpx.get(self.url + "/health", timeout=10).json()["size"])

    def checkpoint(self) -> str:
        return httpx.get(self.url + "/checkpoint", timeout=10).text

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM: graceful shutdown; returns the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def __enter__(self) -> LogServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


class Trainer:
    """One trainer key and one run: builds the run.open and chained steps, on demand."""

    counter = 0

    def __init__(self, signer: Signer | None = None, **open_extra: JSON) -> None:
        Trainer.counter += 1
        self.signer = signer or Signer.generate(f"trainer{Trainer.counter}.test")
        self.open_body: dict[str, JSON] = {
            "seed_commitment": os.urandom(32).hex(),
            "dataset": {"root": os.urandom(32).hex(), "size": 1000},
            "recipe": {"name": "test", "n": Trainer.counter}, **open_extra}
        self.run = run_id(self.open_body)
        self.opened = build_statement("run.open", self.run, 0, self.open_body, self.signer)
        self.statements = [self.opened]

    @property
    def vkey(self) -> str:
        return str(self.signer.verifier)

    def step(self, **body_extra: JSON) -> bytes:
        """The next step statement (appended to ``statements``)."""
        seq = len(self.statements)
        body: dict[str, JSON] = {"step": seq - 1, "epoch": 0, "batch_root": os.urandom(32).hex(),
                                 "batch_size": 4, "loss": "1.5",
                                 "prev": leaf_hash(self.statements[-1]).hex()}
        body.update(body_extra)
        st = build_statement("step", self.run, seq, body, self.signer)
        self.statements.append(st)
        return st

    def steps(self, n: int) -> list[bytes]:
        return [self.step() for _ in range(n)]

    def close(self) -> bytes:
        seq = len(self.statements)
        st = build_statement("run.close", self.run, seq, {
            "steps": seq - 1, "prev": leaf_hash(self.statements[-1]).hex()}, self.signer)
        self.statements.append(st)
        return st


def batch_body(statements: list[bytes]) -> bytes:
    return b"[" + b",".join(statements) + b"]"
