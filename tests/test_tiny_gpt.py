"""The built-in language model ``tiny-gpt``: its data (the King James Bible, byte tokens,
a deterministic held-out part), optimizer groups, schedule and bounds; and, end to end
through a real log server, a run with gradient accumulation, clipping and bf16 autocast
that replays bit for bit, whose tampered evidence fails and whose changed setting is
refused."""

from __future__ import annotations

import math
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from e2e import Env, checks, make_env

from ledger.errors import UsageError
from prover.recipes import get_recipe
from prover.recipes.pin import code_hash
from prover.recipes.tiny_gpt import kjv_bytes, windows

# 160 windows of 33 bytes: 144 trained in 9 steps an epoch, 16 held out
SMALL = {"block": 32, "windows": 160, "epochs": 2, "k": 3, "warmup": 3}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from make_env(tmp_path)


def test_data_is_the_king_james_bible_cut_into_windows() -> None:
    text = kjv_bytes()
    assert text.startswith(b"1:1 In the beginning God created") and len(text) > 4_000_000
    r = get_recipe("tiny-gpt", **SMALL)
    d = r.data()
    assert (len(d.train), len(d.heldout)) == (144, 16)
    assert d.train.encoding == "potd-tokens-v1/u16/sha256"  # windows are token-file examples
    x, y = d.train.batch(range(144))
    hx, hy = d.heldout.batch(range(16))
    assert x.shape == (144, 32) and hx.shape == (16, 32) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one token
    w = windows(torch.frombuffer(bytearray(text), dtype=torch.uint8), 32, 33, 160)
    held = w[9::10]  # every 10th window, deterministically
    assert torch.equal(hx, held[:, :-1]) and torch.equal(hy, held[:, 1:])
    assert bytes(x[0].to(torch.uint8).tolist()) == text[:32]
    assert torch.equal(get_recipe("tiny-gpt", **SMALL).data().train.batch(range(144))[0], x)


def test_weight_decay_groups_schedule_and_bounds() -> None:
    r = get_recipe("tiny-gpt", **SMALL)
    model = r.model()
    opt = r.optimizer(model)
    names = {id(p): n for n, p in model.named_parameters()}
    decay, rest = ({names[id(p)] for p in g["params"]} for g in opt.param_groups)
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0
    assert all(n.endswith("weight") and "ln" not in n and not n.startswith("w")
               for n in decay) and "blocks.0.qkv.weight" in decay
    assert {"wte.weight", "wpe.weight", "ln_f.weight", "blocks.0.qkv.bias"} <= rest
    assert "head.weight" not in model.state_dict()  # tied head: wte.weight
    assert len(decay) + len(rest) == len(list(model.parameters()))
    # warmup then cosine to min_lr, a function of the step
    lrs = [r.lr(s) for s in range(r.total_steps())]
    assert r.total_steps() == 18 and lrs[0] == pytest.approx(0.001)
    assert lrs[2] == pytest.approx(0.003) and lrs[-1] == pytest.approx(0.0003, rel=0.05)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:], strict=False))
    # GPT-2-small shape builds (on the meta device), beyond-GPT-2-XL shapes are refused
    big = get_recipe("tiny-gpt", n_layer=12, n_head=12, n_embd=768, block=1024)
    with torch.device("meta"):
        n = sum(p.numel() for p in big.model().parameters())
    assert n == 86_039_040  # GPT-2 small: its 85.0M block parameters, a 256-token vocabulary
    with pytest.raises(UsageError, match="out of bounds"):
        get_recipe("tiny-gpt", n_embd=100_000)
    with pytest.raises(UsageError, match="multiple of n_head"):
        get_recipe("tiny-gpt", n_embd=65)
    with torch.no_grad():
        x2, y2 = r.data().train.batch([0, 1])
        assert math.isfinite(float(r.per_example_loss(model, x2, y2)[0]))


@pytest.mark.slow
def test_accumulation_clipping_autocast_replays_bit_exactly(env: Env, tmp_path: Path) -> None:
    """Train with 3 micro-batches, clipping at 0.5 and bf16 autocast through the real log
    server; every segment replays in exact mode; the settings are committed; a changed
    setting at audit is refused naming both hashes; tampered evidence fails."""
    over = {**SMALL, "micro_batches": 3, "clip": "0.5", "autocast": True}
    s = env.train(recipe="tiny-gpt", overrides=over)
    rep = env.audit(s.run_id, s.evidence.root, recipe="tiny-gpt")
    assert rep["verdict"] == "pass", [(c["name"], c["summary"][:300]) for c in rep["checks"]
                                      if c["status"] != "pass"]
    assert rep["replay"]["mode"] == "exact", rep["replay"]
    assert len(rep["replay"]["segments"]) == 6
    committed = next(c for c in rep["checks"] if c["name"] == "recipe")["evidence"]
    assert committed["config"] == s.recipe.config
    assert committed["config"]["micro_batches"] == 3 and committed["config"]["autocast"] is True

    # the same recipe with one default changed, as a file: refused, both hashes named
    src = Path(__file__).resolve().parent.parent / "prover" / "recipes" / "tiny_gpt.py"
    edited = tmp_path / "x" / "tiny_gpt.py"
    edited.parent.mkdir()
    edited.write_text(src.read_text().replace('"weight_decay": "0.1"', '"weight_decay": "0.2"'))
    spec = f"{edited}:TinyGPT"
    bad = env.audit(s.run_id, s.evidence.root, recipe=spec, state="s2")
    assert checks(bad)["recipe"] == "fail" and bad["verdict"] == "fail"
    summary = next(c for c in bad["checks"] if c["name"] == "recipe")["summary"]
    mine = code_hash(get_recipe(spec).source_files())
    assert committed["code_hash"] in summary and mine in summary

    # tampered evidence: a checkpoint's weights changed by one bit
    ev = tmp_path / "ev-copy"
    shutil.copytree(s.evidence.root, ev)
    obj = max((ev / "objects").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 1
    obj.write_bytes(bytes(data))
    tampered = env.audit(s.run_id, ev, recipe="tiny-gpt", state="s3")
    assert tampered["verdict"] == "fail"


def test_tied_weights_as_a_shared_module_are_refused_before_anything_is_logged(
        tmp_path: Path) -> None:
    """The usual GPT-2 idiom ``head.weight = wte.weight`` puts one tensor under two
    state-dict names, which a checkpoint cannot store: refused by the preflight with a
    hint, not a traceback at the first checkpoint."""
    from prover.preflight import PreflightError, check_recipe

    (tmp_path / "tied_gpt.py").write_text(textwrap.dedent('''
        from torch import nn
        from prover.recipes.tiny_gpt import TinyGPT

        class Tied(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner
                self.head = nn.Linear(inner.wte.weight.shape[1], 256, bias=False)
                self.head.weight = inner.wte.weight

            def forward(self, x):
                return self.head(self.inner.ln_f(self.inner.wte(x)))

        class TiedGPT(TinyGPT):
            name = "tied-gpt"

            def model(self):
                return Tied(super().model())
        '''))
    r = get_recipe(f"{tmp_path / 'tied_gpt.py'}:TiedGPT", **SMALL)
    with pytest.raises(PreflightError, match="share one tensor") as e:
        check_recipe(r)
    assert "inner.wte.weight" in e.value.message and "wte.weight.t()" in (e.value.hint or "")
    check_recipe(get_recipe("tiny-gpt", **SMALL))  # the built-in's tied head passes
