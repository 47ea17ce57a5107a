"""``potd auditor``: the third party's commands (audit, check-model, verify-log, runs).

Exit codes of ``audit``: 0 pass, 1 fail (evidence of a false claim), 3 inconclusive
(something could not be checked: the log or the evidence unreachable or absent, replay
noise that cannot be calibrated, a drand round not fetchable), 2 usage (bad arguments,
a pinned key that does not sign this log: no verdict); of ``check-model``: 0 yes, 1 no,
3 inconclusive, 2 usage; ``verify-log`` and ``runs`` exit 3 when the log cannot be
reached, 1 when it fails verification, 2 for usage.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from ledger.cli import PotdGroup, _warn_origin, read_verifier

DEFAULT_STATE = str(Path.home() / ".potd" / "auditor")


class AuditorGroup(PotdGroup):
    """Like :class:`~ledger.cli.PotdGroup`, except that a peer that cannot be asked (the
    log down, refused, stalling) exits 3, "could not check", in every auditor command:
    it is neither evidence (1) nor a usage error (2)."""

    def invoke(self, ctx: click.Context) -> Any:
        from ledger.errors import PotdError, UsageError

        from .audit import unreachable

        try:
            return click.Group.invoke(self, ctx)
        except PotdError as e:
            click.secho(f"error: {e.message}", fg="red", err=True)
            if e.hint:
                click.echo(f"hint: {e.hint}", err=True)
            ctx.exit(3 if unreachable(e) else 2 if isinstance(e, UsageError) else 1)


@click.group(cls=AuditorGroup)
def auditor() -> None:
    """Verify a log and a training run as an independent third party."""


def _client(log: str, vkey: str, state: str | None, witness: tuple[str, ...] = (),
            quorum: int | None = None) -> Any:
    from ledger.client import LogClient
    from ledger.errors import MalformedError, UsageError

    def key(text: str, option: str) -> Any:
        try:
            return read_verifier(text)
        except (MalformedError, OSError) as e:
            raise UsageError(f"{option}: {getattr(e, 'message', e)}",
                             hint=f"give {option} a verifier key (name+id+key) or a file "
                                  "holding one") from None

    ws = [key(w, "--witness") for w in witness]
    q = len(ws) if quorum is None else quorum
    if q > len(ws):
        raise UsageError(f"--quorum {q} needs at least {q} --witness keys")
    policy = click.get_current_context().meta.get("potd.policy")
    log_key = key(vkey, "--vkey")
    if policy is not None:
        if ws or quorum is not None:
            raise UsageError("--policy replaces --witness/--quorum: give one or the other")
        if policy.logs and log_key not in policy.logs:
            raise UsageError(f"the log key {log_key.name}+{log_key.key_id:08x} is not one of "
                             "the policy's logs", hint="check --vkey against the policy file")
    origin = click.get_current_context().meta.get("potd.origin")
    _warn_origin(origin, log_key)
    return LogClient(log, log_key, state_dir=state, proofs="tiles", witnesses=ws,
                     quorum=q, policy=policy, origin=origin)


def _policy(ctx: click.Context, param: click.Parameter, path: str | None) -> None:
    if path is not None:
        from ledger.cli import read_policy

        ctx.meta["potd.policy"] = read_policy(path)


def _origin(ctx: click.Context, param: click.Parameter, origin: str | None) -> None:
    if origin is not None:
        ctx.meta["potd.origin"] = origin


ORIGIN_HELP = ("The log's origin, when its key is named otherwise (C2SP tlog-checkpoint: the "
               "key name SHOULD match the origin); default: the key's name. Warns when it "
               "differs.")


def witness_options(f: Any) -> Any:
    """--witness VKEY (repeatable) and --quorum K, or --policy FILE: the checkpoint policy;
    --origin: the log's origin, if its key is named otherwise."""
    f = click.option("--origin", callback=_origin, expose_value=False, help=ORIGIN_HELP)(f)
    f = click.option("--policy", type=click.Path(exists=True, dir_okay=False),
                     callback=_policy, expose_value=False,
                     help="A C2SP tlog-policy file (witnesses, groups, quorum; its log "
                          "lines, if any, must include --vkey); replaces --witness and "
                          "--quorum.")(f)
    f = click.option("--quorum", type=int,
                     help="Valid witness cosignatures a checkpoint needs (default: all "
                          "--witness keys).")(f)
    return click.option("--witness", multiple=True,
                        help="A witness's cosignature verifier key (string or file); "
                             "repeatable.")(f)


class _Bars:
    """One click progress bar per phase, on stderr (quiet when not a terminal)."""

    def __init__(self) -> None:
        self.bars: dict[str, Any] = {}
        self.done: dict[str, int] = {}

    def __call__(self, what: str, done: int, total: int) -> None:
        if what not in self.bars:
            label = {"entries": "fetching log entries", "replay": "replaying segments",
                     "tiles": "checking tiles", "evidence": "checking evidence"}.get(what, what)
            self.bars[what] = click.progressbar(length=total, label=label, file=sys.stderr,
                                                show_pos=True)
            self.bars[what].__enter__()
            self.done[what] = 0
        step = done if what == "entries" else done - self.done[what]
        self.done[what] = done if what != "entries" else self.done[what] + done
        self.bars[what].update(step)

    def close(self) -> None:
        for b in self.bars.values():
            b.__exit__(None, None, None)


@auditor.command()
@click.option("--log", "log_url", required=True, help="Log URL (or a static tile mirror).")
@click.option("--vkey", required=True, help="Pinned log verifier key (string or file).")
@click.option("--run", "run_id", required=True, help="Run id (hex) to audit.")
@click.option("--evidence", required=True, help="Evidence directory or http(s) URL.")
@click.option("--recipe", help="Recipe to replay with: a registered name, FILE.py:CLASS or "
              "MODULE:CLASS (see `fetch-recipe`). Default: the built-in the run names; "
              "code named only by the log is never run.")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False),
              help="Where the auditor's own copy of the recipe's data lives (the recipe's "
                   "data_dir); it must hash to the committed root.")
@click.option("--disclosure", metavar="URL",
              help="Audit without the training data: the trainer's data server (`potd prover "
                   "serve-data`) discloses only the sampled segments' examples and a "
                   "held-out sample, each checked against the committed hashes. Implies "
                   "--public-challenge.")
@click.option("--max-hash-list-bytes", type=click.IntRange(min=0), default=1 << 30,
              show_default=True,
              help="With --disclosure: fetch no larger published hash list (32 bytes per "
                   "example); a run committing more is inconclusive.")
@click.option("--samples", "-r", default=4, show_default=True,
              help="Steps to draw for replay; the segment (checkpoint to checkpoint) "
                   "holding each is replayed, once.")
@click.option("--public-challenge", is_flag=True,
              help="Derive the sample from a point the run fixed (the drand round run.close "
                   "commits, else the log root just after run.close): re-derivable by anyone, "
                   "instead of auditor randomness.")
@click.option("--workers", default=1, show_default=True, help="Replay in N processes.")
@click.option("--ray", "ray_address", help="Replay the segments as tasks on a Ray cluster: "
              "auto (the cluster this machine runs, else a new local one) or its ADDRESS "
              "(needs potd[ray]; the evidence must be reachable from the workers).")
@click.option("--device", default="cpu", show_default=True, help="Where replays train: cpu, "
              "cuda or cuda:INDEX. A device type other than the run's means tolerance mode.")
@click.option("--memorization-segments", default=8, show_default=True,
              help="Segments for the memorization test.")
@click.option("--tolerance", type=float,
              help="Compare replays by distance under this tolerance instead of exact hashes.")
@click.option("--replay-mode", type=click.Choice(["auto", "exact", "tolerance"]),
              default="auto", show_default=True,
              help="exact: bit for bit; tolerance: by distance, under a tolerance calibrated "
                   "from replay noise (or --tolerance); auto: exact only when the run's "
                   "recorded environment (torch, device, threads) equals the auditor's.")
@witness_options
@click.option("--max-abandoned", default=0, show_default=True,
              help="Incomplete runs (never closed, or closed before their planned steps) "
                   "of the same identity over the same data, opened before this run closed, "
                   "to tolerate (seed grinding evidence) before failing.")
@click.option("--max-model-bytes", default=4 << 30, show_default=True,
              help="Largest model (bytes of weights) a run's committed config may make the "
                   "auditor build; larger fails the recipe check.")
@click.option("--beacon", "beacon_url", help="drand HTTP beacon URL, to fetch rounds the "
              "evidence does not carry (they are verified under the pinned chain).")
@click.option("--beacon-chain", help="Pin the drand chain: quicknet, mainnet, a known chain "
              "hash, or an /info JSON file (default: known public chains only).")
@click.option("--require-drand", is_flag=True, help="Fail a run whose seed beacon is the "
              "log's own signature (grindable by a colluding log operator).")
@click.option("--state", default=DEFAULT_STATE, show_default=True,
              help="Directory keeping the last verified checkpoint per log.")
@click.option("--model", "model_file", type=click.Path(dir_okay=False),
              help="A shipped model (safetensors) that must be the certified final model.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the report.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), help="Write an HTML "
              "report with plots.")
@click.option("--quiet", "-q", is_flag=True, help="No terminal summary.")
def audit(log_url: str, vkey: str, run_id: str, evidence: str, recipe: str | None,
          data_dir: str | None, samples: int, public_challenge: bool, workers: int,
          memorization_segments: int,
          tolerance: float | None, replay_mode: str, witness: tuple[str, ...],
          quorum: int | None,
          max_abandoned: int, max_model_bytes: int, beacon_url: str | None,
          beacon_chain: str | None, require_drand: bool, state: str, model_file: str | None,
          json_out: str | None, html_out: str | None, quiet: bool,
          ray_address: str | None, device: str, disclosure: str | None = None,
          max_hash_list_bytes: int = 1 << 30) -> None:
    """Audit a training run and name the model it certifies.

    Checks the log, the statements, the seed, the data order, the checkpoint chain,
    replays sampled steps, runs the memorization test, and names the certified final
    model in the report (--model checks a shipped file against it).

    Exit status 0 = pass, 1 = fail (evidence of a false claim), 3 = inconclusive
    (something could not be checked: log or evidence unreachable or absent, replay noise
    not measurable), 2 = usage (bad arguments, a --vkey that does not sign this log).
    """
    from ledger.beacon_client import load_chain
    from ledger.errors import UsageError

    from .audit import EXIT_CODES, Audit, AuditOptions
    from .chain import model_file_hash

    if tolerance is not None and (not tolerance >= 0 or replay_mode == "exact"):
        raise UsageError(f"--tolerance {tolerance} with --replay-mode {replay_mode}",
                         hint="a tolerance is a number >= 0 and implies tolerance mode")

    from prover.device import parse_device

    device = str(parse_device(device))  # an unavailable device: exit 2 before any work
    if model_file is not None:
        model_file_hash(model_file, "sha256")  # unreadable / not safetensors: exit 2 now
    if recipe is not None:  # a missing file or a non-recipe is the auditor's input: exit 2
        from prover.recipes.registry import canonical, resolve

        resolve(recipe)
        recipe = canonical(recipe)
    bars = _Bars()
    opts = AuditOptions(run=run_id, evidence=evidence, recipe=recipe, data_dir=data_dir,
                        samples=samples,
                        public_challenge=public_challenge, workers=workers,
                        memorization_segments=memorization_segments, tolerance=tolerance,
                        replay_mode=replay_mode,
                        max_abandoned=max_abandoned, max_model_bytes=max_model_bytes,
                        model=model_file, beacon_url=beacon_url,
                        beacon_chain=load_chain(beacon_chain) if beacon_chain else None,
                        require_drand=require_drand, ray=ray_address, device=device,
                        max_hash_list_bytes=max_hash_list_bytes)
    if disclosure:  # the data server discloses only what the public challenge draws
        opts.disclosure, opts.public_challenge = disclosure, True
    with _client(log_url, vkey, state, witness, quorum) as client:
        report = Audit(client, opts, progress=bars).run()
    bars.close()
    _emit(report, json_out, html_out, quiet)
    sys.exit(EXIT_CODES[report["verdict"]])


def _emit(report: dict[str, Any], json_out: str | None, html_out: str | None,
          quiet: bool) -> None:
    if json_out:
        from .jsonout import report_json

        Path(json_out).write_text(report_json(report, indent=2) + "\n")
    if html_out:
        from .render_html import write_html

        write_html(report, html_out)
    if not quiet:
        from .render import render_terminal

        render_terminal(report)
        if html_out:
            click.echo(f"HTML report: {Path(html_out).resolve()}")


@auditor.command("fetch-recipe")
@click.option("--evidence", required=True, help="Evidence directory or http(s) URL.")
@click.option("--run", "run_id", required=True, help="Run id (hex) whose recipe to fetch.")
@click.option("--out", "-o", default="recipe-src", show_default=True,
              type=click.Path(file_okay=False), help="Directory to write the files to.")
def fetch_recipe(evidence: str, run_id: str, out: str) -> None:
    """Fetch the recipe source a run committed, to read before running it.

    Writes the files (checked against their content addresses; nothing is run) and prints
    each file's SHA-256 and the code hash, which `audit` compares with run.open. Read the
    files, then audit with the --recipe printed here.
    """
    from .recipe_source import fetch_recipe as fetch

    got = fetch(evidence, run_id, Path(out))
    for label, digest in got["files"].items():
        click.echo(f"{digest}  {label}")
    click.echo(f"code hash {got['code_hash']} (recipe {got['name']!r})")
    if got["committed_code_hash"] != got["code_hash"]:
        click.echo(f"note: the evidence's index says {got['committed_code_hash']}; the audit "
                   "compares with the log's run.open", err=True)
    if not got["step_code_matches"]:
        click.echo("note: the trainer's potd step code (prover/recipes/__init__.py) differs "
                   "from this potd's; the hash above uses yours", err=True)
    pre = "" if got["spec"].startswith(str(Path(out))) else f"PYTHONPATH={out} "
    click.echo(f"read them, then: {pre}potd auditor audit --recipe {got['spec']} …")


@auditor.command("check-model")
@click.option("--log", "log_url", required=True, help="Log URL (or a static tile mirror).")
@click.option("--vkey", required=True, help="Pinned log verifier key (string or file).")
@click.option("--run", "run_id", required=True, help="Run id (hex) that claims the model.")
@click.option("--model", "model_file", required=True, type=click.Path(dir_okay=False),
              help="The model file (safetensors; never unpickled).")
@witness_options
@click.option("--state", default=DEFAULT_STATE, show_default=True,
              help="Directory keeping the last verified checkpoint per log.")
@click.option("--json", "as_json", is_flag=True, help="Print the answer and checks as JSON.")
def check_model(log_url: str, vkey: str, run_id: str, model_file: str,
                witness: tuple[str, ...], quorum: int | None, state: str,
                as_json: bool) -> None:
    """Was this model file produced by run RUN in the log? A quick check, no replay.

    Verifies the signed checkpoint, the run's statements (inclusion, signatures, hash
    chain), its checkpoint chain and final checkpoint, then the file's weights hash.
    Only a full `audit` replays training. Exit status 0 = yes, 1 = no, 3 = inconclusive.
    """
    from .model import ANSWERS
    from .model import check_model as check

    bars = _Bars()
    with _client(log_url, vkey, state, witness, quorum) as client:
        rep = check(client, run_id, model_file, progress=bars)
    bars.close()
    if as_json:
        click.echo(json.dumps(rep, indent=2, default=str))
    else:
        m = rep.get("model") or {}
        origin = (rep.get("log") or {}).get("origin", log_url)
        size = (rep.get("log") or {}).get("checkpoint_size", "?")
        if rep["answer"] == "yes":
            click.echo(f"yes: {model_file} is the final model of run {run_id} in {origin} "
                       f"at size {size}: {m.get('algorithm')} {m.get('weights_hash')} (step "
                       f"{m.get('step')}, evidence objects/{m.get('evidence')}); training "
                       "itself is verified only by `potd auditor audit`")
        else:
            click.echo(f"{rep['answer']}: {rep.get('reason')}")
        for c in rep["checks"]:
            click.echo(f"  {c['status']:4s}  {c['name']}: {c['summary']}")
    sys.exit(ANSWERS[rep["answer"]])


@auditor.command("verify-log")
@click.option("--log", "log_url", required=True, help="Log URL (or a static tile mirror).")
@click.option("--vkey", required=True, help="Pinned log verifier key (string or file).")
@witness_options
@click.option("--state", default=DEFAULT_STATE, show_default=True,
              help="Directory keeping the last verified checkpoint per log.")
@click.option("--workers", default=8, show_default=True, help="Parallel HTTP fetches.")
@click.option("--max-tree-size", type=int, default=None,
              help="Refuse a checkpoint of more entries than this (default 2^32: the "
                   "whole log is held in memory).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify_log(log_url: str, vkey: str, witness: tuple[str, ...], quorum: int | None,
               state: str, workers: int, max_tree_size: int | None, as_json: bool) -> None:
    """Recompute the whole log from its entry bundles and tiles up to the checkpoint.

    Checks the checkpoint signature, its consistency with the last checkpoint stored for
    this log, that every entry rehashes to the signed root, and that every hash tile the
    log serves equals the tile recomputed from the entries.
    """
    from .logview import MAX_TREE_SIZE, fetch_entries, verify_tiles

    t0 = time.perf_counter()
    bars = _Bars()
    with _client(log_url, vkey, state, witness, quorum) as client:
        prior = client.latest
        cp = client.checkpoint()
        snap = fetch_entries(client, cp, workers=workers,
                             progress=lambda n: bars("entries", n, cp.size),
                             max_size=max_tree_size or MAX_TREE_SIZE)
        tiles = verify_tiles(client, snap, workers=workers,
                             progress=lambda n: bars("tiles", n, len(snap.leaf_hashes)))
    bars.close()
    dt = time.perf_counter() - t0
    res = {"origin": cp.origin, "size": cp.size, "root": cp.root.hex(), "tiles": tiles,
           "previous_size": prior.size if prior else None, "seconds": round(dt, 3),
           "entries_per_second": round(cp.size / dt) if dt > 0 else None, "ok": True}
    if as_json:
        click.echo(json.dumps(res, indent=2))
    else:
        click.echo(f"OK: {cp.origin} size {cp.size}: {cp.size} entries and {tiles} tiles "
                   f"recomputed to the signed root in {dt:.2f}s"
                   + (f"; consistent with the stored size {prior.size}" if prior else ""))


@auditor.command()
@click.option("--log", "log_url", required=True, help="Log URL (or a static tile mirror).")
@click.option("--vkey", required=True, help="Pinned log verifier key (string or file).")
@witness_options
@click.option("--state", default=DEFAULT_STATE, show_default=True,
              help="Directory keeping the last verified checkpoint per log.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--max-tree-size", type=int, default=None,
              help="Refuse a checkpoint of more entries than this (default 2^32: the "
                   "whole log is held in memory).")
def runs(log_url: str, vkey: str, witness: tuple[str, ...], quorum: int | None, state: str,
         as_json: bool, max_tree_size: int | None) -> None:
    """List the training runs in a log with their signer, recipe, steps and status."""
    from .logview import MAX_TREE_SIZE, fetch_entries
    from .runs import group_runs

    with _client(log_url, vkey, state, witness, quorum) as client:
        cp = client.checkpoint()
        snap = fetch_entries(client, cp, max_size=max_tree_size or MAX_TREE_SIZE)
    found, foreign = group_runs(snap)
    rows = [v.summary() for v in found.values()]
    if as_json:
        click.echo(json.dumps({"size": cp.size, "runs": rows, "foreign_entries": len(foreign)},
                              indent=2))
        return
    click.echo(f"{cp.origin} at size {cp.size}: {len(rows)} runs"
               + (f", {len(foreign)} entries that are not statements" if foreign else ""))
    for r in rows:
        click.echo(f"  {r['run'][:16]}…  {r['status']:7s} {str(r['recipe']):12s} "
                   f"{r['steps']:5d} steps  signer {r['signer']}")


@auditor.command()
@click.option("--log", "log_url", required=True, help="Log URL (or a static tile mirror).")
@click.option("--vkey", required=True, help="Pinned log verifier key (string or file).")
@click.option("--run", "run_id", required=True, help="Run id (hex).")
@click.option("--evidence", required=True,
              help="Evidence directory or http(s) URL holding the published hash list.")
@click.option("--document", "documents", multiple=True, type=click.Path(dir_okay=False),
              help="A document (one example in the run's encoding); repeatable.")
@click.option("--hash", "hashes", multiple=True, help="An example hash (64 hex); repeatable.")
@click.option("--dir", "dirs", multiple=True, type=click.Path(file_okay=False),
              help="A directory of documents (every regular file in it); repeatable.")
@click.option("--out", "out", type=click.Path(dir_okay=False),
              help="Write the self-contained proof file (JSON).")
@click.option("--max-hash-list-bytes", type=click.IntRange(min=0), default=1 << 30,
              show_default=True,
              help="Fetch no larger hash list (32 bytes per example): a run committing "
                   "more is inconclusive.")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Cache of verified hash-list indexes, by SHA-256 "
                   "[default: $XDG_CACHE_HOME/potd/membership].")
@click.option("--no-cache", is_flag=True,
              help="Build the index in a temporary directory, keep nothing.")
@click.option("--cache-max-bytes", type=click.IntRange(min=0), default=8 << 30,
              show_default=True,
              help="Keep the cache under this size: least recently used indexes are "
                   "removed after each use (never one used in the last 10 minutes).")
@witness_options
@click.option("--state", default=DEFAULT_STATE, show_default=True,
              help="Directory keeping the last verified checkpoint per log.")
@click.option("--json", "as_json", is_flag=True, help="Print the answers and checks as JSON.")
def membership(log_url: str, vkey: str, run_id: str, evidence: str,
               documents: tuple[str, ...], hashes: tuple[str, ...], dirs: tuple[str, ...],
               out: str | None, max_hash_list_bytes: int, cache_dir: str | None,
               no_cache: bool, cache_max_bytes: int, witness: tuple[str, ...],
               quorum: int | None, state: str, as_json: bool) -> None:
    """Was this document in run RUN's training data? Proven either way, without the data.

    Verifies the log and the run, checks the published example-hash list against the
    committed ordered and sorted roots, then answers each document: included (its
    dataset indexes and the steps that trained on it) or absent (the two neighbouring
    hashes of the sorted list). Exit status 0 = answered, 1 = the run or its hash list
    fails verification, 3 = inconclusive, 2 = usage (e.g. a document the run's example
    encoding cannot encode). A run still open is answered from its run.open; the steps
    are then unknown until it closes.
    """
    from ledger.errors import UsageError

    from .membership import ANSWERS
    from .membership import membership as ask
    from .membership_index import default_cache_dir

    cache = None if no_cache else str(cache_dir or default_cache_dir())

    docs = [Path(d).read_bytes() for d in documents]
    for d in dirs:
        docs += [p.read_bytes() for p in sorted(Path(d).iterdir()) if p.is_file()]
    qs = []
    for h in hashes:
        try:
            b = bytes.fromhex(h)
        except ValueError:
            b = b""
        if len(b) != 32:
            raise UsageError(f"--hash {h[:80]!r} is not 64 hex digits")
        qs.append(b)
    if not qs and not docs:
        raise UsageError("nothing to ask about", hint="give --document, --hash or --dir")
    bars = _Bars()
    with _client(log_url, vkey, state, witness, quorum) as client:
        rep = ask(client, run_id, qs, evidence, progress=bars, documents=docs,
                  max_hash_list_bytes=max_hash_list_bytes, cache_dir=cache,
                  cache_max_bytes=cache_max_bytes)
    bars.close()
    proof = rep.pop("proof", None)
    if out and proof is not None:
        Path(out).write_text(json.dumps(proof, indent=1) + "\n")
    if as_json:
        click.echo(json.dumps(rep, indent=2, default=str))
    else:
        for x in rep.get("answers", []):
            if x["answer"] == "included":
                ix = x["indexes"]
                steps = ("steps unknown until the run closes" if rep.get("run_state") == "open"
                         else "trained on at step(s) " + (", ".join(
                             map(str, (x.get("steps") or [])[:20])) or "(not named)"))
                click.echo(f"included: {x['hash']} at dataset index(es) "
                           f"{', '.join(map(str, ix[:10]))}{' …' if len(ix) > 10 else ''}; "
                           f"{steps}")
            else:
                lo, hi = x.get("left"), x.get("right")
                click.echo(f"absent:   {x['hash']} lies between sorted leaves "
                           f"{lo['index'] if lo else '(start)'} and "
                           f"{hi['index'] if hi else '(end)'}")
        if "answers" not in rep:
            click.echo(f"{rep['answer']}: {rep.get('reason')}")
        for c in rep["checks"]:
            click.echo(f"  {c['status']:4s}  {c['name']}: {c['summary'][:160]}")
            if c["status"] == "inconclusive" and c.get("evidence", {}).get("hint"):
                click.echo(f"        hint: {c['evidence']['hint']}")
        if out and proof is not None:
            click.echo(f"proof file: {out} (check it with `potd auditor verify-membership "
                       f"{out} --vkey KEY`)")
    sys.exit(ANSWERS.get(rep["answer"], 0))


@auditor.command("verify-membership")
@click.argument("proof", type=click.Path(dir_okay=False, exists=True))
@click.option("--vkey", required=True, help="Pinned log verifier key (string or file).")
@click.option("--run", "run_id", help="Require the proof to be about this run (hex).")
@click.option("--json", "as_json", is_flag=True, help="Print the verified answers as JSON.")
@click.option("--origin", help=ORIGIN_HELP)
def verify_membership(proof: str, vkey: str, run_id: str | None, as_json: bool,
                      origin: str | None) -> None:
    """Re-verify a membership proof file offline (no log, no evidence, no data).

    Checks the checkpoint's signature under the pinned key, the run's statements and
    their inclusion, every answer's Merkle proofs against the committed roots, and the
    steps named against the seed. Exit status 0 = valid, 1 = invalid, 2 = usage.
    """
    from ledger.errors import MalformedError, UsageError
    from ledger.peer import parse_json

    from .membership_proof import MembershipProofError, verify_proof

    try:
        key = read_verifier(vkey)
    except (MalformedError, OSError) as e:
        raise UsageError(f"--vkey: {getattr(e, 'message', e)}") from None
    data = Path(proof).read_bytes()
    if len(data) > 256 << 20:
        raise MembershipProofError("the proof file is larger than 256 MiB")
    try:
        doc = parse_json(data, proof, max_depth=16)
    except MalformedError as e:
        raise MembershipProofError(f"the proof file is not valid JSON: {e.message}") from None
    _warn_origin(origin, key)
    res = verify_proof(doc, key, run_id, origin=origin)
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    click.echo(f"valid: proof for run {res['run']} in {res['origin']} at size "
               f"{res['checkpoint_size']}; steps: {res['steps_verified']}")
    for x in res["answers"]:
        steps = "unknown" if x["steps"] is None else x["steps"][:20]
        extra = (f" (dataset index(es) {x['indexes'][:10]}, step(s) {steps})"
                 if x["answer"] == "included" else "")
        click.echo(f"  {x['answer']}: {x['hash']}{extra}")
