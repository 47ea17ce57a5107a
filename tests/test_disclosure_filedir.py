"""Selective disclosure of a directory-of-files run (docs/protocol.md §4.6, §4.9): the
auditor holds no data directory and turns each disclosed file into tensors with the
recipe's ``transform`` hook. A real user recipe over a real FileDir, real training, a
real data server on loopback."""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from e2e import Env, checks, make_env
from test_disclosure import DataServer

from ledger.errors import MalformedError, UsageError
from prover.attacks import DataSubstitution
from prover.dataserver import load
from prover.disclosure import TransformError
from prover.recipes import get_recipe
from prover.session import TrainingSession

FILE_RECIPE = '''
"""Ten classes of 8-byte files: one example per file in the recipe's data directory."""
from typing import Any, ClassVar

import torch
from torch import nn

from prover.datasets import Datasets, FileDir
from prover.recipes import Recipe


class Files(Recipe):
    name = "files-mlp"
    defaults: ClassVar[dict[str, Any]] = {"lr": "0.1", "batch_size": 8, "epochs": 1,
                                          "k": 2}

    def transform(self, content: bytes) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.tensor(list(content[:8]), dtype=torch.float32) / 255.0
        return x, torch.tensor(content[8] % 10, dtype=torch.int64)

    def data(self) -> Datasets:
        assert self.data_dir is not None, "pass --data-dir"
        train, held = FileDir(self.data_dir, self.transform).split(16)
        return Datasets(train, held)

    def model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10))

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=float(self.config["lr"]))

    def per_example_loss(self, model: nn.Module, x: torch.Tensor,
                         y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(x), y, reduction="none")
'''


def _files(root: Path, n: int = 96) -> Path:
    d = root / "trainer-files"
    for i in range(n):
        body = hashlib.sha256(b"%d" % i).digest()[:9]
        (d / f"{i % 7}").mkdir(parents=True, exist_ok=True)
        (d / f"{i % 7}" / f"doc-{i:03d}.bin").write_bytes(body)
    return d


class Case:
    def __init__(self, env: Env, root: Path) -> None:
        self.env, self.data = env, _files(root)
        self.spec = f"{root / 'files_recipe.py'}:Files"
        (root / "files_recipe.py").write_text(textwrap.dedent(FILE_RECIPE))

    def train(self, tag: str, cls: type[TrainingSession] = TrainingSession) -> str:
        e = self.env
        s = cls(get_recipe(self.spec, data_dir=self.data), e.client(), e.trainer,
                e.dir / f"ev-{tag}", e.dir / f"{tag}.spool", data_dir=self.data)
        s.open()
        for b in s.batches():
            s.train_step(b)
        s.close()
        return s.run_id

    def serve(self, run: str, **kw: Any) -> DataServer:
        with self.env.client() as c:
            return DataServer(load(c, run, recipe=self.spec, data_dir=str(self.data), **kw))

    def audit(self, run: str, url: str, tag: str, samples: int = 2, **kw: Any
              ) -> dict[str, Any]:
        # no data_dir: the auditor holds the recipe's code, not its files
        return self.env.audit(run, self.env.dir / f"ev-{tag}", state=f"state-{tag}-{url[-5:]}",
                              disclosure=url, public_challenge=True, recipe=self.spec,
                              samples=samples, memorization_segments=1, **kw)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Case]:
    root = tmp_path_factory.mktemp("filedir-disclosure")
    for env in make_env(root):
        yield Case(env, root)


def test_decode_hook_equals_the_file_adapters_batches(case: Case) -> None:
    r = get_recipe(case.spec, data_dir=case.data)
    ds = r.data()
    assert not isinstance(ds, tuple) and hasattr(ds, "train")
    train = ds.train  # type: ignore[union-attr]
    for i in range(len(train)):
        x, y = r.decode(train.encoding, train.example_bytes(i))
        bx, by = train.batch([i])
        assert x.dtype == bx.dtype and torch.equal(x, bx[0]) and torch.equal(y, by[0])
    blob = train.example_bytes(0)
    with pytest.raises(MalformedError, match="header"):
        r.decode(train.encoding, blob[3:])
    with pytest.raises(TransformError, match="transform refuses"):
        r.decode(train.encoding, blob[:16])  # too short: content[8] is out of range
    plain = get_recipe("digits-mlp")  # no transform hook: a usage error, not a guess
    with pytest.raises(UsageError, match="transform"):
        plain.decode(train.encoding, blob)


@pytest.mark.slow
def test_filedir_run_audits_with_disclosure_and_catches_substitution(
        case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    run = case.train("honest")
    srv = case.serve(run, max_samples=2, max_memorization=1)
    try:
        rep = case.audit(run, srv.url, "honest")
        # the same recipe code failing in the auditor's environment (say, a transform
        # reading a file of the trainer's data directory) is no evidence: inconclusive
        cls = type(get_recipe(case.spec))

        def broken(self: Any, content: bytes) -> Any:
            raise OSError("vocab.json: no such file")

        with monkeypatch.context() as m:
            m.setattr(cls, "transform", broken)
            env_bound = case.audit(run, srv.url, "honest")
    finally:
        srv.stop()
    dc = next(x for x in env_bound["checks"] if x["name"] == "disclosure")
    assert dc["status"] == "inconclusive" and "vocab.json" in dc["summary"], dc
    assert env_bound["verdict"] == "inconclusive"
    c = checks(rep)
    assert rep["verdict"] == "pass", [x for x in rep["checks"] if x["status"] != "pass"]
    assert c["disclosure"] == c["replay"] == c["order"] == "pass"
    assert "potd-file-v1" in next(x for x in rep["checks"] if x["name"] == "dataset")["summary"]
    order = next(x for x in rep["checks"] if x["name"] == "order")
    assert "committed example-hash list (hashes, not data" in order["summary"]
    assert "did not disclose" in order["summary"] and order["evidence"]["not_checked"]
    assert 0 < rep["disclosure"]["train"]["fraction"] < 1

    # the data server discloses another file in place of a committed one: named, fail
    with case.env.client() as cl:
        d = load(cl, run, recipe=case.spec, data_dir=str(case.data), max_samples=2,
                 max_memorization=1)
    victim, real = sorted(d.allowed["train"])[1], d.train

    class Swapped:
        def __len__(self) -> int:
            return len(real)

        def example_bytes(self, i: int) -> bytes:
            return real.example_bytes(i) + (b"\x00" if i == victim else b"")

    d.train = Swapped()
    liar = DataServer(d)
    try:
        bad = case.audit(run, liar.url, "honest")
    finally:
        liar.stop()
    dc = next(x for x in bad["checks"] if x["name"] == "disclosure")
    assert dc["status"] == "fail" and dc["evidence"]["index"] == victim and \
        bad["verdict"] == "fail"

    # the trainer trained on other data than it committed: replay on the disclosed
    # (committed) files catches it
    atk = case.train("atk", DataSubstitution)
    srv = case.serve(atk, max_samples=64)
    try:
        rep = case.audit(atk, srv.url, "atk", samples=64)
    finally:
        srv.stop()
    c = checks(rep)
    assert c["disclosure"] == "pass" and c["replay"] == "fail", rep["checks"]
    assert rep["verdict"] == "fail"
