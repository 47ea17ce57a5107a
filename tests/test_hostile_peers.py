"""Issue 13, the client side: bounded against hostile peers.

Real loopback HTTP servers misbehave on purpose (a gzip bomb, an endless body, a byte
every 0.3 s in the headers or the body, a checkpoint note of a megabyte, a validly signed
checkpoint claiming 2^40 entries); the log client, the auditor's tile fetches, the
evidence source and the witness client must each answer with a typed error within
bounded time and memory. Also: evidence files that are devices or FIFOs, crafted
safetensors headers, a deeply nested manifest, non-finite numbers in the JSON report,
and the honest safetensors file whose header length is 128 mod 256.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from auditor.jsonout import report_json
from auditor.logview import fetch_entries
from ledger.cli import main
from ledger.client import LogClient, LogUnavailable
from ledger.errors import DeadlineExceeded, LimitError, MalformedError, ResponseTooLarge
from ledger.note import Checkpoint, Signer, sign_checkpoint
from ledger.peer import MAX_CHECKPOINT, Peer
from ledger.tiles import ENTRIES_LEVEL, Tile
from ledger.witness import WitnessUnavailable
from ledger.witness_client import request_cosignature
from prover.evidence import EvidenceError, EvidenceSource
from prover.hashing import hash_safetensors_bytes, parse_safetensors

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20

# -- hostile servers -------------------------------------------------------------------

Handler = Callable[[http.server.BaseHTTPRequestHandler], None]
_stop = threading.Event()


def _bomb() -> bytes:
    """gzip of 256 MiB of zeros (about 256 KiB), built without holding the zeros."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MB)
    return b"".join([z.compress(zeros) for _ in range(256)] + [z.flush()])


BOMB = _bomb()


def send(body: bytes, status: int = 200, **headers: str) -> Handler:
    def go(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k.replace("_", "-"), v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
    return go


gzip_bomb = send(BOMB, Content_Encoding="gzip")
gzip_bomb.__name__ = "gzip_bomb"


def endless(h: http.server.BaseHTTPRequestHandler) -> None:
    """No Content-Length, a body that never ends (the client must stop reading)."""
    h.send_response(200)
    h.end_headers()
    chunk = b"\0" * (64 << 10)
    while not _stop.is_set():
        h.wfile.write(chunk)


def trickle_body(h: http.server.BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Length", "1000")
    h.end_headers()
    h.wfile.flush()
    while not _stop.wait(0.3):
        h.wfile.write(b"x")
        h.wfile.flush()


def trickle_headers(h: http.server.BaseHTTPRequestHandler) -> None:
    h.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
    while not _stop.wait(0.3):
        h.wfile.write(b"a")
        h.wfile.flush()


class Hostile:
    """A threaded loopback HTTP server answering each path with a given behaviour
    (404 for the rest)."""

    def __init__(self, routes: dict[str, Handler]) -> None:
        routes_ = routes

        class H(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                go = routes_.get(self.path.split("?")[0], send(b"not found", 404))
                with contextlib.suppress(OSError):
                    go(self)

            do_GET = do_POST = _any

            def log_message(self, *a: Any) -> None:
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def hostile() -> Iterator[Callable[[dict[str, Handler]], Hostile]]:
    servers: list[Hostile] = []
    _stop.clear()

    def make(routes: dict[str, Handler]) -> Hostile:
        servers.append(Hostile(routes))
        return servers[-1]

    yield make
    _stop.set()
    for s in servers:
        s.close()


# -- bounds: wall time (the call runs in a thread) and memory (RSS sampled) -------------

def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bounded(fn: Callable[[], Any], seconds: float, rss_mb: int = 120) -> BaseException | Any:
    """Run ``fn``; fail unless it ends within ``seconds`` and grows the RSS by less than
    ``rss_mb``. Returns what it raised (or returned)."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out.append(e)

    linux = os.path.exists("/proc/self/statm")
    base = peak = _rss() if linux else 0
    t = threading.Thread(target=run, daemon=True)
    t0 = time.monotonic()
    t.start()
    while t.is_alive() and time.monotonic() - t0 < seconds:
        t.join(0.01)
        if linux:
            peak = max(peak, _rss())
    elapsed = time.monotonic() - t0
    assert not t.is_alive(), f"still running after {seconds} s"
    assert peak - base < rss_mb * MB, f"RSS grew by {(peak - base) // MB} MB"
    assert out, "no result"
    print(f"ended in {elapsed:.2f} s, RSS +{(peak - base) // MB} MB")
    return out[0]


def log_key() -> Signer:
    return Signer.generate("hostile.example/log")


def signed(key: Signer, size: int, root: bytes = b"\x11" * 32) -> bytes:
    return sign_checkpoint(Checkpoint(key.name, size, root), key).to_bytes()


# -- 1. an honest safetensors file whose header length is 128 mod 256 ------------------

def test_header_length_128_mod_256_loads(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from prover.evidence import EvidenceStore
    from prover.hashing import hash_tensors

    for n in range(1, 300):  # a name length that puts 0x80 in the first byte
        tensors = {"w" * n: torch.arange(4, dtype=torch.float32)}
        from safetensors.torch import save
        if save(tensors)[0] == 0x80:
            break
    else:
        pytest.fail("no name length gives a header of 128 mod 256 bytes")
    store = EvidenceStore(tmp_path)
    name = store.put(tensors)
    data = (tmp_path / "objects" / name).read_bytes()
    assert data[0] == 0x80 and struct.unpack("<Q", data[:8])[0] % 256 == 128
    got = EvidenceSource(str(tmp_path)).load(name, hash_tensors(tensors), "blake3")
    assert torch.equal(got["w" * n], tensors["w" * n])


def test_header_length_128_mod_256_audits(tmp_path: Path, monkeypatch: Any) -> None:
    """End to end: a run whose weights file starts with 0x80 passes the audit."""
    pytest.importorskip("torch")
    from e2e import make_env

    spec = "long_names_recipe:LongNames"
    for env in make_env(tmp_path):
        s = env.train(recipe=spec, overrides={"hidden": 16})
        first = s.evidence.root / "objects"
        assert any(p.read_bytes()[:1] == b"\x80" for p in first.iterdir())
        report = env.audit(s.run_id, s.evidence.root, samples=2, recipe=spec)
        assert report["verdict"] == "pass", [(c["name"], c["summary"][:300])
                                             for c in report["checks"] if c["status"] != "pass"]


def test_pickle_and_zip_are_still_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "objects").mkdir()
    for data in (b"\x80\x04\x95" + b"\0" * 40, b"PK\x03\x04" + b"\0" * 40):
        name = hashlib.sha256(data).hexdigest() + ".safetensors"
        (tmp_path / "objects" / name).write_bytes(data)
        with pytest.raises(EvidenceError, match="pickle/zip, not safetensors"):
            EvidenceSource(str(tmp_path)).load(name, "00" * 32, "blake3")


# -- 2. a log claiming a huge tree --------------------------------------------------------

def test_checkpoint_of_size_2_40_is_refused_before_any_work(hostile: Any,
                                                           tmp_path: Path) -> None:
    key = log_key()
    srv = hostile({"/checkpoint": send(signed(key, 1 << 40))})
    with LogClient(srv.url, key.verifier, proofs="tiles") as c:
        cp = c.checkpoint()
        e = bounded(lambda: fetch_entries(c, cp), 2.0)
    assert isinstance(e, LimitError) and "2^32" not in e.message and str(1 << 40) in e.message
    r = CliRunner().invoke(main, ["auditor", "verify-log", "--log", srv.url, "--vkey",
                                  str(key.verifier), "--state", str(tmp_path / "st")])
    assert r.exit_code == 1 and "more than" in r.output, r.output
    out = tmp_path / "report.json"
    r = CliRunner().invoke(main, ["auditor", "audit", "--log", srv.url, "--vkey",
                                  str(key.verifier), "--run", "ab" * 32, "--evidence",
                                  str(tmp_path), "--state", str(tmp_path / "st2"), "-q",
                                  "--json", str(out)])
    checks = {c["name"]: c for c in json.loads(out.read_text())["checks"]}
    assert r.exit_code == 1 and checks["log.entries"]["status"] == "fail", r.output
    r = CliRunner().invoke(main, ["auditor", "runs", "--log", srv.url, "--vkey",
                                  str(key.verifier), "--state", str(tmp_path / "st3"),
                                  "--max-tree-size", "1000"])
    assert r.exit_code == 1 and "more than the 1000" in r.output, r.output


def test_audit_reports_an_oversized_checkpoint_as_a_failed_check(hostile: Any,
                                                                 tmp_path: Path) -> None:
    key = log_key()
    srv = hostile({"/checkpoint": gzip_bomb})
    out = tmp_path / "report.json"
    r = CliRunner().invoke(main, ["auditor", "audit", "--log", srv.url, "--vkey",
                                  str(key.verifier), "--run", "ab" * 32, "--evidence",
                                  str(tmp_path), "--state", str(tmp_path / "st"), "-q",
                                  "--json", str(out)])
    checks = {c["name"]: c for c in json.loads(out.read_text())["checks"]}
    assert r.exit_code == 1 and checks["log.checkpoint"]["status"] == "fail", r.output
    assert "decoded" in checks["log.checkpoint"]["summary"]


def test_checkpoint_of_size_2_32_fetches_through_a_window(hostile: Any) -> None:
    """Within the bound, work starts at once and stops at the first missing bundle: no
    list of 16M tiles, no queue of 16M futures."""
    key = log_key()
    srv = hostile({"/checkpoint": send(signed(key, 1 << 32))})
    with LogClient(srv.url, key.verifier, proofs="tiles", retries=0) as c:
        cp = c.checkpoint()
        e = bounded(lambda: fetch_entries(c, cp, workers=4), 3.0, rss_mb=60)
    assert type(e).__name__ == "LogRejected" and e.status == 404


def test_oversized_checkpoint_note_is_refused(hostile: Any) -> None:
    key = log_key()
    note = signed(key, 5)
    big = note + b"\n".join([b"\xe2\x80\x94 padding AAAA"] * (MB // 16)) + b"\n"
    srv = hostile({"/checkpoint": send(big)})
    with LogClient(srv.url, key.verifier, retries=0) as c:
        e = bounded(c.checkpoint, 2.0)
    assert isinstance(e, ResponseTooLarge) and str(MAX_CHECKPOINT) in e.message


# -- 3. response bodies: bombs, endless bodies, trickles ------------------------------

def test_gzip_bomb_checkpoint_is_capped_decoded(hostile: Any) -> None:
    key = log_key()
    srv = hostile({"/checkpoint": gzip_bomb})
    with LogClient(srv.url, key.verifier, retries=0) as c:
        e = bounded(c.checkpoint, 3.0)
    assert isinstance(e, ResponseTooLarge) and "decoded" in e.message


def test_gzip_bomb_entry_bundle_is_capped_by_the_bundle_size(hostile: Any) -> None:
    key = log_key()
    srv = hostile({"/checkpoint": send(signed(key, 256)), "/tile/entries/000": gzip_bomb})
    with LogClient(srv.url, key.verifier, proofs="tiles", retries=0) as c:
        cp = c.checkpoint()
        e = bounded(lambda: fetch_entries(c, cp), 5.0, rss_mb=120)  # a bundle: <= 16 MiB
    assert isinstance(e, ResponseTooLarge)


def test_endless_hash_tile_is_capped_at_8_kib(hostile: Any) -> None:
    key = log_key()
    srv = hostile({"/tile/0/000": endless})
    with LogClient(srv.url, key.verifier, retries=0) as c:
        e = bounded(lambda: c.tile(Tile(0, 0)), 2.0)
    assert isinstance(e, ResponseTooLarge) and "8192" in e.message


@pytest.mark.parametrize("behaviour", [trickle_body, trickle_headers])
def test_trickle_hits_the_total_deadline(hostile: Any, behaviour: Handler) -> None:
    key = log_key()
    srv = hostile({"/checkpoint": behaviour, "/tile/entries/000": behaviour})
    with Peer(deadline=1.0) as p:
        e = bounded(lambda: p.get(srv.url + "/checkpoint", limit=MAX_CHECKPOINT), 2.5)
    assert isinstance(e, DeadlineExceeded)
    with LogClient(srv.url, key.verifier, timeout=1.0, retries=0) as c:
        e = bounded(c.checkpoint, 2.5)
        assert isinstance(e, LogUnavailable) and "within 1 s" in e.message
        e = bounded(lambda: c.tile(Tile(ENTRIES_LEVEL, 0)), 2.5)
        assert isinstance(e, LogUnavailable)


def test_evidence_over_http_is_bounded(hostile: Any) -> None:
    name = "ab" * 32 + ".safetensors"
    srv = hostile({"/manifest.json": endless, f"/objects/{name}": gzip_bomb,
                   "/slow/manifest.json": trickle_body})
    src = EvidenceSource(srv.url, max_object=MB, max_manifest=MB, deadline=1.0)
    e = bounded(src.manifest, 2.0)
    assert isinstance(e, EvidenceError) and "more than" in e.message
    e = bounded(lambda: src.get_bytes(name), 2.0)
    assert isinstance(e, EvidenceError) and "decoded" in e.message
    e = bounded(EvidenceSource(srv.url + "/slow", deadline=1.0).manifest, 2.5)
    assert isinstance(e, EvidenceError) and "within 1 s" in e.message


@pytest.mark.parametrize("behaviour", [endless, gzip_bomb, trickle_body])
def test_hostile_witness_cannot_hold_the_log(hostile: Any, behaviour: Handler) -> None:
    """What the log server's witness publisher uses (``WitnessTarget.http``)."""
    from ledger.witnessing import WitnessTarget

    key = log_key()
    wkey = Signer.generate("hostile.example/witness", alg=0x04)
    srv = hostile({"/add-checkpoint": behaviour})
    target = WitnessTarget(srv.url, wkey.verifier)
    target.http.deadline = 1.0
    e = bounded(lambda: request_cosignature(target.url, 0, [], signed(key, 1),
                                            witness_key=wkey.verifier, client=target.http), 2.5)
    assert isinstance(e, WitnessUnavailable)
    target.http.close()


# -- 4. evidence files that are not regular files --------------------------------------

def _in_child(code: str, seconds: float = 20) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child with 1.5 GB of address space, so that the old behaviour
    (read /dev/zero forever, block on a FIFO) fails the test instead of the machine."""
    pre = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 29, 3 << 29))\n")
    return subprocess.run([sys.executable, "-c", pre + code], cwd=ROOT, capture_output=True,
                          text=True, timeout=seconds)


@pytest.mark.skipif(not os.path.exists("/dev/zero") or not hasattr(os, "mkfifo"),
                    reason="needs /dev/zero and FIFOs")
def test_device_and_fifo_evidence_files_are_refused(tmp_path: Path) -> None:
    objects = tmp_path / "objects"
    objects.mkdir()
    zero, fifo = "aa" * 32 + ".safetensors", "bb" * 32 + ".safetensors"
    (objects / zero).symlink_to("/dev/zero")
    os.mkfifo(objects / fifo)
    os.symlink("/dev/zero", tmp_path / "manifest.json")
    code = f"""
from prover.evidence import EvidenceError, EvidenceSource
src = EvidenceSource({str(tmp_path)!r})
for f in (lambda: src.get_bytes({zero!r}), lambda: src.get_bytes({fifo!r}), src.manifest):
    try:
        f()
        print("read")
    except EvidenceError as e:
        print("refused:", e.message)
"""
    t0 = time.monotonic()
    r = _in_child(code)
    assert time.monotonic() - t0 < 10
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and all("is not a regular file" in x for x in lines), r.stdout + \
        r.stderr[-2000:]


# -- 5. crafted safetensors headers, a nested manifest, non-finite numbers -------------

def _st(header: Any, body: bytes = b"\0" * 16, raw: bytes | None = None) -> bytes:
    h = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


def _t(**kw: Any) -> dict[str, Any]:
    return {"dtype": "F32", "shape": [4], "data_offsets": [0, 16], **kw}


CRAFTED = {
    "shape of a string": _st({"a": _t(shape=["x"])}),
    "negative dimension": _st({"a": _t(shape=[-1])}),
    "boolean dimension": _st({"a": _t(shape=[True, 4])}),
    "300 dimensions": _st({"a": _t(shape=[1] * 300)}),
    "300-character dtype": _st({"a": _t(dtype="F" * 300)}),
    "unknown dtype": _st({"a": _t(dtype="Q8")}),
    "lone surrogate name": _st(None, raw=b'{"\\ud800": ' + json.dumps(_t()).encode() + b"}"),
    "70k-character name": _st({"n" * 70_000: _t()}),
    "empty name": _st({"": _t()}),
    "nested 100k deep": _st(None, raw=b"{\"a\": " + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "repeated name": _st(None, raw=b'{"a": ' + json.dumps(_t()).encode() + b', "a": '
                         + json.dumps(_t()).encode() + b"}"),
    "offsets past the data": _st({"a": _t(data_offsets=[0, 32])}),
    "offsets not matching the shape": _st({"a": _t(shape=[3])}),
    "overlapping tensors": _st({"a": _t(), "b": _t()}, b"\0" * 32),
    "a gap at the end": _st({"a": _t()}, b"\0" * 20),
    "extra field": _st({"a": _t(extra=1)}),
    "offsets of floats": _st({"a": _t(data_offsets=[0.0, 16.0])}),
    "header length past the file": struct.pack("<Q", 1 << 40) + b"{}",
    "header not an object": _st([1, 2]),
    "metadata of numbers": _st({"__metadata__": {"a": 1}, "a": _t()}),
    "UTF-16 header": _st(None, raw='{"a": {}}'.encode("utf-16")),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_safetensors_headers_are_malformed(case: str) -> None:
    data = CRAFTED[case]
    with pytest.raises(MalformedError):
        hash_safetensors_bytes(data)


def test_crafted_header_through_the_evidence_source(tmp_path: Path) -> None:
    (tmp_path / "objects").mkdir()
    data = CRAFTED["300 dimensions"]
    name = hashlib.sha256(data).hexdigest() + ".safetensors"
    (tmp_path / "objects" / name).write_bytes(data)
    with pytest.raises(EvidenceError, match="not valid safetensors"):
        EvidenceSource(str(tmp_path)).load(name, "00" * 32, "blake3")


def test_a_valid_header_parses_in_name_order() -> None:
    data = _st({"b": _t(data_offsets=[16, 32]), "__metadata__": {"format": "pt"},
                "a": _t(dtype="I32")}, b"\0" * 32)
    start, entries = parse_safetensors(data)
    assert [e[0] for e in entries] == ["a", "b"] and start == len(data) - 32
    hash_safetensors_bytes(data)


def test_manifest_nested_100k_deep_is_malformed(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(EvidenceError, match="nested"):
        EvidenceSource(str(tmp_path)).manifest()
    (tmp_path / "manifest.json").write_bytes(b'{"a":' * 100 + b"1" + b"}" * 100)
    with pytest.raises(EvidenceError, match="nested deeper"):
        EvidenceSource(str(tmp_path)).manifest()


def test_report_json_is_strict_with_non_finite_losses(tmp_path: Path) -> None:
    from auditor.cli import _emit

    report = {"verdict": "fail", "losses": [[0, float("-inf")], [1, float("nan")],
                                            (2, float("inf")), [3, 1.5]],
              "checks": [{"name": "x", "status": "fail", "evidence": {"loss": float("nan")}}]}

    def strict(s: str) -> Any:
        return json.loads(s, parse_constant=lambda c: pytest.fail(f"non-JSON token {c}"))

    assert strict(report_json(report))["losses"] == [[0, "-Infinity"], [1, "NaN"],
                                                     [2, "Infinity"], [3, 1.5]]
    _emit(report, str(tmp_path / "r.json"), None, True)
    strict((tmp_path / "r.json").read_text())


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_silent_peer_hits_the_deadline_in_the_handshake(scheme: str) -> None:
    """A peer that accepts the connection and says nothing (before TLS, or before the
    status line) costs one deadline."""
    import socket

    lsock = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(lsock.accept()[0]), daemon=True).start()
    url = f"{scheme}://127.0.0.1:{lsock.getsockname()[1]}/checkpoint"
    try:
        with Peer(deadline=0.5) as p:
            e = bounded(lambda: p.get(url, limit=MAX_CHECKPOINT), 2.0)
        assert isinstance(e, DeadlineExceeded), e
    finally:
        lsock.close()
        for s in held:
            s.close()
