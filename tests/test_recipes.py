"""Bring your own training: recipes loaded from a file, a module or an entry point, their
code pinned (docs/protocol.md §4.3 "Recipes"), custom steps replayed bit for bit, and the
refusals (missing file, not a recipe, an import the pin cannot see, out-of-bounds
settings, code that differs from the commitment)."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e import Env, checks, make_env

from ledger.errors import UsageError
from prover.recipes import get_recipe
from prover.recipes.pin import STEP_LABEL, RecipePinError, code_hash
from prover.recipes.registry import BUILTIN, registered
from prover.recipes.settings import parse_settings, read_config

RECIPE = '''
"""A user's recipe: AdamW with weight-decay groups by parameter name, gradient
accumulation over micro-batches, clipping and bf16 autocast on the CPU."""
from typing import Any, ClassVar

import torch
from torch import nn

from helpers import WIDTH
from prover.recipes import Data, Recipe, digits


class MyRecipe(Recipe):
    name = "my-recipe"
    defaults: ClassVar[dict[str, Any]] = {
        "hidden": WIDTH, "lr": "0.01", "batch_size": 96, "epochs": 1, "k": 4, "micro": 3,
        "clip": "0.5", "bf16": True}
    bounds: ClassVar[dict[str, tuple[Any, Any]]] = {"hidden": (1, 256), "micro": (1, 8)}

    def data(self) -> Data:
        return digits(image=False)

    def model(self) -> nn.Module:
        h = int(self.config["hidden"])
        return nn.Sequential(nn.Linear(64, h), nn.ReLU(), nn.Dropout(0.1), nn.Linear(h, 10))

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        named = list(model.named_parameters())
        return torch.optim.AdamW(
            [{"params": [p for n, p in named if n.endswith("weight")], "weight_decay": 0.01},
             {"params": [p for n, p in named if not n.endswith("weight")],
              "weight_decay": 0.0}], lr=float(self.config["lr"]))

    def scheduler(self, opt: torch.optim.Optimizer) -> Any:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 5))

    def per_example_loss(self, model: nn.Module, x: torch.Tensor,
                         y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(x).float(), y, reduction="none")

    def step(self, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
             y: torch.Tensor, step: int) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        total = torch.zeros(())
        for xs, ys in zip(x.chunk(int(self.config["micro"])),
                          y.chunk(int(self.config["micro"]))):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.config["bf16"]):
                loss = self.per_example_loss(model, xs, ys).sum() / len(x)
            loss.backward()
            total += loss.detach()
        nn.utils.clip_grad_norm_(model.parameters(), float(self.config["clip"]))
        opt.step()
        return total
'''


def write_recipe(d: Path, width: int = 24) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "helpers.py").write_text(f"WIDTH = {width}\n")
    (d / "my_recipe.py").write_text(RECIPE)
    return d / "my_recipe.py"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from make_env(tmp_path)


def potd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ledger", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_file_recipe_trains_and_audits_through_the_cli(env: Env, tmp_path: Path) -> None:
    """The done criterion: a recipe outside the repository, run from another directory,
    trained and audited by path; fetched from the evidence; refused once edited; tampered
    evidence still fails."""
    src = write_recipe(tmp_path / "x")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "alice.key").write_text(env.trainer.private_string())
    (elsewhere / "cfg.toml").write_text("micro = 2\n")
    t = potd("prover", "train", "--recipe", f"{src}:MyRecipe", "--config", "cfg.toml",
             "--set", "clip=0.25", "--log", env.url, "--vkey", str(env.log_key.verifier),
             "--key", "alice.key", "--evidence", "ev", "--json", "t.json", cwd=elsewhere)
    assert t.returncode == 0, t.stdout + t.stderr
    run = json.loads((elsewhere / "t.json").read_text())["run"]
    base = ["auditor", "audit", "--log", env.url, "--vkey", str(env.log_key.verifier),
            "--run", run, "--evidence", str(elsewhere / "ev"), "--samples", "3", "-q"]
    ok = potd(*base, "--recipe", f"{src}:MyRecipe", "--state", "s1", "--json", "a.json",
              cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rep = json.loads((tmp_path / "a.json").read_text())
    rc = next(c for c in rep["checks"] if c["name"] == "recipe")
    assert rc["evidence"]["config"]["micro"] == 2 and rc["evidence"]["config"]["clip"] == "0.25"

    # the source is in the evidence: fetched, hashed, then audited from the fetched copy
    f = potd("auditor", "fetch-recipe", "--evidence", str(elsewhere / "ev"), "--run", run,
             "--out", str(tmp_path / "fetched"), cwd=tmp_path)
    assert f.returncode == 0, f.stderr
    committed = rc["evidence"]["code_hash"]
    assert f"code hash {committed}" in f.stdout and "helpers.py" in f.stdout
    assert (tmp_path / "fetched" / "my_recipe.py").read_bytes() == src.read_bytes()
    again = potd(*base, "--recipe", f"{tmp_path / 'fetched' / 'my_recipe.py'}:MyRecipe",
                 "--state", "s2", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr

    # without --recipe the auditor runs nothing the log names: a failed recipe check
    named = potd(*base, "--state", "s3", "--json", "n.json", cwd=tmp_path)
    assert named.returncode == 1
    assert "fetch-recipe" in json.dumps(json.loads((tmp_path / "n.json").read_text()))

    # the same file with one setting changed: refused, both hashes named
    src.write_text(RECIPE.replace('"clip": "0.5"', '"clip": "0.6"'))
    bad = potd(*base, "--recipe", f"{src}:MyRecipe", "--state", "s4", "--json", "b.json",
               cwd=tmp_path)
    assert bad.returncode == 1
    summary = next(c for c in json.loads((tmp_path / "b.json").read_text())["checks"]
                   if c["name"] == "recipe")["summary"]
    local = code_hash(get_recipe(f"{src}:MyRecipe").source_files())
    assert committed in summary and local in summary and "my_recipe.py" in summary
    src.write_text(RECIPE)

    # tampered evidence still fails
    obj = sorted((elsewhere / "ev" / "objects").iterdir())[0]
    data = bytearray(obj.read_bytes())
    data[-1] ^= 1
    obj.write_bytes(bytes(data))
    tampered = potd(*base, "--recipe", f"{src}:MyRecipe", "--state", "s5", cwd=tmp_path)
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr

    # a recipe file that does not exist is the auditor's usage error
    missing = potd(*base, "--recipe", f"{tmp_path / 'nope.py'}:MyRecipe", "--state", "s6",
                   cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_custom_step_replays_bit_exactly_and_pins_sibling_modules(env: Env,
                                                                  tmp_path: Path) -> None:
    """Accumulation + clipping + bf16 autocast, every segment replayed in exact mode; an
    edit to the sibling module the recipe imports is caught by the pin."""
    spec = f"{write_recipe(tmp_path / 'x')}:MyRecipe"
    s = env.train(recipe=spec, overrides={})
    rep = env.audit(s.run_id, s.evidence.root, recipe=spec, samples=1000)
    assert rep["verdict"] == "pass", [(c["name"], c["summary"][:300]) for c in rep["checks"]
                                      if c["status"] != "pass"]
    assert rep["replay"]["mode"] == "exact", rep["replay"]
    opened = json.loads((s.evidence.root / "recipe.json").read_text())
    assert set(opened["files"]) == {STEP_LABEL, "my_recipe.py", "helpers.py"}
    (tmp_path / "x" / "helpers.py").write_text("WIDTH = 25\n")
    bad = env.audit(s.run_id, s.evidence.root, recipe=spec, state="s2")
    assert checks(bad)["recipe"] == "fail"
    assert "helpers.py" in next(c for c in bad["checks"] if c["name"] == "recipe")["summary"]


def test_scheduler_rates_are_a_function_of_the_step(tmp_path: Path) -> None:
    """The rates train_step sets equal a real torch scheduler stepped alongside a real
    optimizer; a scheduler that depends on the loss is refused."""
    import torch

    r = get_recipe(f"{write_recipe(tmp_path / 'x')}:MyRecipe")
    torch.manual_seed(0)
    opt = r.optimizer(r.model())
    sched = r.scheduler(opt)
    for step in range(8):
        assert r.group_lrs(step) == [g["lr"] for g in opt.param_groups]
        assert r.lr(step) == opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    assert r.lr(0) == 0.002 and r.lr(7) == 0.01
    (tmp_path / "plateau.py").write_text(textwrap.dedent('''
        import torch
        from prover.recipes.digits_mlp import DigitsMLP
        class Plateau(DigitsMLP):
            def scheduler(self, opt):
                return torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
        '''))
    with pytest.raises(UsageError, match="ReduceLROnPlateau"):
        get_recipe(f"{tmp_path / 'plateau.py'}:Plateau").lr(0)


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        get_recipe(f"{tmp_path / 'absent.py'}:R")
    (tmp_path / "notrecipe.py").write_text("class R:\n    pass\n")
    with pytest.raises(UsageError, match="not a recipe"):
        get_recipe(f"{tmp_path / 'notrecipe.py'}:R")
    with pytest.raises(UsageError, match="no class"):
        get_recipe(f"{tmp_path / 'notrecipe.py'}:Missing")
    with pytest.raises(UsageError, match="unknown recipe"):
        get_recipe("no-such-recipe")
    # an import by a computed name escapes the static pin: refused at load
    (tmp_path / "hidden_dep.py").write_text("X = 1\n")
    (tmp_path / "sneaky.py").write_text(textwrap.dedent('''
        import importlib
        from prover.recipes.digits_mlp import DigitsMLP
        importlib.import_module("hidden" + "_dep")
        class Sneaky(DigitsMLP):
            name = "sneaky"
        '''))
    with pytest.raises(RecipePinError, match="hidden_dep"):
        get_recipe(f"{tmp_path / 'sneaky.py'}:Sneaky")
    # bounds and types are checked before any hook runs
    src = f"{write_recipe(tmp_path / 'x')}:MyRecipe"
    with pytest.raises(UsageError, match="out of bounds"):
        get_recipe(src, hidden=10**9)
    with pytest.raises(UsageError, match="must be"):
        get_recipe(src, micro="many")


def test_code_hash_definition_and_registry_outside_it() -> None:
    """potd-recipe-v2 as documented, over the built-in's file and the shared step code;
    registering a name changes no hash."""
    root = Path(__file__).resolve().parent.parent
    files = {label: (root / label).read_bytes()
             for label in (STEP_LABEL, "prover/recipes/digits_mlp.py")}
    h = hashlib.sha256(b"potd-recipe-v2\n")
    for label in sorted(files):
        h.update(struct.pack(">H", len(label)) + label.encode()
                 + struct.pack(">Q", len(files[label])) + files[label])
    r = get_recipe("digits-mlp")
    assert r.source_files() == files and r.source_hash() == h.hexdigest()
    before = {n: get_recipe(n).source_hash() for n in BUILTIN}
    BUILTIN["extra"] = "prover.recipes.wide_mlp:WideMLP"
    try:
        assert {n: get_recipe(n).source_hash() for n in before} == before
    finally:
        del BUILTIN["extra"]


def test_entry_point_registration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed distribution (a .dist-info on sys.path) registers a name under
    potd.recipes; its package's modules are pinned."""
    pkg = tmp_path / "potd_tinypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "recipes.py").write_text(
        "from prover.recipes.digits_mlp import DigitsMLP\n\n\n"
        "class Tiny(DigitsMLP):\n    name = 'tiny'\n")
    info = tmp_path / "potd_tinypkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: potd-tinypkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[potd.recipes]\ntiny = potd_tinypkg.recipes:Tiny\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert registered()["tiny"] == "potd_tinypkg.recipes:Tiny"
    r = get_recipe("tiny", hidden=8)
    assert r.name == "tiny" and r.spec == "tiny" and r.config["hidden"] == 8
    assert set(r.source_files()) == {STEP_LABEL, "potd_tinypkg/__init__.py",
                                     "potd_tinypkg/recipes.py"}


def test_settings_from_the_command_line_and_files(tmp_path: Path) -> None:
    assert parse_settings(["a=3", "b=0.5", "c=true", "d=x"]) == {
        "a": 3, "b": "0.5", "c": True, "d": "x"}
    with pytest.raises(UsageError):
        parse_settings(["novalue"])
    (tmp_path / "c.toml").write_text('hidden = 16\nlr = 0.02\n')
    (tmp_path / "c.json").write_text('{"hidden": 16, "lr": "0.02"}')
    assert read_config(str(tmp_path / "c.toml")) == {"hidden": 16, "lr": 0.02}
    a = get_recipe("digits-mlp", **read_config(str(tmp_path / "c.toml")))
    b = get_recipe("digits-mlp", **read_config(str(tmp_path / "c.json")))
    assert a.config == b.config and a.config["lr"] == "0.02"
    (tmp_path / "n.json").write_text('{"hidden": {"nested": 1}}')
    with pytest.raises(UsageError, match="flat"):
        read_config(str(tmp_path / "n.json"))


def test_the_readme_recipe_runs(tmp_path: Path) -> None:
    """The README's "Your own model" recipe loads and takes a step."""
    import torch

    from prover.recipes import train_step

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = readme.split("# /home/me/exp/my_recipe.py\n", 1)[1].split("```", 1)[0]
    (tmp_path / "readme_recipe.py").write_text(code)
    r = get_recipe(f"{tmp_path / 'readme_recipe.py'}:MyRecipe", hidden=8)
    d = r.data()
    model = r.model()
    opt = r.optimizer(model)
    loss = train_step(r, model, opt, d.x[:96], d.y[:96], bytes(32), 0)
    assert torch.isfinite(loss) and r.lr(0) == opt.param_groups[0]["lr"] == 0.002
