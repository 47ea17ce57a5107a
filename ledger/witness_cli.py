"""``potd witness``: run a C2SP tlog-witness that cosigns consistent checkpoints."""

from __future__ import annotations

import click


@click.group()
def witness() -> None:
    """Cosign log checkpoints after checking consistency (not built yet: see the witness
    issue)."""
