"""House style is checked, not hoped for: ruff over the whole tree, mypy --strict over
ledger/, prover/ and auditor/ and everything they import (setup.cfg [mypy])."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    exe = Path(sys.executable).parent / name
    found = str(exe) if exe.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (it comes with the dev extras)")
    return found


def test_ruff() -> None:
    r = subprocess.run([_tool("ruff"), "check", "ledger", "prover", "auditor", "scripts",
                        "tests"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict() -> None:
    r = subprocess.run([_tool("mypy")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def _imports(path: Path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


# The one import that points up, on purpose: the data server derives a run's public
# challenge and disclosure plan with exactly the auditor's code (the auditor checks the
# same derivation, so two copies could drift apart).
UPWARD_ALLOWED = {("prover/dataserver.py", "auditor")}


def test_imports_point_down() -> None:
    """The ledger (the lowest package) imports neither the prover nor the auditor (the
    roles' command groups reach `potd` as entry points); the prover does not import the
    auditor, but for the exception above."""
    above = {"ledger": {"prover", "auditor"}, "prover": {"auditor"}}
    wrong = []
    for pkg, banned in above.items():
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            for mod in sorted(_imports(path) & banned):
                if (rel, mod) not in UPWARD_ALLOWED:
                    wrong.append(f"{rel} imports {mod}")
    assert not wrong, wrong
