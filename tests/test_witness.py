"""The witness (C2SP tlog-witness + tlog-cosignature/v1), end to end.

Real processes: ``potd witness serve`` on a loopback port over a real SQLite file; logs
are real :class:`ledger.log.Log` databases. Cosignatures are checked with
``verify_cosignature`` and, independently, straight from the C2SP text with the
``cryptography`` package.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.cli import main
from ledger.cosignature import cosignature_message, verify_cosignature
from ledger.log import Log
from ledger.merkle import EMPTY_ROOT
from ledger.note import (
    ALG_COSIGNATURE_V1,
    Checkpoint,
    NoteSignature,
    Signer,
    Verifier,
    parse_note,
    sign_checkpoint,
)
from ledger.peer import Peer
from ledger.witness import (
    AddCheckpointRequest,
    BadRequestError,
    LogSignatureError,
    LogState,
    ProofError,
    RootMismatchError,
    SizeConflictError,
    UnknownLogError,
    Witness,
    WitnessState,
)
from ledger.witness_client import request_cosignature

try:
    from conftest import vectors_dir
except ImportError:  # tests/ became a package
    from tests.conftest import vectors_dir

WITNESS_NAME = "witness.example/w1"


# --- helpers ------------------------------------------------------------------------

def potd_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "potd"
    return [str(exe)] if exe.exists() else [sys.executable, "-c",
                                            "from ledger.cli import main; main()"]


class Server:
    """``potd witness serve`` in a child process on a free loopback port."""

    def __init__(self, db: Path, key: Path, errlog: Path) -> None:
        self.errlog = errlog
        self._err = errlog.open("w+b")
        self.proc = subprocess.Popen([*potd_cmd(), "witness", "serve", "--db", str(db),
                                      "--key", str(key), "--port", "0"], stderr=self._err)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            m = re.search(rb"listening on (http://127\.0\.0\.1:\d+)", errlog.read_bytes())
            if m:
                self.url = m.group(1).decode()
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise AssertionError("witness did not start:\n" + errlog.read_text(errors="replace"))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()


@pytest.fixture(scope="module")
def witness_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Signer]:
    d = tmp_path_factory.mktemp("wkey")
    signer = Signer.generate(WITNESS_NAME, ALG_COSIGNATURE_V1)
    key = d / "w.key"
    key.write_text(signer.private_string() + "\n")
    key.chmod(0o600)
    return key, signer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           witness_key: tuple[Path, Signer]) -> Iterator[tuple[Server, Path]]:
    d = tmp_path_factory.mktemp("witness")
    db = d / "witness.db"
    WitnessState(str(db)).close()
    s = Server(db, witness_key[0], d / "serve.err")
    yield s, db
    s.stop()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


@pytest.fixture
def peer() -> Iterator[Peer]:
    with Peer(deadline=10) as p:
        yield p


_counter = iter(range(10**6))


def new_log(tmp_path: Path, db: Path | None, origin: str | None = None,
            signer: Signer | None = None) -> Log:
    """A fresh real log; pinned in the witness database ``db`` unless ``db`` is None."""
    signer = signer or Signer.generate(origin or f"potd.example/log{next(_counter)}")
    log = Log.create(str(tmp_path / f"log{next(_counter)}.db"), signer)
    if db is not None:
        st = WitnessState(str(db))
        st.add_log(signer.name, signer.verifier)
        st.close()
    return log


def append(log: Log, n: int, tag: bytes = b"e") -> None:
    base = log.size
    log.append([tag + b"%d" % (base + i) for i in range(n)])


def body(old: int, proof: list[bytes], note: bytes | str) -> bytes:
    return AddCheckpointRequest(old, tuple(proof), note if isinstance(note, bytes)
                                else note.encode()).to_bytes()


def post(http: httpx.Client, url: str, data: bytes) -> httpx.Response:
    return http.post(url + "/add-checkpoint", content=data)


def c2sp_check(line: str, vkey: str, cp_text: str) -> int:
    """Check one cosignature line from the C2SP tlog-cosignature text alone; return its time.

    key ID = SHA-256(name || 0x0A || 0x04 || pubkey)[:4]; signed message =
    "cosignature/v1\\ntime <t>\\n" || checkpoint body; signature = key ID || u64 BE t ||
    Ed25519 signature.
    """
    name, hex8, b64 = vkey.split("+", 2)
    raw_key = base64.b64decode(b64)
    assert raw_key[0] == 0x04 and len(raw_key) == 33
    pub = raw_key[1:]
    kid = hashlib.sha256(name.encode() + b"\x0a" + b"\x04" + pub).digest()[:4]
    assert kid.hex() == hex8
    assert line.startswith("\u2014 ") and line.endswith("\n")
    got_name, sig_b64 = line[2:-1].split(" ")
    assert got_name == name
    sig = base64.b64decode(sig_b64, validate=True)
    assert len(sig) == 4 + 8 + 64 and sig[:4] == kid
    t = int.from_bytes(sig[4:12], "big")
    msg = b"cosignature/v1\ntime " + str(t).encode() + b"\n" + cp_text.encode()
    Ed25519PublicKey.from_public_bytes(pub).verify(sig[12:], msg)  # raises if bad
    return t


# --- the happy path -----------------------------------------------------------------

def test_cosigns_a_growing_tree(server: tuple[Server, Path], tmp_path: Path,
                                witness_key: tuple[Path, Signer], http: httpx.Client,
                                peer: Peer) -> None:
    srv, db = server
    wv = witness_key[1].verifier
    log = new_log(tmp_path, db)
    old = 0
    for step in (1, 1, 2, 3, 5, 8, 13, 21, 64, 1):
        append(log, step)
        cp = log.checkpoint()
        t0 = int(time.time())
        r = post(http, srv.url, body(old, log.consistency_proof(old), str(cp)))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        lines = r.text.splitlines(keepends=True)
        assert len(lines) == 1
        t = c2sp_check(lines[0], str(wv), cp.note.text)
        assert t0 - 1 <= t <= int(time.time()) + 1
        sigs = parse_note(cp.note.text + "\n" + r.text).signatures
        assert verify_cosignature(cp.note.text, sigs[0], wv) == t
        old = cp.size
    state = http.get(srv.url + "/state").json()
    mine = [s for s in state["logs"] if s["origin"] == log.origin]
    assert mine[0]["size"] == log.size == 119
    assert base64.b64decode(mine[0]["root"]) == log.checkpoint().root
    assert state["witness"] == str(wv)
    assert http.get(srv.url + "/health").json()["ok"] is True

    # the same checkpoint again (old == size, same root, empty proof) is cosigned again
    sigs2 = request_cosignature(srv.url, old, [], log.checkpoint(), witness_key=wv, client=peer)
    assert [(s.name, s.key_id) for s in sigs2] == [(wv.name, wv.key_id)]

    # the client helper, with a checkpoint carrying extension lines and a second signature
    append(log, 3)
    extra = Signer.generate("someone.else/key")
    cp = log.checkpoint()
    ext = Checkpoint(cp.origin, cp.size, cp.root, ("timestamp 1700000000000",))
    note = sign_checkpoint(ext, log.signer).note  # type: ignore[arg-type]
    note2 = str(note) + NoteSignature(extra.name, extra.key_id, extra.sign(b"x")).line()
    got = request_cosignature(srv.url, old, log.consistency_proof(old), note2, witness_key=wv,
                              client=peer)
    c2sp_check(got[0].line(), str(wv), ext.to_text())


# --- each refusal -------------------------------------------------------------------

def test_unknown_origin_is_404(server: tuple[Server, Path], tmp_path: Path,
                               http: httpx.Client, peer: Peer) -> None:
    srv, _ = server
    log = new_log(tmp_path, None)
    append(log, 2)
    r = post(http, srv.url, body(0, [], str(log.checkpoint())))
    assert r.status_code == 404
    with pytest.raises(UnknownLogError) as e:
        request_cosignature(srv.url, 0, [], log.checkpoint(), client=peer)
    assert e.value.status == 404


def test_checkpoint_signed_by_another_key_is_403(server: tuple[Server, Path], tmp_path: Path,
                                                 http: httpx.Client, peer: Peer) -> None:
    srv, db = server
    log = new_log(tmp_path, db)
    append(log, 3)
    impostor = Signer.generate(log.origin)  # same name, other key
    forged = sign_checkpoint(log.checkpoint().checkpoint, impostor)
    r = post(http, srv.url, body(0, [], str(forged)))
    assert r.status_code == 403, r.text
    # a known key ID with a bad signature is also a 403
    good = log.checkpoint().note
    bad = NoteSignature(good.signatures[0].name, good.signatures[0].key_id, bytes(64))
    r = post(http, srv.url, body(0, [], good.text + "\n" + bad.line()))
    assert r.status_code == 403
    with pytest.raises(LogSignatureError) as e:
        request_cosignature(srv.url, 0, [], forged, client=peer)
    assert e.value.status == 403
    assert WitnessState(str(db)).get(log.origin).size == 0  # type: ignore[union-attr]


def test_malformed_bodies_and_old_beyond_size_are_400(server: tuple[Server, Path],
                                                      tmp_path: Path, http: httpx.Client,
                                                      peer: Peer) -> None:
    srv, db = server
    log = new_log(tmp_path, db)
    append(log, 4)
    cp = str(log.checkpoint())
    h = base64.b64encode(bytes(32)).decode()
    for bad in [b"garbage", b"", b"\n\n", b"old 0\n" + cp.encode(), b"old -1\n\n" + cp.encode(),
                b"old 01\n\n" + cp.encode(), b"Old 0\n\n" + cp.encode(),
                b"old 0 \n\n" + cp.encode(), f"old 0\n{h[:-2]}\n\n{cp}".encode(),
                f"old 0\n{base64.b64encode(bytes(31)).decode()}\n\n{cp}".encode(),
                ("old 0\n" + (h + "\n") * 64 + "\n" + cp).encode(),
                b"old 0\n\n" + log.origin.encode() + b"\nnot a size\nxx\n\n\xe2\x80\x94 x y\n",
                b"old 0\n\n" + cp.encode()[:-1], b"old 0\n\n\xff\xfe\n"]:
        r = post(http, srv.url, bad)
        assert r.status_code == 400, (bad, r.status_code, r.text)
    r = post(http, srv.url, body(5, [], cp))  # old > checkpoint size
    assert r.status_code == 400
    with pytest.raises(BadRequestError) as e:
        request_cosignature(srv.url, 5, [], cp, client=peer)
    assert e.value.status == 400
    assert WitnessState(str(db)).get(log.origin).size == 0  # type: ignore[union-attr]


def test_wrong_old_size_is_409_with_current_size(server: tuple[Server, Path], tmp_path: Path,
                                                 http: httpx.Client, peer: Peer) -> None:
    srv, db = server
    log = new_log(tmp_path, db)
    append(log, 6)
    r = post(http, srv.url, body(3, log.consistency_proof(3), str(log.checkpoint())))
    assert r.status_code == 409
    assert r.headers["content-type"] == "text/x.tlog.size"
    assert r.content == b"0\n"  # a fresh origin is at size 0
    assert post(http, srv.url, body(0, [], str(log.checkpoint()))).status_code == 200
    append(log, 5)
    r = post(http, srv.url, body(4, log.consistency_proof(4), str(log.checkpoint())))
    assert (r.status_code, r.headers["content-type"], r.content) == (409, "text/x.tlog.size",
                                                                     b"6\n")
    with pytest.raises(SizeConflictError) as e:
        request_cosignature(srv.url, 0, [], log.checkpoint(), client=peer)
    assert (e.value.status, e.value.size) == (409, 6)
    # the client retries from the size the witness reported
    assert request_cosignature(srv.url, e.value.size, log.consistency_proof(e.value.size),
                               log.checkpoint(), client=peer)


def test_bad_proofs_and_forks_are_refused(server: tuple[Server, Path], tmp_path: Path,
                                          witness_key: tuple[Path, Signer],
                                          http: httpx.Client, peer: Peer) -> None:
    srv, db = server
    log = new_log(tmp_path, db)
    append(log, 5)
    assert post(http, srv.url, body(0, [], str(log.checkpoint()))).status_code == 200
    append(log, 3)
    good = log.consistency_proof(5)
    cp8 = str(log.checkpoint())
    # a corrupted, a truncated, an extended and an empty proof: 422
    flipped = [good[0][:-1] + bytes([good[0][-1] ^ 1]), *good[1:]]
    for proof in (flipped, good[:-1], [*good, bytes(32)], []):
        r = post(http, srv.url, body(5, proof, cp8))
        assert r.status_code == 422, (proof, r.text)
    with pytest.raises(ProofError) as e:
        request_cosignature(srv.url, 5, flipped, cp8, client=peer)
    assert e.value.status == 422

    # a tree that is not an extension: the operator signs another history of the same
    # origin (first five entries differ) and sends its own, valid-looking proof
    other = new_log(tmp_path, None, signer=log.signer)
    append(other, 5, b"other")
    append(other, 3, b"other")
    r = post(http, srv.url, body(5, other.consistency_proof(5), str(other.checkpoint())))
    assert r.status_code == 422

    # the real size-8 tree is cosigned; then a split view: a second tree of size 8 that
    # extends the same size-5 tree, signed by the log, is refused (C2SP: 409, text/plain)
    assert post(http, srv.url, body(5, good, cp8)).status_code == 200
    fork = new_log(tmp_path, None, signer=log.signer)
    fork.append(log.entries(0, 5))
    append(fork, 3, b"fork")
    assert fork.size == 8 and fork.checkpoint().root != log.checkpoint().root
    r = post(http, srv.url, body(8, [], str(fork.checkpoint())))
    assert r.status_code == 422  # C2SP tlog-witness HEAD (409 in earlier texts)
    assert "fork" in r.text
    with pytest.raises(RootMismatchError) as e2:
        request_cosignature(srv.url, 8, [], fork.checkpoint(), client=peer)
    assert e2.value.status == 422
    # ... and growing the fork past the cosigned tree does not help
    append(fork, 2, b"fork")
    r = post(http, srv.url, body(8, fork.consistency_proof(8), str(fork.checkpoint())))
    assert r.status_code == 422

    st = WitnessState(str(db))
    assert st.get(log.origin).root == log.checkpoint().root  # type: ignore[union-attr]
    ev = st.evidence(log.origin)
    reasons = [e["reason"] for e in ev]
    assert "fork" in reasons and "bad_consistency_proof" in reasons
    forked = ev[reasons.index("fork")]
    assert forked["new_checkpoint"] == str(fork.checkpoint_at(8))
    assert forked["cosigned_checkpoint"].startswith(cp8)  # with the witness's cosignature
    st.close()


def test_rollback_is_refused(server: tuple[Server, Path], tmp_path: Path,
                             http: httpx.Client) -> None:
    srv, db = server
    log = new_log(tmp_path, db)
    append(log, 8)
    assert post(http, srv.url, body(0, [], str(log.checkpoint()))).status_code == 200
    cp5 = str(log.checkpoint_at(5))
    r = post(http, srv.url, body(8, [], cp5))  # old (the witness's size) > checkpoint
    assert r.status_code == 400
    r = post(http, srv.url, body(5, [], cp5))  # claims the witness is at 5
    assert (r.status_code, r.content) == (409, b"8\n")
    r = post(http, srv.url, body(0, [], cp5))
    assert (r.status_code, r.content) == (409, b"8\n")
    assert WitnessState(str(db)).get(log.origin).size == 8  # type: ignore[union-attr]


# --- atomicity ------------------------------------------------------------------------

def test_concurrent_requests_from_one_state_only_one_wins(
        server: tuple[Server, Path], tmp_path: Path, witness_key: tuple[Path, Signer]) -> None:
    srv, db = server
    # a second witness process on the same database: the compare-and-swap must hold
    # across processes as well as across the first server's threads
    srv2 = Server(db, witness_key[0], tmp_path / "serve2.err")
    try:
        log = new_log(tmp_path, db)
        append(log, 4)
        with httpx.Client() as c:
            assert post(c, srv.url, body(0, [], str(log.checkpoint()))).status_code == 200
        requests = []
        for _ in range(24):  # 24 different, each valid, extensions of the size-4 tree
            append(log, 1)
            requests.append(body(4, log.consistency_proof(4), str(log.checkpoint())))
        results: list[tuple[int, bytes, str]] = []
        barrier = threading.Barrier(len(requests))
        lock = threading.Lock()

        def go(i: int) -> None:
            with httpx.Client(timeout=20) as c:
                c.get((srv, srv2)[i % 2].url + "/health")  # connect before the barrier
                barrier.wait()
                r = post(c, (srv, srv2)[i % 2].url, requests[i])
                with lock:
                    results.append((r.status_code, r.content,
                                    r.headers.get("content-type", "")))

        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(r[0] for r in results)
        assert statuses == [200] + [409] * (len(requests) - 1), statuses
        won = WitnessState(str(db)).get(log.origin)
        assert won is not None and 5 <= won.size <= 28
        for status, content, ctype in results:
            if status == 409:
                assert ctype == "text/x.tlog.size" and content == f"{won.size}\n".encode()
    finally:
        srv2.stop()


def test_state_compare_and_swap_between_connections(tmp_path: Path) -> None:
    db = str(tmp_path / "w.db")
    a, b = WitnessState(db), WitnessState(db)  # two connections, as two processes have
    key = Signer.generate("potd.example/cas")
    a.add_log(key.name, key.verifier)
    seen_a, seen_b = a.get(key.name), b.get(key.name)
    assert seen_a is not None and seen_b is not None and seen_a.size == 0
    a.advance(key.name, seen_a, 10, bytes([1]) * 32, "n10")
    with pytest.raises(SizeConflictError) as e:  # b checked the old state; it lost the race
        b.advance(key.name, seen_b, 3, bytes([2]) * 32, "n3")
    assert e.value.size == 10
    got = b.get(key.name)
    assert got is not None and (got.size, got.root) == (10, bytes([1]) * 32)
    # same size but another root: also no swap
    with pytest.raises(SizeConflictError):
        b.advance(key.name, LogState(key.name, 10, EMPTY_ROOT, ""), 11, bytes(32), "x")
    a.close()
    b.close()


class _StallingState(WitnessState):
    """Every reader of an origin's state waits until ``parties`` readers have it: all the
    requests then pass their checks against one state before any of them writes."""

    def __init__(self, path: str, parties: int) -> None:
        super().__init__(path)
        self.barrier = threading.Barrier(parties, timeout=10)

    def get(self, origin: str) -> LogState | None:
        got = super().get(origin)
        self.barrier.wait()
        return got


def test_racing_requests_that_all_pass_the_checks_advance_once(tmp_path: Path) -> None:
    """The race at the end of C2SP tlog-witness: request A (to size N) and B (to N+K) are
    both checked against the same state; whichever writes second must not roll back."""
    log = new_log(tmp_path, None)
    append(log, 3)
    state = _StallingState(str(tmp_path / "w.db"), 6)
    state.add_log(log.origin, log.verifier)
    w = Witness(state, Signer.generate(WITNESS_NAME, ALG_COSIGNATURE_V1))
    bodies = []
    for _ in range(6):
        append(log, 2)
        bodies.append(body(0, [], str(log.checkpoint())))
    outcomes: list[object] = []

    def go(b: bytes) -> None:
        try:
            outcomes.append(w.add_checkpoint(b))
        except SizeConflictError as e:
            outcomes.append(e)

    threads = [threading.Thread(target=go, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wins = [o for o in outcomes if isinstance(o, bytes)]
    losses = [o for o in outcomes if isinstance(o, SizeConflictError)]
    assert len(wins) == 1 and len(losses) == 5
    final = WitnessState(str(tmp_path / "w.db")).get(log.origin)
    assert final is not None and {e.size for e in losses} == {final.size}
    state.close()


# --- durability ---------------------------------------------------------------------

def test_state_survives_sigkill(tmp_path: Path, witness_key: tuple[Path, Signer],
                                http: httpx.Client) -> None:
    db = tmp_path / "durable.db"
    log = new_log(tmp_path, db)
    srv = Server(db, witness_key[0], tmp_path / "a.err")
    try:
        append(log, 7)
        first = body(0, [], str(log.checkpoint()))
        assert post(http, srv.url, first).status_code == 200
        append(log, 6)
        second = body(7, log.consistency_proof(7), str(log.checkpoint()))
        r = post(http, srv.url, second)
        assert r.status_code == 200
    finally:
        srv.stop(signal.SIGKILL)
    assert srv.proc.returncode == -signal.SIGKILL
    srv = Server(db, witness_key[0], tmp_path / "b.err")
    try:
        for replay in (first, second):
            r = post(http, srv.url, replay)
            assert (r.status_code, r.headers["content-type"], r.content) == (
                409, "text/x.tlog.size", b"13\n")
        append(log, 1)
        assert post(http, srv.url, body(13, log.consistency_proof(13),
                                        str(log.checkpoint()))).status_code == 200
    finally:
        srv.stop()
    out = CliRunner().invoke(main, ["witness", "state", "--db", str(db), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["logs"][0]["size"] == 14


# --- formats ------------------------------------------------------------------------

def test_c2sp_cosignature_example_decodes() -> None:
    ex = json.loads((vectors_dir() / "c2sp" / "examples.json").read_text())
    line, dec = ex["cosignature_v1_example_line"], ex["cosignature_v1_example_decoded"]
    name, b64 = line[2:-1].split(" ")
    raw = base64.b64decode(b64, validate=True)
    assert len(raw) == dec["len"] == 76
    assert raw[:4].hex() == dec["key_id_hex"] == "8d66cf3f"
    assert int.from_bytes(raw[4:12], "big") == dec["timestamp"] == 1679315147
    assert len(raw[4:]) == 72
    cp_text = dec["signed_message"].split("\n", 2)[2]
    sig = parse_note(cp_text + "\n" + line).signatures[0]
    assert (sig.name, sig.key_id, len(sig.signature)) == (name, 0x8D66CF3F, 72)
    assert cosignature_message(cp_text, dec["timestamp"]).decode() == dec["signed_message"]


def test_c2sp_request_example_parses_and_round_trips() -> None:
    ex = json.loads((vectors_dir() / "c2sp" / "examples.json").read_text())
    cp = ex["checkpoint_example_unverifiable_no_key"]
    raw = ex["witness_add_checkpoint_request_example"].replace("<checkpoint>", cp).encode()
    req = AddCheckpointRequest.from_bytes(raw)
    assert req.old_size == 20852014 and len(req.proof) == 4
    assert req.proof[0] == base64.b64decode("PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=")
    assert req.note == cp.encode()
    assert req.to_bytes() == raw


# --- the command line ---------------------------------------------------------------

def test_cli_keygen_add_log_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["witness", "keygen", WITNESS_NAME, "-o", "w.key"])
    assert r.exit_code == 0, r.output
    vkey = r.output.strip()
    assert Verifier.parse(vkey).alg == ALG_COSIGNATURE_V1
    assert (tmp_path / "w.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "w.key.pub").read_text().strip() == vkey
    secret = (tmp_path / "w.key").read_text().strip().split("+", 4)[4]
    again = CliRunner().invoke(main, ["witness", "keygen", WITNESS_NAME, "-o", "w.key"])
    assert again.exit_code == 2 and secret not in again.output
    logkey = Signer.generate("potd.example/cli")
    (tmp_path / "log.pub").write_text(str(logkey.verifier) + "\n")
    other = Signer.generate("potd.example/other")
    r = CliRunner().invoke(main, ["witness", "add-log", "--db", "w.db",
                                  f"potd.example/cli={logkey.verifier}", "--log", "log.pub",
                                  str(other.verifier)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["witness", "state", "--db", "w.db", "--json"])
    logs = {s["origin"]: s for s in json.loads(r.output)["logs"]}
    assert set(logs) == {"potd.example/cli", "potd.example/other"}
    assert logs["potd.example/cli"]["keys"] == [str(logkey.verifier)]
    assert logs["potd.example/cli"]["size"] == 0
    r = CliRunner().invoke(main, ["witness", "add-log", "--db", "w.db", "nonsense"])
    assert r.exit_code == 2
    # a cosignature key is not a log key
    r = CliRunner().invoke(main, ["witness", "add-log", "--db", "w.db", f"x={vkey}"])
    assert r.exit_code == 2 and "Ed25519" in r.output
