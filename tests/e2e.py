"""Shared setup for end-to-end tests: a real log server subprocess on a loopback port with
a real SQLite file, a trainer key, and helpers to train and audit."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from auditor.audit import Audit, AuditOptions
from ledger.client import LogClient
from ledger.devserver import ServerProcess
from ledger.log import Log
from ledger.note import Signer
from prover.recipes import get_recipe
from prover.session import TrainingSession

SMALL = {"epochs": 1}  # digits-mlp: 45 steps, a checkpoint every 5


@dataclass
class Env:
    dir: Path
    log_key: Signer
    trainer: Signer
    server: ServerProcess

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, **kw: Any) -> LogClient:
        return LogClient(self.url, self.log_key.verifier, **kw)

    def session(self, tag: str = "run", cls: type[TrainingSession] = TrainingSession,
                recipe: str = "digits-mlp", **kw: Any) -> TrainingSession:
        over = {**SMALL, **kw.pop("overrides", {})}
        return cls(get_recipe(recipe, **over), self.client(), self.trainer,
                   self.dir / f"ev-{tag}", self.dir / f"{tag}.spool", **kw)

    def train(self, tag: str = "run", **kw: Any) -> TrainingSession:
        s = self.session(tag, **kw)
        s.open()
        for b in s.batches():
            s.train_step(b)
        s.close()
        return s

    def audit(self, run: str, evidence: Path | str, state: str = "state",
              **kw: Any) -> dict[str, Any]:
        kw.setdefault("samples", 1000)
        with self.client(state_dir=str(self.dir / state), proofs="tiles") as c:
            return Audit(c, AuditOptions(run=run, evidence=str(evidence), **kw)).run()


def make_env(tmp: Path, *extra: str) -> Iterator[Env]:
    log_key = Signer.generate("potd.example/test-log")
    (tmp / "log.key").write_text(log_key.private_string())
    Log.create(str(tmp / "log.db"), log_key).store.close()
    srv = ServerProcess(str(tmp / "log.db"), str(tmp / "log.key"),
                        extra=["--open-registration", *extra],
                        log_file=str(tmp / "server.log")).start()
    e = Env(tmp, log_key, Signer.generate("trainer.example/alice"), srv)
    try:
        yield e
    finally:
        srv.stop()
        e.server.stop()  # a test may have restarted the server


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from make_env(tmp_path)


def checks(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


def drive_data_parallel(s: Any, procs: list[Any]) -> None:
    """Train a :class:`~prover.distributed.DataParallelSession` whose other ranks are the
    local processes ``procs`` (``start_local``) through its whole run, then close it and
    stop them; on a failure stop everything at once and re-raise."""
    from prover.distributed import stop_local

    try:
        s.open()
        for b in s.batches():
            s.train_step(b)
    except BaseException:
        s._shutdown()
        stop_local(procs, timeout=0)
        raise
    s.close()
    stop_local(procs)
    assert all(p.exitcode == 0 for p in procs)


class LoopbackServer:
    """A loopback HTTP server answering every GET with ``body(handler)`` (a hostile or
    failing peer's behaviour); it records the paths asked for."""

    def __init__(self, body: Callable[[http.server.BaseHTTPRequestHandler], None]) -> None:
        self.paths: list[str] = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                outer.paths.append(self.path)
                try:
                    body(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *a: Any) -> None:
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.srv.server_port}"

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()
