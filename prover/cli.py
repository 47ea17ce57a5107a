"""``potd prover``: the trainer's commands (train, resume, keygen)."""

from __future__ import annotations

import click


@click.group()
def prover() -> None:
    """Train while committing seed, data and weights to a log (not built yet: see the
    prover issue)."""
