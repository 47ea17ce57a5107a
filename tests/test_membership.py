"""Membership and non-membership of documents (docs/protocol.md §4.7): proofs from the log
and the published example-hash list, forged proofs refused, the external sort, hostile
hash lists. One real run (real log server, real training) per scenario."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from e2e import Env, checks, make_env
from safetensors.torch import save

from auditor.membership import membership
from auditor.membership_proof import MembershipProofError, check_answer, verify_proof
from ledger.errors import UsageError
from ledger.merkle import EMPTY_ROOT
from prover.encodings import document_hash
from prover.hashing import example_hash, merkle_root_hex
from prover.hashlist import (
    HEADER_SIZE,
    MerkleFile,
    external_sort,
    positions_of,
    publish,
    sorted_commitment,
    write_hash_list,
)
from prover.recipes import Data, get_recipe
from prover.session import TrainingSession

DUP_OF, DUPS = 3, (5, 700)  # examples 5 and 700 are copies of example 3


def _recipe(dups: bool = True) -> Any:
    r = get_recipe("digits-mlp", epochs=1)
    if dups:
        base = r.data

        def data() -> Data:
            d = base()
            x, y = d.x.clone(), d.y.clone()
            for i in DUPS:
                x[i], y[i] = x[DUP_OF], y[DUP_OF]
            return Data(x, y, d.heldout_x, d.heldout_y)

        r.data = data
    return r


def _train(env: Env, tag: str, cls: type[TrainingSession] = TrainingSession,
           dups: bool = True) -> tuple[TrainingSession, dict[int, tuple[int, ...]]]:
    s = cls(_recipe(dups), env.client(), env.trainer, env.dir / f"ev-{tag}",
            env.dir / f"{tag}.spool")
    s.open()
    trained = {}
    for b in s.batches():
        trained[b.step] = b.indexes
        s.train_step(b)
    s.close()
    return s, trained


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, Any, Any]]:
    for e in make_env(tmp_path_factory.mktemp("membership")):
        s, trained = _train(e, "run")
        yield e, s, trained


def _ask(env: Env, run: str, tag: str = "run", hashes: tuple[bytes, ...] = (),
         documents: tuple[bytes, ...] = ()) -> dict[str, Any]:
    with env.client(state_dir=str(env.dir / "state")) as c:
        return membership(c, run, list(hashes), str(env.dir / f"ev-{tag}"),
                          documents=list(documents))


def _doc(x: torch.Tensor, y: torch.Tensor) -> bytes:
    return save({"x": x.contiguous(), "y": y.contiguous()})


def test_document_included_with_steps_and_absent_with_neighbours(honest: Any) -> None:
    env, s, trained = honest
    data = s.data
    i = 17
    inside = _doc(data.x[i], data.y[i])
    outside = _doc(data.x[i] + 0.5, data.y[i])
    assert document_hash(None, inside) == example_hash(data.x[i], data.y[i])
    rep = _ask(env, s.run_id, documents=(inside, outside))
    assert rep["answer"] == "mixed", rep.get("reason")
    got = {c["name"]: c["status"] for c in rep["checks"]}
    assert got["hash_list"] == "pass" and got["membership.steps"] == "pass"
    inc, out = rep["answers"]
    assert inc["answer"] == "included" and inc["indexes"] == [i]
    # the steps named are exactly the steps whose batches the session trained on
    assert inc["steps"] == sorted(t for t, idx in trained.items() if i in idx)
    assert out["answer"] == "absent" and out["left"] and out["right"]
    assert out["right"]["index"] == out["left"]["index"] + 1
    res = verify_proof(json.loads(json.dumps(rep["proof"])), env.log_key.verifier)
    assert res["steps_verified"].startswith("re-derived")
    assert [a["answer"] for a in res["answers"]] == ["included", "absent"]


def test_duplicates_report_every_index(honest: Any) -> None:
    env, s, trained = honest
    h = example_hash(s.data.x[DUP_OF], s.data.y[DUP_OF])
    rep = _ask(env, s.run_id, hashes=(h,))
    (a,) = rep["answers"]
    assert a["indexes"] == [DUP_OF, *DUPS] and len(a["ordered"]) == 3
    assert a["steps"] == sorted(t for t, idx in trained.items()
                                for i in (DUP_OF, *DUPS) if i in idx)
    # the committed distinct count excludes the copies
    o = json.loads(base64.b64decode(rep["proof"]["open"]["statement"]))
    assert o["body"]["dataset"]["distinct"] == o["body"]["dataset"]["size"] - len(DUPS)
    verify_proof(rep["proof"], env.log_key.verifier)


def _absent_proof(env: Env, s: Any) -> dict[str, Any]:
    rep = _ask(env, s.run_id, hashes=(hashlib.sha256(b"not an example").digest(),))
    assert rep["answer"] == "absent"
    return rep


def test_forged_absence_proofs_fail(honest: Any) -> None:
    env, s, _ = honest
    vk = env.log_key.verifier
    good = _absent_proof(env, s)["proof"]
    verify_proof(good, vk)
    # "absent" for a hash that IS in the dataset: the best a forger can do is to skip its
    # leaf, and the neighbours are then not adjacent
    member = example_hash(s.data.x[40], s.data.y[40])
    rep = _ask(env, s.run_id, hashes=(member,))
    inc = rep["answers"][0]
    r = inc["sorted"]["index"]
    srt = rep["proof"]["answers"][0]["sorted"]
    forged = copy.deepcopy(rep["proof"])
    other = _ask(env, s.run_id, hashes=(bytes(32), b"\xff" * 32))["proof"]["answers"]
    distinct = len({example_hash(s.data.x[i], s.data.y[i]) for i in range(len(s.data.x))})
    assert other[0]["left"] is None and other[0]["right"]["index"] == 0  # before the first
    assert other[1]["right"] is None and other[1]["left"]["index"] == distinct - 1  # after
    forged["answers"][0] = {"hash": member.hex(), "answer": "absent",
                            "left": _neighbour(env, s, r - 1), "right": _neighbour(env, s, r + 1)}
    with pytest.raises(MembershipProofError, match="not adjacent"):
        verify_proof(forged, vk)
    assert srt["index"] == r
    # the edges: a lone right neighbour that is not the first leaf
    edge = copy.deepcopy(good)
    edge["answers"][0]["left"] = None
    if edge["answers"][0]["right"]["index"] != 0:
        with pytest.raises(MembershipProofError, match="first leaf"):
            verify_proof(edge, vk)
    # a wrong root: one proof hash changed
    bad = copy.deepcopy(good)
    p = bad["answers"][0]["right"]["proof"]
    p[0] = base64.b64encode(bytes(32)).decode()
    with pytest.raises(MembershipProofError):
        verify_proof(bad, vk)
    # the neighbour's hash altered (so it lies below the query): its proof fails
    bad = copy.deepcopy(good)
    bad["answers"][0]["right"]["hash"] = bad["answers"][0]["left"]["hash"]
    with pytest.raises(MembershipProofError):
        verify_proof(bad, vk)
    # a tampered file: the answer flipped, the checkpoint altered, another run's id
    for mutate, msg in ((lambda d: d["answers"][0].update(answer="included"), "answer 0"),
                        (lambda d: d.update(checkpoint=d["checkpoint"].replace("\n", "\n ", 1)),
                         "checkpoint"),
                        (lambda d: d.update(run="0" * 64), "not the run.open")):
        t = copy.deepcopy(good)
        mutate(t)
        with pytest.raises(MembershipProofError, match=msg):
            verify_proof(t, vk)
    # a valid proof presented as one about another run
    with pytest.raises(MembershipProofError, match="not " + "ab" * 32):
        verify_proof(good, vk, run="ab" * 32)
    verify_proof(good, vk, run=s.run_id)
    # a valid proof under another log key is refused
    from ledger.note import Signer

    with pytest.raises(MembershipProofError):
        verify_proof(good, Signer.generate("potd.example/other").verifier)


def _neighbour(env: Env, s: Any, r: int) -> dict[str, Any]:
    hs = sorted(set(example_hash(s.data.x[i], s.data.y[i]) for i in range(len(s.data.x))))
    rep = _ask(env, s.run_id, hashes=(hs[r],))
    return rep["proof"]["answers"][0]["sorted"]


@pytest.mark.slow
def test_cli_membership_and_offline_verify(honest: Any, tmp_path: Path) -> None:
    env, s, _ = honest
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.safetensors").write_bytes(_doc(s.data.x[8], s.data.y[8]))
    (d / "b.safetensors").write_bytes(_doc(s.data.x[8] * 2 + 1, s.data.y[8]))
    base = [sys.executable, "-m", "ledger", "auditor"]
    vk = str(env.log_key.verifier)
    r = subprocess.run([*base, "membership", "--log", env.url, "--vkey", vk, "--run",
                        s.run_id, "--evidence", str(env.dir / "ev-run"), "--dir", str(d),
                        "--state", str(tmp_path / "st"), "--out", str(tmp_path / "p.json"),
                        "--cache-dir", str(tmp_path / "cache")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "included:" in r.stdout and "absent:" in r.stdout
    v = subprocess.run([*base, "verify-membership", str(tmp_path / "p.json"), "--vkey", vk],
                       capture_output=True, text=True, timeout=120)
    assert v.returncode == 0 and v.stdout.startswith("valid:"), v.stdout + v.stderr
    doc = json.loads((tmp_path / "p.json").read_text())
    doc["answers"][1]["left"]["index"] += 1
    (tmp_path / "p.json").write_text(json.dumps(doc))
    v = subprocess.run([*base, "verify-membership", str(tmp_path / "p.json"), "--vkey", vk],
                       capture_output=True, text=True, timeout=120)
    assert v.returncode == 1 and "Traceback" not in v.stderr, v.stderr
    # a document the run's encoding cannot encode: usage (2), never "absent"
    (tmp_path / "bad.bin").write_bytes(b"hello")
    u = subprocess.run([*base, "membership", "--log", env.url, "--vkey", vk, "--run",
                        s.run_id, "--evidence", str(env.dir / "ev-run"), "--document",
                        str(tmp_path / "bad.bin"), "--state", str(tmp_path / "st"),
                        "--no-cache"],
                       capture_output=True, text=True, timeout=300)
    assert u.returncode == 2 and "cannot be encoded" in u.stderr, u.stdout + u.stderr


def test_unencodable_document_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="cannot be encoded"):
        document_hash(None, save({"x": torch.zeros(3)}))
    with pytest.raises(UsageError, match="not known"):
        document_hash("potd-tokens-v9", b"")


def test_external_sort_equals_in_memory_sort(tmp_path: Path) -> None:
    rng = random.Random(7)
    pool = [hashlib.sha256(str(i).encode()).digest() for i in range(3000)]
    hs = [rng.choice(pool) for _ in range(5000)]  # duplicates galore
    spath, ppath, n = external_sort(hs, tmp_path / "ext", chunk=333)  # 16 spilled runs
    assert n == 5000 and ppath is not None
    want = sorted(set(hs))
    assert spath.read_bytes() == b"".join(want)
    for h in want[:50]:
        assert positions_of(ppath, h) == [i for i, x in enumerate(hs) if x == h]
    assert sorted_commitment(hs, tmp_path, chunk=100) == (merkle_root_hex(want), len(want))
    assert sorted_commitment([], tmp_path) == (merkle_root_hex([]), 0)
    lst = tmp_path / "l.hashes"
    write_hash_list(lst, hs)
    with MerkleFile(lst, HEADER_SIZE, cache_level=4) as t:
        assert t.root.hex() == merkle_root_hex(hs)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".sort")]


class _HostileList(TrainingSession):
    """Publishes a hash list that is not the data's: ``mode`` says how."""

    mode = "short"

    def open_body(self, body: dict[str, Any]) -> dict[str, Any]:
        from prover.hashlist import publish

        ds = body["dataset"]
        hs = list(self.train_hashes)
        if self.mode == "short":  # the list drops the last example (wrong length)
            fields = publish(self.evidence.root / "objects", hs[:-1])
            ds.update(hash_list=fields["hash_list"])
        elif self.mode == "hide":  # sorted root and list over the data minus one example
            hidden = hs[:10] + hs[11:]
            ds.update(publish(self.evidence.root / "objects", hidden))
        elif self.mode == "old":  # a run from before membership proofs
            for k in ("sorted_root", "distinct", "hash_list"):
                del ds[k]
        return body


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["short", "hide", "old"])
def test_hostile_hash_list_is_a_failed_check(mode: str, tmp_path: Path) -> None:
    for env in make_env(tmp_path):
        cls = type(f"Hostile_{mode}", (_HostileList,), {"mode": mode})
        s, _ = _train(env, "bad", cls=cls, dups=False)
        rep = _ask(env, s.run_id, "bad", hashes=(bytes(32),))
        got = {c["name"]: c for c in rep["checks"]}
        if mode == "old":
            assert rep["answer"] == "inconclusive" and "not committed" in rep["reason"]
            audit = env.audit(s.run_id, env.dir / "ev-bad", samples=1)
            assert checks(audit)["dataset.sorted"] == "skip"
            assert audit["verdict"] == "pass"
            continue
        assert rep["answer"] == "unverified" and got["hash_list"]["status"] == "fail"
        assert "proof" not in rep
        if mode == "hide":  # the audit with the data catches the wrong sorted root too
            audit = env.audit(s.run_id, env.dir / "ev-bad", samples=1)
            assert checks(audit)["dataset.sorted"] == "fail"
            assert audit["verdict"] == "fail"


def test_protocol_vector(tmp_path: Path) -> None:
    """The vector of docs/protocol.md §4.7."""
    hs = [hashlib.sha256(s).digest() for s in (b"a", b"b", b"a")]
    assert write_hash_list(tmp_path / "l", hs) == (
        "0dde9357ad5fa32852042f386645b1cc36bdea1151a32522df6dbbf1018024d7", 3)
    assert merkle_root_hex(hs) == \
        "65185bb00e8fbf1bb06463ed83309a065495c60a3315256e95c9ed91c5bd88e1"
    assert sorted_commitment(hs, tmp_path) == (
        "73a57aee9ae28c072b7e0ed9b56a57a69cc6fb048a723d7f052177084d1250ee", 2)
    # the trainer's publish reads a stream once and sorts the written file back
    assert publish(tmp_path / "objects", iter(hs), chunk=1) == {
        "sorted_root": "73a57aee9ae28c072b7e0ed9b56a57a69cc6fb048a723d7f052177084d1250ee",
        "distinct": 2,
        "hash_list": "0dde9357ad5fa32852042f386645b1cc36bdea1151a32522df6dbbf1018024d7"}
    assert (tmp_path / "objects" / ("0dde9357ad5fa32852042f386645b1cc36bdea1151a32522df6dbbf"
                                    "1018024d7.hashes")).stat().st_size == 23 + 3 * 32


def test_empty_dataset_absence() -> None:
    empty = {"size": 0, "root": EMPTY_ROOT.hex(), "distinct": 0,
             "sorted_root": EMPTY_ROOT.hex()}
    q = hashlib.sha256(b"q").hexdigest()
    check_answer({"hash": q, "answer": "absent", "left": None, "right": None}, empty)
    with pytest.raises(MembershipProofError, match="empty"):
        check_answer({"hash": q, "answer": "absent", "left": None, "right": None},
                     {**empty, "sorted_root": q})
    one = {"size": 1, "root": merkle_root_hex([bytes(32)]), "distinct": 1,
           "sorted_root": merkle_root_hex([bytes(32)])}
    with pytest.raises(MembershipProofError, match="at least one neighbour"):
        check_answer({"hash": q, "answer": "absent", "left": None, "right": None}, one)
    check_answer({"hash": q, "answer": "absent", "right": None,
                  "left": {"index": 0, "hash": bytes(32).hex(), "proof": []}}, one)


def test_hash_list_served_over_http(honest: Any) -> None:
    """The evidence store served as static files over loopback HTTP, as a trainer
    publishes it: the same answer as from the directory."""
    import functools
    import http.server
    import threading

    env, s, _ = honest
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(env.dir / "ev-run"))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        h = example_hash(s.data.x[9], s.data.y[9])
        with env.client(state_dir=str(env.dir / "state-http")) as c:
            rep = membership(c, s.run_id, [h], f"http://127.0.0.1:{srv.server_port}")
    finally:
        srv.shutdown()
        srv.server_close()
    assert rep["answer"] == "included" and rep["answers"][0]["indexes"] == [9]


def test_document_hash_matches_each_adapters_example_hash(tmp_path: Path) -> None:
    """A document hashed for membership is the example the adapter committed: a file of a
    directory dataset, a window of a token file (cut out as stored); a document that is
    not a whole number of token ids is a usage error, not "not included"."""
    from prover.datasets import FileDir, TokenFile, write_tokens
    from prover.encodings import document_hash

    tok = write_tokens(tmp_path / "train.bin", bytes(range(256)) * 4, "uint16")
    ds = TokenFile(tok, "uint16", block=16, stride=8)
    raw = tok.read_bytes()
    for i in (0, 3, len(ds) - 1):
        window = raw[i * 8 * 2:(i * 8 + 17) * 2]
        assert document_hash(ds.encoding, window) == ds.example_hash(i)
    with pytest.raises(UsageError, match="whole number"):
        document_hash(ds.encoding, raw[:3])
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "b.txt").write_bytes(b"second")
    (tmp_path / "docs" / "sub" / "a.txt").write_bytes(b"first")
    fd = FileDir(tmp_path / "docs", lambda b: (b, b))
    for i, f in enumerate(fd.files):
        assert document_hash(fd.encoding, f.read_bytes()) == fd.example_hash(i)
