"""A throwaway PostgreSQL cluster for tests: ``initdb`` + ``pg_ctl`` on a temporary
directory and a free loopback port, stopped (and deleted) afterwards.

PostgreSQL refuses to run as root, so when the tests run as root (CI on a clean
machine) the server runs as ``nobody``. Without the PostgreSQL binaries (Debian package
``postgresql``) or psycopg, :func:`require_postgres` skips the caller with the reason,
unless ``POTD_REQUIRE_POSTGRES=1`` (set by .ci/run), which turns the skip into a failure.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest


def pg_bindir() -> str | None:
    """The directory holding initdb and pg_ctl, or None."""
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(found)
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                  key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return os.path.dirname(dirs[-1]) if dirs else None


def require_postgres() -> str:
    """The PostgreSQL bin directory; skips (or fails) the caller when unusable."""
    reason = ""
    bindir = pg_bindir()
    if bindir is None:
        reason = "PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql"
    else:
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError:
            reason = "psycopg / psycopg_pool not installed: pip install 'potd[pg]'"
    if reason:
        if os.environ.get("POTD_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + " [POTD_REQUIRE_POSTGRES=1 forbids skipping]", pytrace=False)
        pytest.skip(reason)
    assert bindir is not None
    return bindir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """One running cluster; :meth:`new_database` gives each test an empty database."""

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.dir = tempfile.mkdtemp(prefix="potd-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = _free_port()
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:  # PostgreSQL refuses root: run it as nobody
            import pwd
            pw = pwd.getpwnam("nobody")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        self._names = itertools.count()
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        p = subprocess.run([os.path.join(self.bindir, tool), *args], capture_output=True,
                           text=True, cwd=self.dir, timeout=120, **self._as)
        if p.returncode != 0:
            raise RuntimeError(f"{tool} failed: {p.stdout}\n{p.stderr}")

    def start(self) -> None:
        # fsync off: these tests kill frontends, never the machine
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-w",
                  "-o", f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off "
                        "-c max_connections=200", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        import psycopg

        name = f"t{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def cluster() -> Iterator[PgCluster]:
    c = PgCluster(require_postgres())
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    with cluster() as c:
        yield c


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A new, empty database on the session's cluster."""
    return pg_cluster.new_database()
