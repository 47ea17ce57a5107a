"""``potd prover``: the trainer's commands (keygen, train, resume, abort, recipes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ledger.cli import PotdGroup, keygen_to, read_signer, read_verifier
from ledger.netutil import connection_options


@click.group(cls=PotdGroup)
def prover() -> None:
    """Train while committing seed, data and weights to a log, step by step."""


def _time_policy(witness: tuple[str, ...], quorum: int | None, policy: str | None,
                 log_key: Any) -> dict[str, Any]:
    """The witnesses that attest time: --witness/--quorum, or a --policy file."""
    from ledger.cli import read_policy
    from ledger.errors import UsageError

    if policy is not None:
        if witness or quorum is not None:
            raise UsageError("--policy replaces --witness/--quorum: give one or the other")
        pol = read_policy(policy)
        if log_key is not None and pol.logs and log_key not in pol.logs:
            raise UsageError(f"the log key {log_key.name}+{log_key.key_id:08x} is not one of "
                             "the policy's logs", hint="check --vkey against the policy file")
        return {"time_policy": pol}
    if quorum is not None and not 0 <= quorum <= len(witness):
        raise UsageError(f"--quorum {quorum} needs at least that many --witness keys")
    return {"time_witnesses": [read_verifier(w) for w in witness],
            "time_quorum": len(witness) if quorum is None else quorum}


@prover.command()
@click.argument("name")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="File for the private key (created with mode 0600).")
@click.option("--force", is_flag=True, help="Overwrite an existing key file.")
def keygen(name: str, out: str, force: bool) -> None:
    """Generate a trainer's Ed25519 key named NAME (same format as `potd ledger keygen`).

    Writes the private key to --out (mode 0600) and <out>.pub, and prints the verifier key
    that the log operator allows with `potd ledger allow`.
    """

    keygen_to(name, out, force)


@prover.command("recipes")
def list_recipes() -> None:
    """List the registered recipes and their default settings.

    Registered: the built-ins and those installed packages declare under the entry-point
    group potd.recipes. Any file or module works too: --recipe FILE.py:CLASS.
    """
    from prover.recipes import get_recipe
    from prover.recipes.registry import registered

    for name in sorted(registered()):
        r = get_recipe(name)
        click.echo(f"{name:12s} {json.dumps(r.config, sort_keys=True)}")


def _overrides(pairs: tuple[str, ...], config: str | None) -> dict[str, Any]:
    from prover.recipes.settings import parse_settings, read_config

    return {**(read_config(config) if config else {}), **parse_settings(pairs)}


@prover.command()
@click.option("--recipe", required=True, help="A registered name (`potd prover recipes`), "
              "path/to/file.py:Class or package.module:Class.")
@click.option("--log", "log_url", required=True, help="Log server URL, e.g. http://127.0.0.1:8080")
@click.option("--vkey", required=True, help="The log's verifier key (string or file).")
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The trainer's private key file.")
@click.option("--evidence", required=True, type=click.Path(file_okay=False),
              help="Evidence directory (weights/optimizer safetensors + manifest).")
@click.option("--spool", type=click.Path(dir_okay=False),
              help="Spool file (default: <evidence>/spool.db).")
@click.option("--epochs", type=int, help="Override the recipe's epochs.")
@click.option("--k", type=int, help="Checkpoint interval in steps.")
@click.option("--batch-size", type=int, help="Override the recipe's batch size.")
@click.option("--lr", help="Override the learning rate (decimal string).")
@click.option("--set", "settings", multiple=True, help="Other recipe setting KEY=VALUE.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="Recipe settings from a JSON or TOML file (--set and the options win).")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False),
              help="Where the recipe's data lives on this machine (the recipe's data_dir; "
                   "not committed: an auditor uses its own copy).")
@click.option("--hash", "alg", type=click.Choice(["blake3", "sha256"]), default="blake3",
              show_default=True, help="Weights hash algorithm.")
@click.option("--no-per-step-weights", is_flag=True,
              help="Hash weights only at checkpoints, not after every step.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False),
              help="Write a JSON summary of the run here.")
@click.option("--beacon", "beacon_url", help="drand HTTP beacon URL: the seed comes from a "
              "future drand round (default: the log's signature, a weaker beacon).")
@click.option("--beacon-chain", help="Pinned drand chain: quicknet, mainnet, a known chain "
              "hash, or an /info JSON file (default: the chain the beacon serves).")
@click.option("--beacon-lead", default=6.0, show_default=True,
              help="Seconds between logging run.open and the drand round it commits to.")
@click.option("--witness", multiple=True, help="With --beacon: a witness whose "
              "cosignatures attest when run.open existed (verifier key string or file; "
              "repeatable). Default: the log's timestamp line.")
@click.option("--quorum", type=int, help="Witness cosignatures needed (default: all).")
@click.option("--nproc", default=1, show_default=True, help="Data-parallel training in N "
              "local processes (torch DDP: gloo on the CPU; NCCL with --device cuda:I, rank "
              "R on cuda:I+R); this process is rank 0 and commits.")
@click.option("--policy", type=click.Path(exists=True, dir_okay=False),
              help="With --beacon: a C2SP tlog-policy file whose witnesses and quorum rule "
                   "attest time; replaces --witness/--quorum.")
@click.option("--device", default="cpu", show_default=True, help="Where the model, optimizer "
              "state and batches live: cpu, cuda or cuda:INDEX (recorded in run.open; "
              "evidence is saved from CPU copies).")
def train(recipe: str, log_url: str, vkey: str, key: str, evidence: str, spool: str | None,
          epochs: int | None, k: int | None, batch_size: int | None, lr: str | None,
          settings: tuple[str, ...], config_file: str | None, data_dir: str | None,
          alg: str, no_per_step_weights: bool,
          json_out: str | None, beacon_url: str | None, beacon_chain: str | None,
          beacon_lead: float, witness: tuple[str, ...], quorum: int | None,
          nproc: int, policy: str | None, device: str) -> None:
    """Train RECIPE, committing every step to the log at --log.

    Statements are spooled to disk first and submitted in the background; if the log is
    down, training goes on and the spool drains when it is back.
    """
    from ledger.client import LogClient
    from ledger.errors import UsageError
    from prover.device import parse_device
    from prover.recipes import get_recipe
    from prover.session import TrainingSession

    dev = parse_device(device)  # before anything else: an unavailable device is refused
    over = _overrides(settings, config_file)
    over.update({k_: v for k_, v in (("epochs", epochs), ("k", k), ("batch_size", batch_size),
                                     ("lr", lr)) if v is not None})
    r = get_recipe(recipe, data_dir=data_dir, **over)
    client = LogClient(log_url, read_verifier(vkey))
    spool_path = spool or str(Path(evidence) / "spool.db")
    Path(evidence).mkdir(parents=True, exist_ok=True)
    bc = None
    if beacon_url:
        from ledger.beacon_client import BeaconClient, load_chain

        bc = BeaconClient(beacon_url, load_chain(beacon_chain) if beacon_chain else None)
    elif beacon_chain:
        raise UsageError("--beacon-chain needs --beacon")
    session: Any = TrainingSession
    procs: list[Any] = []
    timing = _time_policy(witness, quorum, policy, client.log_key)
    if nproc != 1:
        from prover.distributed import DataParallelSession, start_local

        procs, session = start_local(r, nproc, alg, device=dev), DataParallelSession
    sess = session(r, client, read_signer(key), evidence, spool_path, device=dev,
                   per_step_weights=not no_per_step_weights, weights_hash=alg,
                   beacon=bc, beacon_lead=beacon_lead, **timing)
    bar: Any
    opened = False
    try:
        sess.open()
        opened = True
        click.echo(f"run {sess.run_id}")
        with click.progressbar(length=len(sess.plan), label="training", show_pos=True,
                               item_show_func=lambda _: f"loss {sess.losses[-1]:.4f}"
                               if sess.losses else "") as bar:
            for batch in sess.batches():
                sess.train_step(batch)
                bar.update(1)
    except BaseException as e:  # the run stays open: say how to resume or abort it
        if opened:
            sess.__exit__(type(e), e, e.__traceback__)
            click.echo("\n".join(getattr(e, "__notes__", [])), err=True)
        if procs:
            from prover.distributed import stop_local

            stop_local(procs, timeout=0)
        raise
    sess.close()
    if procs:
        from prover.distributed import stop_local

        stop_local(procs)
    total = len(sess.receipts)
    last = sess.receipts[-1]
    summary = {"run": sess.run_id, "recipe": r.name, "steps": len(sess.plan),
               "final_loss": sess.losses[-1], "final_weights": sess.final_weights,
               "final_state": sess.final_state,
               "final_model": f"objects/{sess._checkpoints[-1]['weights']}"
               if sess._checkpoints else None,
               "statements": total, "first_index": sess.receipts[0].index,
               "last_index": last.index, "checkpoint_size": last.checkpoint.size,
               "evidence": str(Path(evidence).resolve()), "log_outages": sess.submitter.outages}
    click.echo(f"logged {total} statements (indexes {summary['first_index']}..{last.index}), "
               f"every inclusion proof verified")
    click.echo(f"final loss {summary['final_loss']:.4f}, weights {sess.final_weights}")
    if sess._checkpoints:
        click.echo(f"final model (safetensors, certified by the run): "
                   f"{Path(evidence) / 'objects' / sess._checkpoints[-1]['weights']}")
    if json_out:
        Path(json_out).write_text(json.dumps(summary, indent=2) + "\n")


@prover.command()
@click.option("--spool", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The spool file of the interrupted run.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to keep trying.")
@click.option("--train", "retrain", is_flag=True, help="Continue training the run from its "
              "last committed checkpoint (same seed and order), then close it.")
@click.option("--key", type=click.Path(exists=True, dir_okay=False),
              help="With --train: the trainer's private key file (the run's signer).")
@click.option("--beacon", "beacon_url", help="With --train, for a drand-mode run: the drand "
              "HTTP beacon (as for train).")
@click.option("--beacon-chain", help="With --beacon: the pinned drand chain (as for train).")
@click.option("--witness", multiple=True, help="With --beacon: a witness attesting time "
              "(as for train; repeatable).")
@click.option("--quorum", type=int, help="Witness cosignatures needed (default: all).")
@click.option("--beacon-lead", default=6.0, show_default=True,
              help="With --beacon: seconds ahead for the drand round the run.close challenge "
                   "commits to (twice this; as for train).")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False),
              help="With --train: where the recipe's data lives now (default: where it lived "
                   "when the run was trained); it must still hash to the committed root.")
@click.option("--policy", type=click.Path(exists=True, dir_okay=False),
              help="With --beacon: a C2SP tlog-policy file whose witnesses and quorum rule "
                   "attest time; replaces --witness/--quorum.")
@click.option("--nproc", type=int, help="With --train: the number of processes, which must "
              "be the run's committed world size (default: that size; a data-parallel run "
              "resumes with as many local processes, on the device it trained on).")
def resume(spool: str, timeout: float, retrain: bool, key: str | None,
           beacon_url: str | None, beacon_chain: str | None, witness: tuple[str, ...],
           quorum: int | None, beacon_lead: float, data_dir: str | None,
           policy: str | None, nproc: int | None) -> None:
    """Submit whatever an interrupted trainer spooled but the log has not acknowledged.

    Every statement ends up in the log exactly once: statements the log already holds
    (acknowledged before the crash but not recorded) are matched by leaf hash.

    With --train, also continue training: the run restarts from its last spooled
    checkpoint, re-derives the statements after it (which must equal the spooled ones,
    byte for byte) and trains on to the end, bit-identically to an uninterrupted run.
    A data-parallel run started under torchrun resumes under torchrun, every rank running
    this command (`torchrun --nproc-per-node N -m ledger prover resume --train ...`).
    """
    from ledger.client import LogClient
    from ledger.errors import UsageError
    from prover.spool import Spool, Submitter

    if retrain:
        if key is None:
            raise UsageError("--train needs --key (the run's private key)")
        from prover.resume import launched, resume_session

        bc = None
        if beacon_url:
            from ledger.beacon_client import BeaconClient, load_chain

            bc = BeaconClient(beacon_url, load_chain(beacon_chain) if beacon_chain else None)
        how = dict(beacon=bc, **_time_policy(witness, quorum, policy, None),
                   beacon_lead=beacon_lead, data_dir=data_dir)
        if launched():  # one rank of several under torchrun: every rank runs this
            _resume_rank(spool, read_signer(key), nproc, timeout, how)
            return
        sess = resume_session(spool, read_signer(key), nproc=nproc, **how)
        procs: list[Any] = getattr(sess, "local_ranks", [])
        ranks = f" with {len(procs) + 1} processes" if procs else ""
        click.echo(f"run {sess.run_id}: resuming at step {sess.start_step} of "
                   f"{len(sess.plan)}{ranks}")
        try:
            for batch in sess.batches():
                sess.train_step(batch)
            sess.close(timeout)
        except BaseException:
            if procs:
                from prover.distributed import stop_local

                stop_local(procs, timeout=0)
            raise
        if procs:
            from prover.distributed import stop_local

            stop_local(procs)
        click.echo(f"run {sess.run_id}: closed after {len(sess.plan)} steps, "
                   f"{len(sess.receipts)} statements, every inclusion proof verified; "
                   f"final weights {sess.final_weights}")
        return
    sp = Spool(spool)
    meta = sp.meta()
    if "run" not in meta:
        raise UsageError(f"{spool} is not a potd spool (no run recorded)")
    client = LogClient(meta["log"], meta["log_vkey"])
    before = sp.counts()
    sub = Submitter(sp, client, meta["run"])
    sub.start()
    sub.drain(timeout)
    sub.stop()
    total, acked = sp.counts()
    click.echo(f"run {meta['run']}: {acked - before[1]} statements submitted now, "
               f"{acked}/{total} acknowledged")


def _resume_rank(spool: str, trainer: Any, nproc: int | None, timeout: float,
                 how: dict[str, Any]) -> None:
    """``resume --train`` on one rank under a launcher (torchrun): rank 0 resumes and
    closes the run and reports; the other ranks train their shards silently."""
    import os

    import torch.distributed as dist

    from ledger.errors import UsageError
    from prover.distributed import DataParallelWorker
    from prover.resume import resume_data_parallel

    if nproc is not None and str(nproc) != os.environ["WORLD_SIZE"]:
        raise UsageError(f"--nproc {nproc}, but the launcher started "
                         f"{os.environ['WORLD_SIZE'][:20]} processes",
                         hint="under torchrun, leave out --nproc")
    sess = resume_data_parallel(spool, trainer, **how)
    try:
        if isinstance(sess, DataParallelWorker):
            for batch in sess.batches():
                sess.train_step(batch)
            return
        click.echo(f"run {sess.run_id}: resuming at step {sess.start_step} of "
                   f"{len(sess.plan)} with {dist.get_world_size()} processes (launched)")
        try:
            for batch in sess.batches():
                sess.train_step(batch)
        except BaseException as e:  # the run stays open: say how to go on
            sess.__exit__(type(e), e, e.__traceback__)
            raise
        sess.close(timeout)
        click.echo(f"run {sess.run_id}: closed after {len(sess.plan)} steps, "
                   f"{len(sess.receipts)} statements, every inclusion proof verified; "
                   f"final weights {sess.final_weights}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@prover.command()
@click.option("--spool", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The spool file of the open run.")
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The trainer's private key file (the run's signer).")
@click.option("--reason", required=True, help="Why the run is abandoned (logged).")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to keep trying.")
def abort(spool: str, key: str, reason: str, timeout: float) -> None:
    """End an open run honestly: log a run.close with --reason that reveals s_rand.

    Every spooled statement is submitted first. Auditors count an aborted run over the
    same data as an abandoned seed of this identity (`run.grinding`, docs/protocol.md
    §5): abort only a run you will not resume (`potd prover resume --train`).
    """
    from prover.resume import abort_run

    st = abort_run(spool, read_signer(key), reason, timeout=timeout)
    click.echo(f"run {st.run}: aborted after {st.body['steps']} steps ({reason}); s_rand "
               "revealed")


@prover.command("serve-data")
@click.option("--log", "log_url", required=True, help="Log server URL.")
@click.option("--vkey", required=True, help="The log's verifier key (string or file).")
@click.option("--run", "run_id", required=True, help="The closed run whose data to disclose.")
@click.option("--recipe", help="The recipe to load the data with (default: the built-in "
              "the run names).")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False),
              help="Where the recipe's data lives (as for train); it must hash to the "
                   "committed root.")
@click.option("--evidence", default="", help="The run's evidence (directory or URL): "
              "needed only for a drand challenge beacon.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8090, show_default=True, help="Port (0: any free port).")
@click.option("--max-samples", default=16, show_default=True,
              help="Largest replay sample (--samples) an audit may draw: the examples of "
                   "the segments holding the first N challenge-drawn steps are disclosed.")
@click.option("--max-memorization-segments", default=8, show_default=True,
              help="Largest memorization sample an audit may draw.")
@click.option("--budget-examples", type=int, help="Examples served per challenge "
              "(default: twice the allowed set).")
@click.option("--budget-bytes", default=1 << 30, show_default=True,
              help="Bytes of examples served per challenge.")
@connection_options
def serve_data(log_url: str, vkey: str, run_id: str, recipe: str | None,
               data_dir: str | None, evidence: str, host: str, port: int, max_samples: int,
               max_memorization_segments: int, budget_examples: int | None,
               budget_bytes: int, header_timeout: float, body_timeout: float,
               max_connections: int) -> None:
    """Serve a closed run's examples for audits with selective disclosure.

    Discloses only the examples the run's public challenge (fixed by run.close) asks an
    audit to replay and test for memorization — recomputed here from the log, never
    taken from a request — within a per-challenge budget. Auditors use it with
    `potd auditor audit --disclosure URL`. Stops on SIGINT/SIGTERM.
    """
    from ledger.client import LogClient

    from .dataserver import load, serve

    with LogClient(log_url, read_verifier(vkey)) as client:
        d = load(client, run_id, recipe=recipe, data_dir=data_dir, evidence=evidence,
                 max_samples=max_samples, max_memorization=max_memorization_segments,
                 budget_examples=budget_examples, budget_bytes=budget_bytes)
    info = d.info()

    def ready(h: str, p: int) -> None:
        click.echo(f"serving run {run_id[:16]}… at http://{h}:{p}: "
                   f"{info['train']['allowed']} of {info['train']['total']} training and "
                   f"{info['heldout']['allowed']} of {info['heldout']['total']} held-out "
                   f"examples disclosable for challenge {info['challenge'][:16]}…", err=True)

    serve(d, host, port, on_ready=ready, header_timeout=header_timeout,
          body_timeout=body_timeout, max_connections=max_connections)
