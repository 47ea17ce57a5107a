"""``potd auditor``: the third party's commands (audit, verify-log, runs)."""

from __future__ import annotations

import click


@click.group()
def auditor() -> None:
    """Verify a log and a training run, replay steps, report (not built yet: see the
    auditor issue)."""
