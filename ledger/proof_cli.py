"""``potd ledger prove`` and ``potd ledger verify``: inclusion and consistency proofs
from a log database, and their offline verification (a pinned log key, optionally a
witness policy). Thin, as :mod:`ledger.cli`: parse, one library call, print."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .cli import DB, DB_HELP, PotdGroup, _b64, _open, _warn_origin, read_policy, read_verifier
from .errors import UsageError


@click.group(cls=PotdGroup)
def prove() -> None:
    """Produce inclusion and consistency proofs as JSON."""


def _checkpoint_text(log: Any, size: int) -> str:
    stored = log.store.checkpoint_at(size)
    if stored is not None:
        return str(stored)
    if log.signer is None:
        raise UsageError(f"no stored checkpoint of size {size}",
                         hint="pass --key to have the log sign one, or use a stored size")
    return str(log.checkpoint_at(size))


@prove.command("inclusion")
@click.option("--db", required=True, type=DB, help=DB_HELP)
@click.option("--index", required=True, type=int, help="Log index of the entry.")
@click.option("--size", type=int, help="Tree size (default: latest).")
@click.option("--key", type=click.Path(exists=True, dir_okay=False),
              help="Private key, to sign a checkpoint for a size that has none stored.")
@click.option("--format", "fmt", type=click.Choice(["json", "tlog-proof"]), default="json",
              show_default=True, help="json, or C2SP tlog-proof@v1 text (save it as "
              "NAME.tlog-proof; it carries no leaf hash: the verifier hashes the entry).")
def prove_inclusion(db: str, index: int, size: int | None, key: str | None,
                    fmt: str) -> None:
    """Inclusion proof of entry INDEX in the tree of --size, with the leaf and checkpoint."""
    from .merkle import leaf_hash
    from .tlog_proof import TlogProof

    log = _open(db, key)
    size = log.size if size is None else size
    proof = log.inclusion_proof(index, size)
    entry = log.entries(index, index + 1)[0]
    if fmt == "tlog-proof":
        tp = TlogProof(index, tuple(proof), _checkpoint_text(log, size).encode())
        click.echo(tp.to_bytes().decode(), nl=False)
        return
    click.echo(json.dumps({"index": index, "size": size, "leaf_hash": _b64(leaf_hash(entry)),
                           "hashes": [_b64(h) for h in proof],
                           "checkpoint": _checkpoint_text(log, size)}, indent=2))


@prove.command("consistency")
@click.option("--db", required=True, type=DB, help=DB_HELP)
@click.option("--from", "size1", required=True, type=int, help="The older tree size.")
@click.option("--to", "size2", type=int, help="The newer tree size (default: latest).")
@click.option("--key", type=click.Path(exists=True, dir_okay=False),
              help="Private key, to sign checkpoints for sizes that have none stored.")
def prove_consistency(db: str, size1: int, size2: int | None, key: str | None) -> None:
    """Consistency proof between two tree sizes, with both checkpoints."""
    log = _open(db, key)
    size2 = log.size if size2 is None else size2
    proof = log.consistency_proof(size1, size2)
    click.echo(json.dumps({"from": size1, "to": size2, "hashes": [_b64(h) for h in proof],
                           "old_checkpoint": _checkpoint_text(log, size1),
                           "checkpoint": _checkpoint_text(log, size2)}, indent=2))


@click.group(cls=PotdGroup)
def verify() -> None:
    """Verify proofs against signed checkpoints and a pinned log key (exit 1 on failure)."""


def _load_json(path: str) -> dict[str, Any]:
    from .errors import MalformedError

    try:
        raw = sys.stdin.read() if path == "-" else Path(path).read_text()
        data = json.loads(raw)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MalformedError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise MalformedError(f"{path} must hold a JSON object")
    return data


def _read_at_most(path: str, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _json_bytes(raw: bytes, what: str) -> dict[str, Any]:
    from .errors import MalformedError

    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MalformedError(f"{what} is not valid JSON (nor a tlog-proof): {e}") from None
    if not isinstance(data, dict):
        raise MalformedError(f"{what} must hold a JSON object")
    return data


def _field(d: dict[str, Any], name: str, kind: type) -> Any:
    from .errors import MalformedError

    v = d.get(name)
    if not isinstance(v, kind) or isinstance(v, bool):
        raise MalformedError(f"proof file field {name!r} is missing or not a {kind.__name__}")
    return v


def _hashes(d: dict[str, Any]) -> list[bytes]:
    from .errors import MalformedError
    from .merkle import check_hash
    from .note import b64decode

    hs = d.get("hashes")
    if not isinstance(hs, list) or not all(isinstance(h, str) for h in hs):
        raise MalformedError("proof file field 'hashes' must be a list of base64 strings")
    return [check_hash(b64decode(h, f"proof hash #{i}"), f"proof hash #{i}")
            for i, h in enumerate(hs)]


@verify.command("inclusion")
@click.option("--vkey", help="The log's verifier key (string or file); with --policy, "
              "default: the policy's log key for the checkpoint's origin.")
@click.option("--proof", "proof_file", required=True,
              help="JSON from `potd ledger prove inclusion`, or a C2SP tlog-proof (or - "
                   "for stdin).")
@click.option("--checkpoint", "cp_file", type=click.Path(exists=True, dir_okay=False),
              help="Signed checkpoint file to verify against (default: the one in the proof).")
@click.option("--entry", type=click.Path(exists=True, dir_okay=False),
              help="The entry's bytes; checked against the proof's leaf hash (a tlog-proof "
                   "needs it: the leaf hash is computed from it).")
@click.option("--witness", multiple=True,
              help="A witness's cosignature verifier key (string or file); repeatable.")
@click.option("--quorum", type=int,
              help="Valid witness cosignatures the checkpoint needs (default: all --witness).")
@click.option("--policy", type=click.Path(exists=True, dir_okay=False),
              help="A C2SP tlog-policy file (logs, witnesses, quorum); replaces --witness "
                   "and --quorum.")
@click.option("--origin", help="The log's origin, when its key is named otherwise (C2SP "
              "tlog-checkpoint: the key name SHOULD match the origin); default: the key's "
              "name. Warns when it differs.")
def verify_inclusion(vkey: str | None, proof_file: str, cp_file: str | None,
                     entry: str | None, witness: tuple[str, ...], quorum: int | None,
                     policy: str | None, origin: str | None) -> None:
    """Check an inclusion proof against a signed checkpoint, a pinned log key and a
    witness policy (--witness/--quorum or --policy)."""
    from .errors import InclusionError
    from .merkle import check_hash, check_record, leaf_hash
    from .note import Checkpoint, b64decode, open_checkpoint, parse_note
    from .tlog_proof import (
        MAX_PROOF_BYTES,
        TlogProof,
        check_witness_policy,
        looks_like_tlog_proof,
        verify_tlog_proof,
    )

    pol = read_policy(policy) if policy else None
    if pol is not None and (witness or quorum is not None):
        raise UsageError("--policy replaces --witness/--quorum: give one or the other")
    ws = [read_verifier(w) for w in witness]
    q = len(ws) if quorum is None else quorum
    if not 0 <= q <= len(ws):
        raise UsageError(f"--quorum {q} needs at least {q} --witness keys")
    try:
        raw = (sys.stdin.buffer.read(MAX_PROOF_BYTES + 1) if proof_file == "-"
               else _read_at_most(proof_file, MAX_PROOF_BYTES + 1))
    except OSError as e:
        raise UsageError(f"cannot read {proof_file}: {e.strerror}") from None
    tp = TlogProof.from_bytes(raw) if looks_like_tlog_proof(raw) else None
    cp_bytes = (Path(cp_file).read_bytes() if cp_file else tp.checkpoint if tp else None)

    def log_key(note: bytes | str) -> Any:
        if vkey:
            v = read_verifier(vkey)
            if pol is not None and pol.logs and v not in pol.logs:
                raise UsageError(f"--vkey {v.name} is not one of the policy's logs")
            _warn_origin(origin, v)
            return v
        cp_origin = Checkpoint.from_text(parse_note(note).text).origin
        v = pol.log_key(cp_origin) if pol is not None else None
        if v is None:
            raise UsageError("no log key: pass --vkey (or a --policy listing this origin)")
        return v

    if tp is not None:
        if entry is None:
            raise UsageError("a tlog-proof carries no leaf hash: pass --entry FILE")
        assert cp_bytes is not None
        tp = TlogProof(tp.index, tp.hashes, cp_bytes, tp.extra)
        cp = verify_tlog_proof(tp, leaf_hash(Path(entry).read_bytes()), log_key(cp_bytes),
                               witnesses=ws, quorum=q, policy=pol, origin=origin)
        click.echo(f"OK: entry {tp.index} is in {cp.origin} at tree size {cp.size}")
        return
    d = _json_bytes(raw, proof_file)
    cp_text = cp_bytes.decode("utf-8", "replace") if cp_bytes else _field(d, "checkpoint", str)
    cp = open_checkpoint(cp_text, log_key(cp_text), origin=origin)
    check_witness_policy(cp, ws, q, pol)
    index, size = _field(d, "index", int), _field(d, "size", int)
    leaf = check_hash(b64decode(_field(d, "leaf_hash", str), "leaf_hash"), "leaf_hash")
    if entry is not None and leaf_hash(Path(entry).read_bytes()) != leaf:
        raise InclusionError(f"{entry} does not hash to the proof's leaf hash")
    if size != cp.size:
        raise InclusionError(f"the proof is for tree size {size}, the checkpoint is for "
                             f"{cp.size}", hint="prove against the checkpoint's size")
    check_record(_hashes(d), cp.size, cp.root, index, leaf)
    click.echo(f"OK: entry {index} is in {cp.origin} at tree size {cp.size}")


@verify.command("consistency")
@click.option("--vkey", required=True, help="The log's verifier key (string or file).")
@click.option("--proof", "proof_file", required=True,
              help="JSON from `potd ledger prove consistency` (or - for stdin).")
@click.option("--old", "old_file", type=click.Path(exists=True, dir_okay=False),
              help="The older signed checkpoint you trust (default: the one in the proof).")
@click.option("--new", "new_file", type=click.Path(exists=True, dir_okay=False),
              help="The newer signed checkpoint (default: the one in the proof).")
@click.option("--origin", help="The log's origin, when its key is named otherwise (C2SP "
              "tlog-checkpoint: the key name SHOULD match the origin); default: the key's "
              "name. Warns when it differs.")
def verify_consistency(vkey: str, proof_file: str, old_file: str | None,
                       new_file: str | None, origin: str | None) -> None:
    """Check that a newer checkpoint extends an older one (no fork, no rollback)."""
    from .merkle import check_tree
    from .note import open_checkpoint

    v = read_verifier(vkey)
    _warn_origin(origin, v)
    d = _load_json(proof_file)
    old = open_checkpoint(Path(old_file).read_text() if old_file
                          else _field(d, "old_checkpoint", str), v, origin=origin)
    new = open_checkpoint(Path(new_file).read_text() if new_file
                          else _field(d, "checkpoint", str), v, origin=origin)
    check_tree(_hashes(d), new.size, new.root, old.size, old.root)
    click.echo(f"OK: {new.origin} size {new.size} is consistent with size {old.size}")


