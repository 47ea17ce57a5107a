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


class _PrecompressedStatic(http.server.SimpleHTTPRequestHandler):
    """A plain static server configured as the README says for ``--gzip-bundles``: file
    bytes as stored, plus ``Content-Encoding: gzip`` on /tile/entries/ (if ``label``)."""

    label = True

    def do_GET(self) -> None:  # noqa: N802
        path = Path(self.directory) / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        if self.label and self.path.startswith("/tile/entries/"):
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def _serve(root: Path, label: bool) -> http.server.ThreadingHTTPServer:
    cls = type("H", (_PrecompressedStatic,), {"label": label})

    def handler(*a: object, **kw: object) -> _PrecompressedStatic:
        return cls(*a, directory=str(root), **kw)  # type: ignore[no-any-return]

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.mark.parametrize("command", ["export", "publish"])
def test_precompressed_bundles_from_export_and_publish(tmp_path: Path, command: str) -> None:
    from ledger.note import Signer

    key = Signer.generate("potd.example/pre")
    log = Log.create(str(tmp_path / "log.db"), key)
    log.append([b"entry %d " % i * (i % 40 + 1) for i in range(300)])  # a full bundle + 44
    log.store.close()
    out = tmp_path / "mirror"
    r = CliRunner().invoke(main, ["ledger", command, "--db", str(tmp_path / "log.db"),
                                  "--out", str(out), "--gzip-bundles"])
    assert r.exit_code == 0, r.output
    for rel in ("tile/entries/000", "tile/entries/001.p/44"):
        assert (out / rel).read_bytes()[:2] == b"\x1f\x8b"  # stored compressed
    assert (out / "checkpoint").read_bytes().startswith(b"potd.example/pre\n")  # plain
    assert (out / "tile/0/000").stat().st_size == 256 * 32  # hash tiles plain
    for label, ok in ((True, True), (False, False)):
        srv = _serve(out, label)
        try:
            url = f"http://127.0.0.1:{srv.server_address[1]}"
            run = CliRunner().invoke(main, ["auditor", "verify-log", "--log", url, "--vkey",
                                            str(key.verifier), "--state",
                                            str(tmp_path / f"st{label}"), "--json"])
        finally:
            srv.shutdown()
            srv.server_close()
        if ok:
            assert run.exit_code == 0, run.output
            assert json.loads(run.stdout)["size"] == 300
        else:  # served without the header: a named failure, not a traceback
            assert run.exit_code == 1, run.output
            assert "Traceback" not in run.output and "bundle" in run.output, run.output
