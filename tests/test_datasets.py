"""Datasets beyond in-memory tensors (docs/protocol.md §4.6): each adapter's canonical
example encoding (vectors), streaming hashing in bounded memory, the on-disk hash cache
(hit, miss, corrupt entry, changed file), the refusals, and a token-file recipe trained
and audited end to end with the data in another directory on each side."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from e2e import Env, checks, make_env

import prover.dataset_cache as cache
import prover.datasets as datasets
from ledger.errors import UsageError
from prover.dataset_cache import dataset_hashes
from prover.datasets import (
    Datasets,
    FileDir,
    Subset,
    TensorDataset,
    TokenFile,
    as_datasets,
    write_tokens,
)
from prover.hashing import example_hashes, merkle_root_hex
from prover.recipes import digits

# docs/protocol.md §4.6, one vector per adapter
TENSOR_VECTOR = "0d0204b90e6dafb4e365341164c4dd6973b0e260d76ddea5b11a68a70a0a27d8"
TOKENS_U16_VECTOR = "4048d0a04cecaa60cba20634e5f42dedc117e51b8785f990d537afb7c53f9497"
TOKENS_U32_VECTOR = "e400a2951cef1a1e0b449de6524e2ac565844c69e1d15d9fdc596411298f46d7"
FILE_VECTOR = "86ec180dab57b2db320f83aee309fbe31ac571882ed854122755bf7dc748369a"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("POTD_CACHE", str(d))
    return d


def test_encoding_vectors(tmp_path: Path) -> None:
    t = TensorDataset(torch.tensor([[1.0, 2.0]]), torch.tensor([3]))
    assert t.example_hash(0).hex() == TENSOR_VECTOR
    assert hashlib.sha256(t.example_bytes(0)).hexdigest() == TENSOR_VECTOR
    assert t.encoding == "potd-example-v1/sha256"

    for dtype, vector in (("uint16", TOKENS_U16_VECTOR), ("uint32", TOKENS_U32_VECTOR)):
        p = write_tokens(tmp_path / f"{dtype}.bin", list(range(9)), dtype)
        tf = TokenFile(p, dtype, block=4)
        assert len(tf) == 2 and tf.example_hash(0).hex() == vector
        assert tf.example_bytes(0) == f"potd-tokens-v1 {dtype[0]}{dtype[4:]}\n".encode() + \
            np.arange(5, dtype="<u2" if dtype == "uint16" else "<u4").tobytes()
        assert next(tf.hashes()).hex() == vector
        # the same window anywhere in any file hashes the same: content only
        q = write_tokens(tmp_path / f"shifted-{dtype}.bin", [7, 7, *range(9)], dtype)
        assert TokenFile(q, dtype, block=4, stride=2).example_hash(1).hex() == vector

    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "a name.txt").write_bytes(b"hello\n")
    fd = FileDir(d, lambda b: (torch.zeros(1), torch.tensor(0)))
    assert fd.example_hash(0).hex() == FILE_VECTOR == hashlib.sha256(
        b"potd-file-v1\nhello\n").hexdigest()
    (d / "sub" / "a name.txt").rename(d / "other.bin")  # not the path: only the bytes
    assert FileDir(d, lambda b: (torch.zeros(1), torch.tensor(0))).example_hash(0).hex() \
        == FILE_VECTOR


def test_stacked_tensor_data_keeps_todays_hashes() -> None:
    d = digits(image=False)
    ds = as_datasets(d)
    table = dataset_hashes(ds.train)
    assert list(table) == example_hashes(d.x, d.y)
    assert table.root == merkle_root_hex(example_hashes(d.x, d.y))
    x, y = ds.train.batch([5, 1])
    assert torch.equal(x, d.x[[5, 1]]) and torch.equal(y, d.y[[5, 1]])
    with pytest.raises(UsageError, match="returned a"):
        as_datasets([1, 2])


def test_token_file_batches_and_split(tmp_path: Path) -> None:
    p = write_tokens(tmp_path / "t.bin", bytes(range(200)), "uint16")
    tf = TokenFile(p, block=8, stride=4)
    assert len(tf) == (200 - 9) // 4 + 1
    x, y = tf.batch([0, 2])
    assert x.dtype == y.dtype == torch.int64 and x.shape == (2, 8)
    assert x[1].tolist() == list(range(8, 16)) and y[1].tolist() == list(range(9, 17))
    train, held = tf.split(5)
    assert len(train) + len(held) == len(tf) and len(held) == 5
    assert held.batch([0])[0][0].tolist() == tf.batch([len(tf) - 5])[0][0].tolist()
    assert list(held.hashes()) == [tf.example_hash(i) for i in range(len(tf) - 5, len(tf))]
    with pytest.raises(UsageError, match="hold out"):
        tf.split(len(tf))


def test_token_file_larger_than_the_chunk_budget(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashed in chunks of the budget: the same hashes and root as one window at a time
    over the whole file read at once, in memory bounded by the budget (plus 32 bytes of
    output per window), not by the file."""
    rng = np.random.default_rng(0)
    p = write_tokens(tmp_path / "big.bin", rng.integers(0, 50257, 3_000_000), "uint16")
    size = p.stat().st_size  # 6 MB
    monkeypatch.setattr(datasets, "CHUNK_BUDGET", 256 << 10)
    tf = TokenFile(p, block=1024, stride=1024)
    tracemalloc.start()
    table = cache.compute(tf)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # the budget, plus a few hundred bytes per window (hashes, Merkle levels): not the file
    assert peak < (256 << 10) + 400 * len(tf) + (256 << 10) < size / 2
    whole = p.read_bytes()
    hd, wb, sb = b"potd-tokens-v1 u16\n", 1025 * 2, 1024 * 2
    one_shot = [hashlib.sha256(hd + whole[o:o + wb]).digest() for o in range(0, len(tf) * sb, sb)]
    assert list(table) == one_shot and table.root == merkle_root_hex(one_shot)


def test_cache_hit_miss_corrupt_and_changed_file(tmp_path: Path, _cache: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    p = write_tokens(tmp_path / "t.bin", bytes(range(256)) * 20, "uint16")
    calls = []
    real = cache.compute

    def counting(ds: Any) -> Any:
        calls.append(1)
        return real(ds)

    monkeypatch.setattr(cache, "compute", counting)
    first = dataset_hashes(TokenFile(p, block=16))
    assert len(calls) == 1
    [entry] = list(_cache.iterdir())
    again = dataset_hashes(TokenFile(p, block=16))  # hit
    assert len(calls) == 1 and again.root == first.root and again.blob == first.blob
    dataset_hashes(TokenFile(p, block=16, stride=8))  # other parameters: another entry
    assert len(calls) == 2 and len(list(_cache.iterdir())) == 2

    good = entry.read_bytes()
    for bad in (good[:-1], good[:100], good[:-40] + bytes(8) + good[-32:], b"",
                good[:60] + bytes([good[60] ^ 1]) + good[61:]):
        entry.write_bytes(bad)  # truncated, zeroed, flipped: ignored and rebuilt
        n = len(calls)
        assert dataset_hashes(TokenFile(p, block=16)).root == first.root
        assert len(calls) == n + 1 and entry.read_bytes() == good

    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched: a miss
    n = len(calls)
    assert dataset_hashes(TokenFile(p, block=16)).root == first.root and len(calls) == n + 1
    with open(p, "r+b") as f:  # changed in place, mtime kept: the identity the cache trusts
        f.write(b"\xff\xff")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    monkeypatch.setenv("POTD_CACHE", "off")  # ... which POTD_CACHE=off does not
    assert dataset_hashes(TokenFile(p, block=16)).root != first.root
    monkeypatch.setenv("POTD_CACHE", str(_cache))
    with open(p, "ab") as f:  # grown: another size, a miss, the new root
        f.write(b"\x01\x00" * 16)
    changed = dataset_hashes(TokenFile(p, block=16))
    assert changed.root != first.root and len(changed) == len(first) + 1


def test_file_directory_order_and_transform(tmp_path: Path) -> None:
    d = tmp_path / "d"
    for rel, body in (("b.txt", b"2"), ("a/z.txt", b"1"), ("B.txt", b"0"), ("é.txt", b"4"),
                      ("c.txt", b"3"), (".hidden", b"x"), (".git/x", b"x")):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(body)
    fd = FileDir(d, lambda b: (torch.tensor([float(b)]), torch.tensor(int(b))))
    assert [f.relative_to(d).as_posix() for f in fd.files] == \
        ["B.txt", "a/z.txt", "b.txt", "c.txt", "é.txt"]  # UTF-8 byte order
    x, y = fd.batch([4, 0])
    assert y.tolist() == [4, 0] and x.shape == (2, 1)
    t1 = dataset_hashes(fd)
    assert dataset_hashes(FileDir(d, lambda b: (b, b))).root == t1.root  # cached
    (d / "c.txt").write_bytes(b"33")  # a changed file changes the listing: a miss
    assert dataset_hashes(FileDir(d, lambda b: (b, b))).root != t1.root


def test_refusals(tmp_path: Path) -> None:
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x00" * 101)
    with pytest.raises(UsageError, match="not a multiple of the 2-byte uint16") as e:
        TokenFile(odd)
    assert e.value.hint
    with pytest.raises(UsageError, match="not a multiple of the 4-byte"):
        TokenFile(write_tokens(tmp_path / "t.bin", [1] * 101), "uint32")
    with pytest.raises(UsageError, match="does not exist"):
        TokenFile(tmp_path / "nope.bin")
    with pytest.raises(UsageError, match="fewer than one window"):
        TokenFile(write_tokens(tmp_path / "short.bin", [1] * 100), block=128)
    with pytest.raises(UsageError, match="not supported"):
        TokenFile(tmp_path / "t.bin", "int8")
    with pytest.raises(UsageError, match="positive integers"):
        TokenFile(tmp_path / "t.bin", block=4, stride=0)
    with pytest.raises(UsageError, match="do not fit"):
        write_tokens(tmp_path / "x.bin", [70000])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".only-hidden").write_text("x")
    with pytest.raises(UsageError, match="holds no files"):
        FileDir(tmp_path / "empty", lambda b: (b, b))
    with pytest.raises(UsageError, match="does not exist"):
        FileDir(tmp_path / "nodir", lambda b: (b, b))
    with pytest.raises(UsageError, match="not a prover.datasets.Dataset"):
        Datasets(TokenFile(tmp_path / "t.bin", block=4), [])  # type: ignore[arg-type]


TOKEN_RECIPE = '''
"""A tiny byte-level language model over a token file in the recipe's data directory."""
from typing import Any, ClassVar

import torch
from torch import nn

from prover.datasets import Datasets, TokenFile
from prover.recipes import Recipe


class Bigram(Recipe):
    name = "bigram-tokens"
    defaults: ClassVar[dict[str, Any]] = {"lr": "0.05", "batch_size": 16, "epochs": 1,
                                          "k": 3, "block": 16}

    def data(self) -> Datasets:
        assert self.data_dir is not None, "pass --data-dir"
        tf = TokenFile(self.data_dir / "train.bin", "uint16", block=self.config["block"])
        train, held = tf.split(16)
        return Datasets(train, held)

    def model(self) -> nn.Module:
        return nn.Sequential(nn.Embedding(256, 16), nn.Linear(16, 256))

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=float(self.config["lr"]))

    def per_example_loss(self, model: nn.Module, x: torch.Tensor,
                         y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        return nn.functional.cross_entropy(logits.transpose(1, 2), y,
                                           reduction="none").mean(1)
'''


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from make_env(tmp_path)


def potd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ledger", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


@pytest.mark.slow
def test_token_file_recipe_trains_and_audits_with_data_dirs(env: Env, tmp_path: Path) -> None:
    """Trained with --data-dir on the trainer's copy; audited with --data-dir on the
    auditor's copy elsewhere (passes, the location is nowhere in run.open); a modified
    copy is refused naming both roots and sizes (inconclusive: exit 3)."""
    src = tmp_path / "recipes" / "bigram.py"
    src.parent.mkdir()
    src.write_text(textwrap.dedent(TOKEN_RECIPE))
    text = (Path(__file__).parent.parent / "docs" / "protocol.md").read_bytes()[:6000]
    mine, theirs = tmp_path / "trainer-data", tmp_path / "auditor-data"
    mine.mkdir()
    write_tokens(mine / "train.bin", text, "uint16")
    (tmp_path / "alice.key").write_text(env.trainer.private_string())
    spec = f"{src}:Bigram"
    nodir = potd("prover", "train", "--recipe", spec, "--log", env.url, "--vkey",
                 str(env.log_key.verifier), "--key", "alice.key", "--evidence", "ev0",
                 cwd=tmp_path)
    assert nodir.returncode != 0 and "Traceback" not in nodir.stderr
    assert "no --data-dir given" in nodir.stderr, nodir.stderr
    t = potd("prover", "train", "--recipe", spec, "--data-dir", str(mine), "--log", env.url,
             "--vkey", str(env.log_key.verifier), "--key", "alice.key", "--evidence", "ev",
             "--json", "t.json", cwd=tmp_path)
    assert t.returncode == 0, t.stdout + t.stderr
    run = json.loads((tmp_path / "t.json").read_text())["run"]
    from prover.spool import Spool

    sp = Spool(tmp_path / "ev" / "spool.db")
    opened = dict(sp.statements())[0]
    assert sp.meta()["data_dir"] == str(mine)  # kept locally, for resume
    sp.close()
    assert str(mine).encode() not in opened and b"trainer-data" not in opened

    shutil.copytree(mine, theirs)
    base = ["auditor", "audit", "--log", env.url, "--vkey", str(env.log_key.verifier),
            "--run", run, "--evidence", str(tmp_path / "ev"), "--samples", "2", "-q",
            "--recipe", spec]
    ok = potd(*base, "--data-dir", str(theirs), "--state", "s1", "--json", "a.json",
              cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rep = json.loads((tmp_path / "a.json").read_text())
    assert checks(rep)["dataset"] == "pass" and checks(rep)["replay"] == "pass"
    ds = next(c for c in rep["checks"] if c["name"] == "dataset")
    assert "potd-tokens-v1/u16/sha256" in ds["summary"]

    raw = bytearray((theirs / "train.bin").read_bytes())
    raw[100] ^= 1
    (theirs / "train.bin").write_bytes(bytes(raw))
    bad = potd(*base, "--data-dir", str(theirs), "--state", "s2", "--json", "b.json",
               cwd=tmp_path)
    assert bad.returncode == 3, bad.stdout + bad.stderr
    c = next(c for c in json.loads((tmp_path / "b.json").read_text())["checks"]
             if c["name"] == "dataset")
    committed, local = c["evidence"]["committed"], c["evidence"]["local"]
    assert committed != local and committed in c["summary"] and local in c["summary"]
    assert c["summary"].count("examples") >= 2

    (theirs / "train.bin").write_bytes(bytes(raw[:-1]))  # not a whole number of tokens
    odd = potd(*base, "--data-dir", str(theirs), "--state", "s3", "--json", "c.json",
               cwd=tmp_path)
    assert odd.returncode == 3 and "Traceback" not in odd.stderr
    c = next(c for c in json.loads((tmp_path / "c.json").read_text())["checks"]
             if c["name"] == "dataset")
    assert "not a multiple" in c["summary"]
    missing = potd(*base, "--data-dir", str(tmp_path / "nowhere"), "--state", "s4",
                   cwd=tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


@pytest.mark.slow
def test_unknown_or_other_encoding_is_a_failed_check(env: Env) -> None:
    """A run.open committing an encoding the auditor does not know (or not the one the
    recipe's data has) fails the dataset check; no crash."""
    from prover.session import TrainingSession

    class OtherEncoding(TrainingSession):
        encoding = "potd-example-v9/sha256"

        def open_body(self, body: dict[str, Any]) -> dict[str, Any]:
            body["dataset"]["example_hash"] = self.encoding
            return body

    s = env.train(cls=OtherEncoding, tag="enc")
    rep = env.audit(s.run_id, env.dir / "ev-enc", samples=1)
    c = next(c for c in rep["checks"] if c["name"] == "dataset")
    assert c["status"] == "fail" and "does not know" in c["summary"] and rep["verdict"] == "fail"

    class Tokens(OtherEncoding):
        encoding = "potd-tokens-v1/u16/sha256"

    s = env.train(cls=Tokens, tag="enc2")
    rep = env.audit(s.run_id, env.dir / "ev-enc2", samples=1, state="state2")
    c = next(c for c in rep["checks"] if c["name"] == "dataset")
    assert c["status"] == "fail" and "potd-example-v1/sha256" in c["summary"]


@pytest.mark.slow
def test_resume_reads_moved_data_from_data_dir(env: Env, tmp_path: Path) -> None:
    """A run interrupted mid-way resumes with `potd prover resume --train --data-dir NEW`
    after its data moved; without it (the spooled place is gone) the error says what to
    pass; a different copy is refused before anything is logged (its root is not the
    committed one)."""
    from prover.recipes import get_recipe
    from prover.session import TrainingSession

    src = tmp_path / "recipes" / "bigram.py"
    src.parent.mkdir()
    src.write_text(textwrap.dedent(TOKEN_RECIPE))
    text = (Path(__file__).parent.parent / "docs" / "protocol.md").read_bytes()[:4000]
    old, new, other = tmp_path / "old", tmp_path / "new", tmp_path / "other"
    for d, t in ((old, text), (other, text[::-1])):
        d.mkdir()
        write_tokens(d / "train.bin", t, "uint16")
    spool, ev = tmp_path / "run.spool", tmp_path / "ev"
    r = get_recipe(f"{src}:Bigram", data_dir=old)
    with pytest.raises(ValueError), TrainingSession(r, env.client(), env.trainer, ev, spool) as s:
        for b in s.batches():
            s.train_step(b)
            if b.step == 3:
                raise ValueError("interrupted")
    old.rename(new)
    (tmp_path / "alice.key").write_text(env.trainer.private_string())
    base = ["prover", "resume", "--train", "--spool", str(spool), "--key", "alice.key"]
    gone = potd(*base, cwd=tmp_path)
    assert gone.returncode == 2 and "Traceback" not in gone.stderr
    assert "--data-dir" in gone.stderr, gone.stderr
    wrong = potd(*base, "--data-dir", str(other), cwd=tmp_path)
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    assert "root" in wrong.stderr, wrong.stderr
    ok = potd(*base, "--data-dir", str(new), cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "closed after" in ok.stdout
    rep = env.audit(s.run_id, ev, samples=2, recipe=f"{src}:Bigram", data_dir=str(new))
    assert rep["verdict"] == "pass", [c for c in rep["checks"] if c["status"] != "pass"]


def test_native_hasher_equals_the_python_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    """The optional native hasher (prover/_native.c, built by setup.py with OpenSSL) gives
    the bytes of the pure-Python path: every window hash and the root, across chunk
    boundaries and for subsets; CI (POTD_REQUIRE_NATIVE=1) requires it to be built."""
    if datasets._native is None:
        if os.environ.get("POTD_REQUIRE_NATIVE") == "1":
            pytest.fail("prover._native is not built (needs Debian libssl-dev and a C "
                        "compiler; pip install -e . builds it)")
        pytest.skip("prover._native is not built (optional: needs OpenSSL's headers)")
    monkeypatch.setattr(datasets, "CHUNK_BUDGET", 4096)
    rng = np.random.default_rng(7)
    path = write_tokens(tmp_path / "t.bin", rng.integers(0, 65535, 20_011), "uint16")
    for block, stride in ((16, 16), (16, 7), (64, 65), (3, 1)):
        tf = TokenFile(path, "uint16", block=block, stride=stride)
        assert tf.hash_blob() == b"".join(tf.hashes())
        sub = Subset(tf, 5, len(tf) - 3)
        assert sub.hash_blob() == b"".join(sub.hashes())
        native = cache.compute(tf)
        monkeypatch.setattr(datasets, "_native", None)
        python = cache.compute(tf)
        monkeypatch.undo()
        monkeypatch.setattr(datasets, "CHUNK_BUDGET", 4096)
        assert (native.root, native.blob) == (python.root, python.blob)
    for n in (1, 2, 3, 5, 8, 9):
        blob = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(n))
        assert datasets._native.rfc6962_root(blob).hex() == merkle_root_hex(
            [blob[i * 32:i * 32 + 32] for i in range(n)])
    with pytest.raises(ValueError):
        datasets._native.window_hashes(b"abc", b"h", 4, 1, 1)  # outside the buffer
