"""Storage failures are visible and recoverable (issue 14 item 6), on a real, small file
system: a tmpfs of a few MiB holding the log database, filled up while the server runs.

A write that fails in storage is answered 503 with its cause, /health says so (503),
the server's log names it, the client raises LogStorageFailing at once with a hint; once
space is freed the server takes writes again by itself, and every acknowledged entry is
in the log, at its index, under a consistent signed tree.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ledger.client import LogClient, LogStorageFailing
from ledger.log import Log
from tests.server_helpers import LogServer, Trainer


@contextlib.contextmanager
def small_disk(where: Path, size: str = "6m") -> Iterator[Path]:
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount permission): "
                    f"{r.stderr.strip()[:200]}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    return filler


def remount(disk: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(disk)], check=True,
                   capture_output=True)


# (a read-only remount would be another real fault, but the kernel refuses it, EBUSY,
# while the server holds the database open for writing)
def test_disk_full_is_reported_and_recovered(tmp_path: Path) -> None:
    fault, cause = "full", "full"
    with small_disk(tmp_path / "disk") as disk:
        srv = LogServer(disk, "--open-registration")
        srv.dir = tmp_path  # the server's stderr stays off the small disk
        with srv:
            t = Trainer()
            acked: dict[int, bytes] = {}

            def add(st: bytes) -> httpx.Response:
                r = httpx.post(srv.url + "/add", content=st, timeout=10)
                if r.status_code == 200:
                    acked[r.json()["index"]] = st
                return r

            assert add(t.opened).status_code == 200
            for _ in range(5):
                assert add(t.step(note="x" * 20_000)).status_code == 200
            filler = fill(disk) if fault == "full" else None
            if fault == "read-only":
                remount(disk, "ro")
            t0 = time.monotonic()
            failed = None
            for _ in range(100):  # the WAL may still have room for a few
                st = t.step(note="x" * 40_000)
                r = add(st)
                if r.status_code != 200:
                    failed = r
                    break
            assert failed is not None, "the full disk never failed a write"
            assert failed.status_code == 503 and failed.headers["Retry-After"] == "1"
            err = failed.json()
            assert err["error"] == "storage"
            assert cause in err["detail"] and "cannot rollback" not in err["detail"]
            assert "free disk space" in err["hint"]
            assert time.monotonic() - t0 < 10
            h = httpx.get(srv.url + "/health", timeout=5)
            assert h.status_code == 503 and h.json()["status"] == "storage_failed"
            assert cause in h.json()["detail"]
            assert "storage failure" in srv.stderr() and cause in srv.stderr()
            client = LogClient(srv.url, srv.vkey, timeout=5)
            t1 = time.monotonic()
            with pytest.raises(LogStorageFailing) as e:
                client.add(st)
            assert time.monotonic() - t1 < 5
            assert cause in e.value.message and "resumes by itself" in e.value.hint
            # remove the cause: the server recovers by itself (its storage probe)
            if filler is not None:
                os.unlink(filler)
            else:
                remount(disk, "rw")
            deadline = time.monotonic() + 10
            while httpx.get(srv.url + "/health", timeout=5).status_code != 200:
                assert time.monotonic() < deadline, "/health did not recover"
                time.sleep(0.1)
            assert "recovered" in srv.stderr()
            receipt = client.add(st)  # the statement that failed, now stored
            acked[receipt.index] = st
            for _ in range(3):
                assert add(t.step()).status_code == 200
        log = Log.open(str(srv.db))  # verifies the latest checkpoint against the tree
        assert log.size == len(acked) == max(acked) + 1
        for idx, st in acked.items():
            assert log.entries(idx, idx + 1) == [st]
        log.store.close()
