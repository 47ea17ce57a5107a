"""``potd ledger publish``: a static tlog-tiles directory written incrementally (tiles
and bundles once, the checkpoint last), verified by ``potd auditor verify-log`` through
a static loopback web server while writes go on."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_helpers import POTD, REPO, LogServer, Trainer, potd

from ledger.log import Log
from ledger.note import Signer, open_checkpoint
from ledger.publish import publish_once


def test_publish_writes_each_tile_once_and_the_checkpoint_last(tmp_path: Path) -> None:
    log = Log.create(str(tmp_path / "log.db"), Signer.generate("potd.example/pub"))
    out = str(tmp_path / "site")
    log.append([b"e%d" % i for i in range(300)])
    size, written = publish_once(log, out, fsync=False)
    assert size == 300 and written > 3
    full = Path(out, "tile", "0", "000")
    before = full.stat().st_mtime_ns
    assert publish_once(log, out, fsync=False) == (300, 1)  # only the checkpoint again
    log.append([b"f%d" % i for i in range(300)])
    size, written = publish_once(log, out, fsync=False)
    assert size == 600 and full.stat().st_mtime_ns == before
    cp = open_checkpoint(Path(out, "checkpoint").read_bytes(), log.verifier)
    assert cp.size == 600
    # old partial tiles stay: they are still right for the older checkpoint
    assert Path(out, "tile", "entries", "001.p", "44").exists()
    assert not list(Path(out).rglob(".tmp-*"))


@pytest.fixture
def static_site(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield site, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_publish_follow_verified_by_auditor_while_writes_go_on(
        tmp_path: Path, static_site: tuple[Path, str], backend: str,
        request: pytest.FixtureRequest) -> None:
    site, url = static_site
    db = None if backend == "sqlite" else str(request.getfixturevalue("pg_url"))
    (tmp_path / "srv").mkdir()
    server = LogServer(tmp_path / "srv", "--open-registration", db=db)
    server.start()
    shutil.rmtree(site)
    pub = subprocess.Popen([*POTD, "ledger", "publish", "--db", str(server.db), "--out",
                            str(site), "--follow", "--interval", "0.1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, text=True)
    stop = threading.Event()

    def write() -> None:
        t = Trainer()
        with server.client() as c:
            c.post("/add", content=t.opened).raise_for_status()
            while not stop.is_set():
                c.post("/add-batch", content=b"[" + b",".join(t.steps(37)) + b"]"
                       ).raise_for_status()

    writer = threading.Thread(target=write)
    writer.start()
    sizes = []
    try:
        state = str(tmp_path / "state")
        for _ in range(3):
            deadline = time.monotonic() + 60
            while not (site / "checkpoint").exists() and time.monotonic() < deadline \
                    and pub.poll() is None:
                time.sleep(0.05)
            if not (site / "checkpoint").exists():  # say why, not just a 404 later
                pub.kill()
                _, err = pub.communicate(timeout=30)
                pytest.fail(f"publish --follow wrote no checkpoint (exit "
                            f"{pub.returncode}): {err[-2000:]}")
            r = potd("auditor", "verify-log", "--log", url, "--vkey", str(server.vkey),
                     "--state", state, "--json")
            assert r.returncode == 0, r.stdout + r.stderr
            sizes.append(json.loads(r.stdout)["size"])
            time.sleep(0.3)
    finally:
        stop.set()
        writer.join()
        pub.terminate()
        out, err = pub.communicate(timeout=30)
        server.stop()
    assert pub.returncode == 0, err
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0], sizes
    lines = [json.loads(x) for x in out.splitlines()]
    assert len(lines) >= 3 and [x["size"] for x in lines] == sorted(x["size"] for x in lines)
    assert not [p for p in site.rglob(".tmp-*")]
    assert os.path.exists(site / "tile" / "entries")
