"""The README cannot drift: its CLI reference is generated from the commands, and its
attack table names every scenario of the attack suite."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import attacks  # noqa: E402
import cli_reference  # noqa: E402

README = (ROOT / "README.md").read_text()


def test_cli_reference_matches_the_commands() -> None:
    start = README.index(cli_reference.BEGIN)
    end = README.index(cli_reference.END) + len(cli_reference.END) + 1
    assert README[start:end] == cli_reference.reference(), (
        "README's CLI reference is stale: regenerate it with scripts/cli_reference.py")


def test_readme_shows_the_two_commands() -> None:
    assert "scripts/demo" in README and "scripts/test" in README


def test_attack_table_covers_every_scenario() -> None:
    for s in attacks.SCENARIOS:
        assert f"| {s.name} |" in README, f"README's attack table lacks {s.name!r}"
