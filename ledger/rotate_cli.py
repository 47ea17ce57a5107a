"""``potd ledger rotate-key``: retire the log's key after a rotation window.

Thin: open the log with its current key, one :meth:`ledger.log.Log.retire_key` call,
print JSON. The procedure (README, "Log key rotation"): serve with ``--also-sign-with
NEW.key`` while clients and witnesses move their pin to the new verifier key, stop every
frontend, run this, restart with ``--key NEW.key``.
"""

from __future__ import annotations

import json

import click


@click.command("rotate-key")
@click.option("--db", required=True, help="The log's SQLite file or postgresql:// URL.")
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The log's current private key file (the one to retire).")
@click.option("--new-key", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The new private key file (same origin; from `potd ledger keygen`).")
@click.option("--skip-window", is_flag=True,
              help="Rotate even if no checkpoint is signed by the new key yet (it signs the "
                   "latest one now): clients pinned to the new key had no window to move.")
def rotate_key(db: str, key: str, new_key: str, skip_window: bool) -> None:
    """Make --new-key the log's key and retire --key (stop every frontend first).

    The latest checkpoint keeps both signatures; every later one carries only the new
    key's. Older checkpoints stay as signed (by the retired key), and `fsck` accepts them.
    Prints JSON: the size of the checkpoint at the switch and both verifier keys."""
    from .cli import _open, read_signer

    log = _open(db, key)
    old = str(log.verifier)
    cp = log.retire_key(read_signer(new_key), skip_window=skip_window)
    click.echo(json.dumps({"size": cp.size, "retired": old, "vkey": str(log.verifier)}))
