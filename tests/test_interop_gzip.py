"""Logs that serve entry bundles with ``Content-Encoding: gzip`` (C2SP tlog-tiles allows it
without negotiation; static hosts of pre-compressed objects do it): ``potd auditor
verify-log``, ``runs`` and ``audit`` read them, from ``potd ledger serve --gzip-bundles``
and from a plain static server over an exported mirror. Bombs are refused by
``ledger.peer`` (tests/test_hostile_peers.py: a 256 MiB gzip bomb as a bundle).
"""

from __future__ import annotations

import gzip
import http.client
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from e2e import Env, make_env

from ledger.cli import main
from ledger.export import export_static
from ledger.log import Log


@pytest.fixture
def gz_env(tmp_path: Path) -> Iterator[Env]:
    yield from make_env(tmp_path, "--gzip-bundles")


def _get(url: str, path: str) -> http.client.HTTPResponse:
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port)
    c.request("GET", path)
    return c.getresponse()


@pytest.mark.slow
def test_auditor_reads_a_log_serving_gzip_bundles(gz_env: Env) -> None:
    s = gz_env.train()
    r = _get(gz_env.url, f"/tile/entries/000.p/{len(s.plan) + 2}")
    raw = r.read()
    assert r.getheader("Content-Encoding") == "gzip" and gzip.decompress(raw)[:2] != raw[:2]
    vkey, d = str(gz_env.log_key.verifier), gz_env.dir
    run = CliRunner().invoke(main, ["auditor", "verify-log", "--log", gz_env.url, "--vkey", vkey,
                                    "--state", str(d / "st1"), "--json"])
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)["size"] == len(s.plan) + 2
    run = CliRunner().invoke(main, ["auditor", "runs", "--log", gz_env.url, "--vkey", vkey,
                                    "--state", str(d / "st2"), "--json"])
    assert run.exit_code == 0, run.output
    assert [x["run"] for x in json.loads(run.stdout)["runs"]] == [s.run_id]
    out = d / "report.json"
    run = CliRunner().invoke(main, ["auditor", "audit", "--log", gz_env.url, "--vkey", vkey,
                                    "--run", s.run_id, "--evidence", str(d / "ev-run"),
                                    "--state", str(d / "st3"), "--samples", "2", "-q",
                                    "--json", str(out)])
    assert run.exit_code == 0, run.output
    assert json.loads(out.read_text())["verdict"] == "pass"


class _GzipStatic(http.server.SimpleHTTPRequestHandler):
    """A static host of pre-compressed objects: bundles go out gzip-encoded, unasked."""

    def do_GET(self) -> None:  # noqa: N802
        path = Path(self.directory) / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        if self.path.startswith("/tile/entries/"):
            data = gzip.compress(data)
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_verify_log_reads_a_static_mirror_with_gzip_bundles(tmp_path: Path) -> None:
    from ledger.note import Signer

    key = Signer.generate("potd.example/static")
    log = Log.create(str(tmp_path / "log.db"), key)
    log.append([b"entry %d " % i * (i % 40 + 1) for i in range(300)])  # a full bundle + 44
    export_static(log, tmp_path / "mirror", fsync=False)

    def handler(*a: object, **kw: object) -> _GzipStatic:
        return _GzipStatic(*a, directory=str(tmp_path / "mirror"), **kw)  # type: ignore[arg-type]

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        assert _get(url, "/tile/entries/000").getheader("Content-Encoding") == "gzip"
        run = CliRunner().invoke(main, ["auditor", "verify-log", "--log", url, "--vkey",
                                        str(key.verifier), "--state", str(tmp_path / "st"),
                                        "--json"])
        assert run.exit_code == 0, run.output
        assert json.loads(run.stdout)["size"] == 300
    finally:
        srv.shutdown()
        srv.server_close()
