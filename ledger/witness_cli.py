"""``potd witness``: run a C2SP tlog-witness that cosigns consistent checkpoints.

Thin: parse arguments, make one :mod:`ledger.witness` call, print. Private keys are read
from files and never printed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from .errors import UsageError
from .netutil import connection_options


@click.group()
def witness() -> None:
    """Run a witness: cosign a log's checkpoints only when they extend the last one cosigned.

    Implements C2SP tlog-witness (POST /add-checkpoint) with tlog-cosignature/v1 keys.
    """


def _verifier(text: str) -> Any:
    """A log verifier key given inline or as a file holding it."""
    from .note import Verifier

    if os.path.isfile(text):
        text = Path(text).read_text().strip()
    return Verifier.parse(text)


def parse_log_spec(spec: str) -> tuple[str, Any]:
    """``ORIGIN=VKEY`` (VKEY inline or a file), or just ``VKEY`` when the origin is its name."""
    from .errors import MalformedError
    from .note import Verifier

    try:
        v = Verifier.parse(spec)
        return v.name, v
    except MalformedError:
        pass
    if os.path.isfile(spec):
        v = _verifier(spec)
        return v.name, v
    origin, sep, vkey = spec.partition("=")
    if not sep or not origin:
        raise UsageError(f"log {spec[:80]!r} is not ORIGIN=VKEY",
                         hint="e.g. potd.example/log1=potd.example/log1+1234abcd+AQ...")
    return origin, _verifier(vkey)


def _open_state(db: str) -> Any:
    from .witness import WitnessState

    return WitnessState(db)


@witness.command()
@click.argument("name")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="File for the private key (created with mode 0600).")
@click.option("--force", is_flag=True, help="Overwrite an existing key file.")
@click.option("--algorithm", type=click.Choice(["ed25519", "ml-dsa-44"]), default="ed25519",
              show_default=True, help="ed25519: cosignature/v1 (key type 0x04); ml-dsa-44: "
              "post-quantum ML-DSA-44 cosignatures (0x06, C2SP tlog-cosignature).")
def keygen(name: str, out: str, force: bool, algorithm: str) -> None:
    """Generate a witness key named NAME (e.g. witness.example/w1).

    Writes the private key (Go note format, PRIVATE+KEY+...) to --out with mode 0600 and
    <out>.pub with the verifier key, and prints the verifier key: give it to the logs
    and auditors that will check this witness's cosignatures.
    """
    from .cli import keygen_to
    from .note import ALG_COSIGNATURE_V1, ALG_MLDSA44

    keygen_to(name, out, force, ALG_MLDSA44 if algorithm == "ml-dsa-44" else ALG_COSIGNATURE_V1)


@witness.command(name="add-log")
@click.option("--db", required=True, type=click.Path(dir_okay=False),
              help="The witness database (SQLite; created if missing).")
@click.option("--log", "log_opts", multiple=True, metavar="ORIGIN=VKEY",
              help="A log to witness (repeatable); same as the positional form.")
@click.argument("logs", nargs=-1, metavar="[ORIGIN=VKEY]...")
def add_log(db: str, log_opts: tuple[str, ...], logs: tuple[str, ...]) -> None:
    """Pin the Ed25519 verifier key VKEY for the log ORIGIN, which starts at size 0.

    VKEY is the key string or a file holding it; ORIGIN= may be left out when the origin
    is the key name. Re-adding a known origin keeps its cosigned state (a second key for
    the same origin is added alongside the first).
    """
    specs = list(log_opts) + list(logs)
    if not specs:
        raise UsageError("no log given", hint="pass ORIGIN=VKEY (or --log ORIGIN=VKEY)")
    parsed = [parse_log_spec(s) for s in specs]
    state = _open_state(db)
    try:
        for origin, vkey in parsed:
            state.add_log(origin, vkey)
            click.echo(f"{origin}\t{vkey}")
    finally:
        state.close()


@witness.command()
@click.option("--db", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The witness database.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (origins, sizes, roots, "
              "keys and the last cosigned checkpoint).")
def state(db: str, as_json: bool) -> None:
    """Show each witnessed log: its origin and the size and root last cosigned."""
    st = _open_state(db)
    try:
        logs = st.logs()
    finally:
        st.close()
    if as_json:
        click.echo(json.dumps({"logs": [s.to_json() for s in logs]}, indent=2))
        return
    for s in logs:
        click.echo(f"{s.origin}\tsize {s.size}\troot {s.to_json()['root']}")


@witness.command()
@click.option("--db", required=True, type=click.Path(dir_okay=False),
              help="The witness database (SQLite; created if missing).")
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The witness private key file (from `potd witness keygen`; an Ed25519 "
                   "note key of type 0x01 or 0x04, or an ML-DSA-44 key of type 0x06).")
@click.option("--log", "logs", multiple=True, metavar="ORIGIN=VKEY",
              help="Also pin this log before serving (repeatable).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8081, show_default=True, help="Port (0: any free port).")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]),
              help="uvicorn and witness log level.")
@connection_options
def serve(db: str, key: str, logs: tuple[str, ...], host: str, port: int,
          log_level: str, header_timeout: float, body_timeout: float,
          max_connections: int) -> None:
    """Serve POST /add-checkpoint (C2SP tlog-witness), GET /health and GET /state.

    Prints "listening on http://HOST:PORT" to stderr once ready; stops on SIGINT/SIGTERM.
    """
    import logging

    from .cli import read_signer
    from .cosignature import as_cosigning_key
    from .witness import serve as run

    parsed = [parse_log_spec(s) for s in logs]
    given = read_signer(key)
    signer = as_cosigning_key(given)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")

    def ready(h: str, p: int) -> None:
        if signer is not given:
            click.echo(f"note: {key} is an Ed25519 note key (0x01); it cosigns as the "
                       "cosignature/v1 key below (0x04, same public key)", err=True)
        click.echo(f"witness {signer.verifier}", err=True)
        click.echo(f"listening on http://{h}:{p}", err=True)

    run(db, signer, parsed, host=host, port=port, log_level=log_level, on_ready=ready,
        header_timeout=header_timeout, body_timeout=body_timeout,
        max_connections=max_connections)
