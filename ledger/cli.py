"""The ``potd`` command line: parse arguments, make one library call, print.

Errors: every :class:`~ledger.errors.PotdError` is caught in one place (:func:`main`),
printed with its hint, and turned into an exit code: 1 for a failed verification or a
storage/malformed-input failure, 2 for bad usage.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from .errors import PotdError, UsageError
from .netutil import connection_options


def _b64(b: bytes) -> str:
    from .note import b64encode

    return b64encode(b)


class PotdGroup(click.Group):
    """A click group that reports PotdError cleanly instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PotdError as e:
            click.secho(f"error: {e.message}", fg="red", err=True)
            if e.hint:
                click.echo(f"hint: {e.hint}", err=True)
            ctx.exit(2 if isinstance(e, UsageError) else 1)


@click.group(cls=PotdGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="potd")
def main() -> None:
    """potd: proof of training data.

    A signed, append-only Merkle log of training commitments (ledger, witness), the
    trainer side that writes them (prover), and a third-party auditor that checks the
    log and replays training steps (auditor).
    """


@main.group(cls=PotdGroup)
def ledger() -> None:
    """Run and inspect a log: keys, storage, checkpoints and proofs."""


# -- keys ---------------------------------------------------------------------------

def write_private_key(path: str, text: str, force: bool) -> None:
    """Create ``path`` with mode 0600 holding a private key; never overwrite unless forced."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} already exists; refusing to overwrite a private key",
                         hint="choose another path, or pass --force") from None
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.chmod(path, 0o600)


def keygen_to(name: str, out: str, force: bool, alg: int = 0x01) -> None:
    """Generate a key named ``name`` (note alg ``alg``), write ``out`` (mode 0600) and
    ``out.pub``, and print the verifier key. Shared by every role's ``keygen``."""
    from .note import Signer

    s = Signer.generate(name, alg)
    write_private_key(out, s.private_string(), force)
    Path(out + ".pub").write_text(str(s.verifier) + "\n")
    click.echo(str(s.verifier))


def read_signer(path: str) -> Any:
    from .note import Signer

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UsageError(f"cannot read key file {path}: {e.strerror}") from None
    return Signer.parse(text)


def _warn_origin(origin: str | None, vkey: Any) -> None:
    """Warn (stderr) when --origin differs from the pinned key's name."""
    from .note import origin_warning

    w = origin_warning(origin, vkey)
    if w is not None:
        click.echo(w, err=True)


def read_policy(path: str) -> Any:
    """A C2SP tlog-policy file."""
    from .policy import MAX_POLICY_BYTES, parse_policy

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_POLICY_BYTES + 1)
    except OSError as e:
        raise UsageError(f"cannot read policy file {path}: {e.strerror}") from None
    return parse_policy(data)


def read_verifier(vkey: str) -> Any:
    """A verifier key given inline or as a file holding it."""
    from .note import Verifier

    if os.path.isfile(vkey):
        vkey = Path(vkey).read_text().strip()
    return Verifier.parse(vkey)


@ledger.command()
@click.argument("name")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="File for the private key (created with mode 0600).")
@click.option("--force", is_flag=True, help="Overwrite an existing key file.")
def keygen(name: str, out: str, force: bool) -> None:
    """Generate an Ed25519 log key named NAME (the log origin, e.g. potd.example/log1).

    Writes the private key (Go note format, PRIVATE+KEY+...) to --out with mode 0600 and
    <out>.pub with the verifier key, and prints the verifier key.
    """

    keygen_to(name, out, force)


# -- storage ------------------------------------------------------------------------

class _Database(click.ParamType):  # type: ignore[type-arg]
    """``--db``: an existing SQLite file, or a ``postgresql://`` URL (checked on open)."""

    name = "FILE|URL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> str:
        text = str(os.fspath(value))
        if text.startswith(("postgresql://", "postgres://")):
            return text
        path: Any = click.Path(exists=True, dir_okay=False).convert(value, param, ctx)
        return str(path)


DB = _Database()
DB_HELP = "The log: its SQLite file, or a postgresql:// URL."

def _open(db: str, key: str | None = None) -> Any:
    from .log import Log

    log = Log.open(db, read_signer(key) if key else None)
    # close (and release the writer lock) when the command ends, also in-process
    click.get_current_context().call_on_close(log.store.close)
    return log


@ledger.command()
@click.option("--db", required=True, type=click.Path(dir_okay=False),
              help="New SQLite file, or a postgresql:// URL of an empty database.")
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The log's private key file; its name is the log origin.")
def init(db: str, key: str) -> None:
    """Create a new, empty log database and sign its first (empty) checkpoint."""
    from .log import Log

    log = Log.create(db, read_signer(key))
    log.store.close()
    click.echo(str(log.checkpoint()), nl=False)


def _iter_entries(files: tuple[str, ...], lines: bool) -> Iterator[bytes]:
    if files:
        for f in files:
            try:
                data = Path(f).read_bytes()
            except OSError as e:
                raise UsageError(f"cannot read {f}: {e.strerror}") from None
            if lines:
                yield from (ln for ln in data.splitlines() if ln)
            else:
                yield data
    else:
        for ln in sys.stdin.buffer:
            ln = ln.rstrip(b"\r\n")
            if ln:
                yield ln


@ledger.command()
@click.option("--db", required=True, type=DB, help=DB_HELP)
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The log's private key file.")
@click.option("--lines", is_flag=True,
              help="Treat each non-empty line of each FILE as one entry (stdin is always "
                   "read line by line).")
@click.option("--batch", default=1000, show_default=True, help="Entries per transaction.")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False))
def append(db: str, key: str, lines: bool, batch: int, files: tuple[str, ...]) -> None:
    """Append entries: each FILE is one entry, or stdin lines are entries.

    Prints JSON: the first index, the count and the new signed checkpoint.
    """
    log = _open(db, key)
    first, count, buf = None, 0, []
    for e in _iter_entries(files, lines):
        buf.append(e)
        if len(buf) >= batch:
            r = log.append(buf)
            first = r.first_index if first is None else first
            count += len(buf)
            buf = []
    if buf:
        r = log.append(buf)
        first = r.first_index if first is None else first
        count += len(buf)
    click.echo(json.dumps({"first_index": first, "count": count,
                           "checkpoint": str(log.checkpoint())}, indent=2))


@ledger.command()
@click.option("--db", required=True, type=DB, help=DB_HELP)
@click.option("--size", type=int, help="A past tree size (default: the latest checkpoint).")
@click.option("--key", type=click.Path(exists=True, dir_okay=False),
              help="Private key; needed only to sign a past size that has no stored checkpoint.")
def checkpoint(db: str, size: int | None, key: str | None) -> None:
    """Print the latest signed checkpoint (or the one of a past --size)."""
    log = _open(db, key)
    if size is None:
        click.echo(str(log.checkpoint()), nl=False)
        return
    stored = log.store.checkpoint_at(size)
    click.echo(stored if stored is not None else str(log.checkpoint_at(size)), nl=False)


@ledger.command()
@click.option("--db", required=True, type=DB, help=DB_HELP)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Directory for the static tlog-tiles mirror.")
@click.option("--gzip-bundles", is_flag=True, help="Store entry bundles gzip-compressed "
              "(C2SP tlog-tiles allows it); the web server must then send them with "
              "Content-Encoding: gzip (see the README).")
def export(db: str, out: str, gzip_bundles: bool) -> None:
    """Write the log as a static C2SP tlog-tiles mirror (checkpoint, tiles, entry bundles)."""
    from .export import export_static

    log = _open(db)
    export_static(log, out, gzip_bundles=gzip_bundles)
    click.echo(f"exported {log.size} entries of {log.origin} to {out}")


@ledger.command()
@click.option("--db", required=True, type=DB, help=DB_HELP)
def fsck(db: str) -> None:
    """Recompute the stored tree from the stored entries; exit 1 at the first bad index.

    Checks every leaf and interior hash, every full entry bundle and every stored
    checkpoint's signed root. Prints JSON."""
    from .fsck import fsck as run_fsck
    from .storage import open_store

    store = open_store(db)  # not Log.open: that refuses a tree its checkpoint disowns
    click.get_current_context().call_on_close(store.close)
    res = run_fsck(store)
    click.echo(json.dumps(res.to_json()))
    if not res.ok:
        sys.exit(1)


@ledger.command()
@click.option("--db", required=True, type=DB, help=DB_HELP)
def migrate(db: str) -> None:
    """Upgrade a log database from schema version 1 to 2 in place (one transaction).

    Version 2 stores each entry once (in its entry bundle) and keeps the leaf-hash index
    off the commit path. Stop every log server on the database first; take a backup.
    A database already at version 2 is left alone. Prints JSON."""
    from .storage.migrate import migrate as run_migrate

    click.echo(json.dumps(run_migrate(db)))


@ledger.command()
@click.option("--db", required=True, type=DB, help=DB_HELP)
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="New file for the copy.")
def backup(db: str, out: str) -> None:
    """Copy a SQLite log consistently while it serves (SQLite's online backup API).

    The copy is opened and its latest checkpoint checked against its tree before it is
    renamed into place. PostgreSQL logs: use pg_dump or a base backup (see the README)."""
    from .backup import backup_sqlite

    size = backup_sqlite(db, out)
    click.echo(json.dumps({"out": out, "size": size}))


@ledger.command()
@click.option("--db", required=True, type=DB, help=DB_HELP)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Directory that a static web server, CDN or bucket sync serves.")
@click.option("--follow", is_flag=True,
              help="Keep publishing as the log grows, until SIGINT/SIGTERM.")
@click.option("--interval", default=1.0, show_default=True,
              help="With --follow: seconds between looks at the log.")
@click.option("--gzip-bundles", is_flag=True, help="Store entry bundles gzip-compressed "
              "(C2SP tlog-tiles allows it); the web server must then send them with "
              "Content-Encoding: gzip (see the README).")
def publish(db: str, out: str, follow: bool, interval: float, gzip_bundles: bool) -> None:
    """Keep a static C2SP tlog-tiles directory of the log (for any static web server).

    New tiles and bundles are written once, then the checkpoint is replaced atomically,
    last. Prints one JSON line per publication ({"size", "written"})."""
    import signal

    from .publish import publish as run_publish

    log = _open(db)
    stopping: list[int] = []
    if follow:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda n, _f: stopping.append(n))

    def report(size: int, written: int) -> None:
        click.echo(json.dumps({"size": size, "written": written}))
        sys.stdout.flush()

    run_publish(log, out, follow=follow, interval=max(0.05, interval), report=report,
                stop=lambda: bool(stopping), gzip_bundles=gzip_bundles)


@ledger.command()
@click.option("--db", required=True, type=DB,
              help="The log's SQLite file or postgresql:// URL (from `potd ledger init`).")
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The log's private key file.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True,
              help="Port to listen on (0: any free port, printed at startup).")
@click.option("--flush-ms", default=50.0, show_default=True,
              help="Longest time a flush waits for requests still arriving to join it.")
@click.option("--max-batch", default=10_000, show_default=True,
              help="Most statements per flush (one transaction) and per add-batch request.")
@click.option("--max-pending", default=50_000, show_default=True,
              help="Statements allowed to wait; past it writes get 503 with Retry-After.")
@click.option("--max-request-bytes", default=16 << 20, show_default=True,
              help="Largest request body accepted (add-batch); larger gets 413.")
@click.option("--max-buffered-bytes", default=64 << 20, show_default=True,
              help="Request bodies being received or parsed, all requests together; past "
                   "it, writes are answered 503 with Retry-After.")
@connection_options
@click.option("--open-registration", is_flag=True,
              help="Accept statements from any signer, not only allow-listed ones.")
@click.option("--timestamps", is_flag=True,
              help="Add a 'timestamp <unix ms>' extension line to each checkpoint.")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              help="uvicorn's log level.")
@click.option("--witness", multiple=True, metavar="URL=VKEY",
              help="A witness to send checkpoints to (C2SP tlog-witness); repeatable.")
@click.option("--witness-quorum", type=int,
              help="Cosignatures a checkpoint needs before it is published (default: all).")
@click.option("--policy", type=click.Path(exists=True, dir_okay=False),
              help="A C2SP tlog-policy file whose quorum rule a checkpoint must meet before "
                   "it is published; replaces --witness-quorum. Witnesses: --witness, else "
                   "the policy's witness lines that carry a URL.")
@click.option("--wait-for-witnesses", is_flag=True,
              help="Answer writes only once a witnessed checkpoint covers them (default: "
                   "answer after durability and integration).")
@click.option("--also-sign-with", "also_sign", multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="Another private key of the same origin that signs every new checkpoint "
                   "too (a key rotation window; repeatable).")
@click.option("--gzip-bundles", is_flag=True,
              help="Serve entry bundles with Content-Encoding: gzip (C2SP tlog-tiles "
                   "allows it without negotiation; clients must decode it).")
def serve(db: str, key: str, host: str, port: int, flush_ms: float, max_batch: int,
          max_pending: int, max_request_bytes: int, max_buffered_bytes: int,
          body_timeout: float, header_timeout: float, max_connections: int,
          open_registration: bool, timestamps: bool,
          log_level: str, witness: tuple[str, ...], witness_quorum: int | None,
          policy: str | None, wait_for_witnesses: bool, also_sign: tuple[str, ...],
          gzip_bundles: bool) -> None:
    """Serve the log over HTTP: tlog-tiles reads, JSON writes and proofs.

    Writes are signed statements (POST /add, /add-batch) from allow-listed signers
    (`potd ledger allow`) or, with --open-registration, from anyone. Each write is
    answered only once it is durably stored and covered by a signed checkpoint. Stops
    cleanly on Ctrl-C / SIGTERM, flushing pending writes first.

    With --witness URL=VKEY (repeatable), every new checkpoint is sent to the witnesses
    and GET /checkpoint serves only checkpoints cosigned by --witness-quorum of them
    (default: all), or meeting the quorum rule of a --policy file (C2SP tlog-policy).
    Writes do not wait for witnessing unless --wait-for-witnesses.
    """
    from .server import serve as run_server

    def ready(h: str, p: int) -> None:
        click.echo(f"potd ledger serve: listening on http://{h}:{p}", err=True)

    signer = read_signer(key)
    run_server(db, signer, host=host, port=port, timestamps=timestamps, log_level=log_level,
               also_sign=[read_signer(k) for k in also_sign],
               on_ready=ready, open_registration=open_registration, flush_ms=flush_ms,
               max_batch=max_batch, max_pending=max_pending,
               max_request_bytes=max_request_bytes, max_buffered_bytes=max_buffered_bytes,
               body_timeout=body_timeout, header_timeout=header_timeout,
               max_connections=max_connections, witnesses=witness,
               witness_quorum=witness_quorum, wait_for_witnesses=wait_for_witnesses,
               gzip_bundles=gzip_bundles,
               witness_policy=read_policy(policy) if policy else None)


def _signer_list(db: str, vkey: str, allowed: bool) -> None:
    from .storage import open_store

    v = read_verifier(vkey)
    if v.alg != 0x01:
        raise UsageError(f"{v} is not an Ed25519 (0x01) note key; trainers sign with those")
    store = open_store(db)
    try:
        store.ensure_indexes()
        changed = store.set_signer_allowed(str(v), allowed)
    finally:
        store.close()
    state = "allowed" if allowed else "not allowed"
    click.echo(f"{v}: {state}{'' if changed else ' (unchanged)'}")


@ledger.command()
@click.option("--db", required=True, type=DB, help=DB_HELP)
@click.argument("vkey")
def allow(db: str, vkey: str) -> None:
    """Allow the trainer key VKEY (verifier key string or file) to write statements.

    Takes effect at once, also for a running server.
    """
    _signer_list(db, vkey, True)


@ledger.command()
@click.option("--db", required=True, type=DB, help=DB_HELP)
@click.argument("vkey")
def deny(db: str, vkey: str) -> None:
    """Remove the trainer key VKEY from the allow-list: its new statements get 403.

    Statements already in the log stay (the log is append-only).
    """
    _signer_list(db, vkey, False)


ROLE_GROUPS = "potd.commands"  # the entry-point group the other packages register in


def _not_installed(name: str) -> click.Command:
    @click.command(name, context_settings={"ignore_unknown_options": True},
                   add_help_option=False)
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:
        """(not registered: run `pip install -e .` in the source tree)"""
        raise UsageError(f"`potd {name}` is not registered: it reaches `potd` as an entry "
                         "point, and potd's installed metadata has none (never installed "
                         "from this tree, or installed before setup.cfg registered it)",
                         hint="run `pip install -e .` in the source tree (scripts/test and "
                              "scripts/demo do it)")
    return command


def _add_role_groups() -> None:
    """Attach the command groups of the roles above the ledger. The prover's and the
    auditor's are registered as entry points (group :data:`ROLE_GROUPS`, setup.cfg), so
    this, the lowest package, never imports the packages built on it; the witness's,
    the beacon's and the proof commands are the ledger's own."""
    from importlib.metadata import entry_points

    from .beacon_cli import beacon
    from .proof_cli import prove, verify
    from .rotate_cli import rotate_key
    from .witness_cli import witness

    for group in (witness, beacon):
        main.add_command(group)
    for ep in sorted(entry_points(group=ROLE_GROUPS), key=lambda ep: ep.name):
        main.add_command(ep.load(), ep.name)
    for name in ("auditor", "prover"):
        if name not in main.commands:  # run from a source tree that was never installed
            main.add_command(_not_installed(name))
    for command in (prove, verify, rotate_key):
        ledger.add_command(command)


_add_role_groups()
