#!/usr/bin/env python3
"""Prover overhead: training step time with and without the prover, in the same run.

For each recipe (digits-mlp; wide-mlp, ~10M parameters, batch 64; tiny-gpt, the language
model: 120k parameters, 2 micro-batches, clipping, AdamW, a ~16 ms step) it opens one
:class:`prover.session.TrainingSession` — per-step weight hashing (BLAKE3), evidence every
k steps, statements spooled and streamed to a real log server on a loopback port — and
trains it in alternating chunks on the *same* model and optimizer:

* plain: the next chunk's steps as a bare PyTorch loop (``recipes.train_step``), timed;
  then weights and optimizer state are restored, bit for bit, in place;
* hash only: the same steps, plus only the per-step weights hash (the same
  :class:`prover.hashing.StateHasher`, inline for small models, overlapped with the next
  step on a thread for large ones, exactly as the session does) — the floor any prover
  that hashes every step pays here; then restored again;
* prover: the same steps through ``session.train_step``, timed; then ``flush()`` (timed:
  the commit process catching up) and a wait until the log acknowledged all.

Same tensors, same memory, same data, interleaved: machine drift and allocator luck
(which moves this MLP's plain step time by 30% between processes) cancel out, and the
run stays valid (the plain steps leave no trace). Reports per-step medians and means,
and the overhead both per step (mean) and including catch-up: (prover time + flush
time) / plain time — a commit process that falls behind shows up there.

    .venv/bin/python scripts/bench_prover.py --steps 400
    .venv/bin/python scripts/bench_prover.py --recipes wide-mlp --steps 200 --json out.json
    .venv/bin/python scripts/bench_prover.py --recipes tiny-gpt --steps 200
    .venv/bin/python scripts/bench_prover.py --json          # JSON on stdout, table on stderr
    .venv/bin/python scripts/bench_prover.py --recipes tiny-gpt --device cuda \
        --set n_layer=12 n_head=12 n_embd=768 block=1024 --steps 50   # GPT-2-small shape

``--device`` trains every loop there (timed steps end with a device synchronization);
``--set`` overrides recipe settings (as ``potd prover train --set``) for every recipe.

Data-parallel training (2 gloo ranks, the prover vs plain DDP in the same run) is
measured by scripts/bench_ddp.py; ``--ddp`` runs it with the remaining arguments:

    .venv/bin/python scripts/bench_prover.py --ddp --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ledger.client import LogClient  # noqa: E402
from ledger.devserver import ServerProcess  # noqa: E402
from ledger.log import Log  # noqa: E402
from ledger.note import Signer  # noqa: E402
from prover.device import parse_device, to_device  # noqa: E402
from prover.hashing import StateHasher  # noqa: E402
from prover.recipes import get_recipe, train_step  # noqa: E402
from prover.session import SMALL_STATE, TrainingSession  # noqa: E402

MAX_STEPS = 5000
OVERRIDES = {"digits-mlp": {"epochs": 200}, "wide-mlp": {"epochs": 50},
             "tiny-gpt": {"epochs": 20}}
TARGETS = {"digits-mlp": 0.05, "wide-mlp": 0.10, "tiny-gpt": 0.05}


def save_state(sess: TrainingSession) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    params = [v.detach().clone() for v in sess.model.state_dict().values()]
    sync(sess.device)
    opt = [{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in st.items()}
           for st in sess.optimizer.state.values()]
    return params, opt


def restore_state(sess: TrainingSession, saved: tuple[list[torch.Tensor], list[Any]]) -> None:
    """Copy in place: same storage, so nothing downstream sees new tensors."""
    params, opt = saved
    with torch.no_grad():
        for v, s in zip(sess.model.state_dict().values(), params, strict=True):
            v.copy_(s)
        for st, s in zip(sess.optimizer.state.values(), opt, strict=True):
            for k, v in s.items():
                if isinstance(v, torch.Tensor):
                    st[k].copy_(v)
                else:
                    st[k] = v


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so a timer sees it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def on_device(sess: TrainingSession, b: Any) -> tuple[Any, Any]:
    """Batch ``b``'s inputs and targets on the session's device."""
    return to_device(b.x, sess.device), to_device(b.y, sess.device)


def hash_only(sess: TrainingSession, chunk: list[Any], hasher: StateHasher) -> list[float]:
    """The chunk's plain steps plus the weights hash after each, as the session hashes
    (inline below SMALL_STATE bytes, else on a thread, joined before the next update)."""
    model, opt, r = sess.model, sess.optimizer, sess.recipe
    state = model.state_dict(keep_vars=True)
    inline = sum(t.numel() * t.element_size() for t in state.values()) < SMALL_STATE
    pool = ThreadPoolExecutor(1)
    pending: list[Future[str]] = []

    def before_update(*_: Any) -> None:
        while pending:
            pending.pop().result()

    hook = opt.register_step_pre_hook(before_update)
    out = []
    try:
        for b in chunk:
            t = time.perf_counter()
            train_step(r, model, opt, *on_device(sess, b), sess.seed, b.step)
            sync(sess.device)
            if inline:
                hasher.hash(state)
            else:
                pending.append(pool.submit(hasher.hash, state))
            out.append(time.perf_counter() - t)
        before_update()
    finally:
        hook.remove()
        pool.shutdown()
    return out


def wait_acked(sess: TrainingSession, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        total, acked = sess.spool.counts()
        if acked == total:
            return
        time.sleep(0.01)
    raise RuntimeError("the log did not acknowledge the statements in time")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def bench(name: str, steps: int, chunks: int, k: int | None, url: str, vkey: str,
          d: Path, server_pid: int | None, device: torch.device | None = None,
          settings: dict[str, Any] | None = None) -> dict[str, Any]:
    over = {**OVERRIDES.get(name, {}), **(settings or {})}
    if k is not None:
        over["k"] = k
    r = get_recipe(name, **over)
    sess = TrainingSession(r, LogClient(url, vkey), Signer.generate("bench.example/trainer"),
                           d / f"ev-{name}", d / f"{name}.spool", device=device)
    sess.open()
    warm = 10
    if len(sess.plan) < warm + steps:
        raise SystemExit(f"{name} has only {len(sess.plan)} steps; lower --steps")
    sess.plan = sess.plan[:warm + steps]
    batches = list(sess.batches())
    for b in batches[:warm]:  # optimizer state exists from here on; caches are warm
        sess.train_step(b)
    sess.flush()
    wait_acked(sess)
    plain: list[float] = []
    hashed: list[float] = []
    proved: list[float] = []
    hasher = StateHasher(sess.alg)
    flush_s = 0.0
    cpu = {"trainer": 0.0, "commit process": 0.0, "log server": 0.0}
    assert sess._committer is not None
    commit_pid = sess._committer.proc.pid
    size = -(-steps // chunks)
    for c in range(warm, warm + steps, size):
        chunk = batches[c:c + size]
        saved = save_state(sess)
        for b in chunk:
            t = time.perf_counter()
            train_step(r, sess.model, sess.optimizer, *on_device(sess, b), sess.seed, b.step)
            sync(sess.device)
            plain.append(time.perf_counter() - t)
        restore_state(sess, saved)
        hashed += hash_only(sess, chunk, hasher)
        restore_state(sess, saved)
        before = (time.process_time(), cpu_seconds(commit_pid), cpu_seconds(server_pid))
        for b in chunk:
            t = time.perf_counter()
            sess.train_step(b)
            proved.append(time.perf_counter() - t)
        t = time.perf_counter()
        sess.flush()
        flush_s += time.perf_counter() - t
        wait_acked(sess)
        after = (time.process_time(), cpu_seconds(commit_pid), cpu_seconds(server_pid))
        for key, b0, b1 in zip(cpu, before, after):
            cpu[key] += b1 - b0
    t = time.perf_counter()
    sess.close()
    close_s = time.perf_counter() - t
    res: dict[str, Any] = {
        "parameters": sum(p.numel() for p in sess.model.parameters()),
        "batch_size": r.batch_size, "k": r.k, "steps": len(proved), "chunks": chunks,
        "plain_median_ms": statistics.median(plain) * 1e3,
        "prover_median_ms": statistics.median(proved) * 1e3,
        "hash_only_median_ms": statistics.median(hashed) * 1e3,
        "hash_only_mean_ms": statistics.mean(hashed) * 1e3,
        "plain_mean_ms": statistics.mean(plain) * 1e3,
        "prover_mean_ms": statistics.mean(proved) * 1e3,
        "flush_seconds": flush_s, "close_seconds": close_s, "receipts": len(sess.receipts),
    }
    res["overhead_median"] = res["prover_median_ms"] / res["plain_median_ms"] - 1
    res["overhead_mean"] = res["prover_mean_ms"] / res["plain_mean_ms"] - 1
    res["cpu_us_per_prover_step"] = {key: v / len(proved) * 1e6 for key, v in cpu.items()}
    res["torch_threads"] = torch.get_num_threads()
    res["device"] = sess.environment()["device_name"] if sess.device.type != "cpu" else "cpu"
    res["overhead_with_catch_up"] = (sum(proved) + flush_s) / sum(plain) - 1
    res["hash_only_overhead_mean"] = res["hash_only_mean_ms"] / res["plain_mean_ms"] - 1
    if name in TARGETS:
        res["target"] = TARGETS[name]
    return res


def renice(pid: int, nice: int) -> None:
    """Lower the priority of every thread of process ``pid`` (Linux: nice is per thread)."""
    tasks = Path(f"/proc/{pid}/task")
    for tid in [int(t.name) for t in tasks.iterdir()] if tasks.exists() else [pid]:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:
            pass


def table(out: dict[str, dict[str, Any]]) -> str:
    head = (f"{'recipe':<11} {'params':>10} {'steps':>5}  {'plain ms':>16}  {'prover ms':>16}"
            f"  {'prover overhead':>24}  {'target':>6}  {'floor: hash only':>16}"
            f"  {'flush s':>7}")
    sub = (f"{'':<11} {'':>10} {'':>5}  {'median':>7} {'mean':>8}  {'median':>7} {'mean':>8}"
           f"  {'median':>7} {'mean':>7} {'+catch-up':>8}  {'':>6}  {'ms':>7} {'overh.':>8}")
    lines = [head, sub, "-" * len(head)]
    for name, r in out.items():
        target = f"{r['target'] * 100:.0f}%" if "target" in r else ""
        lines.append(
            f"{name:<11} {r['parameters']:>10,} {r['steps']:>5}  {r['plain_median_ms']:7.3f} "
            f"{r['plain_mean_ms']:8.3f}  {r['prover_median_ms']:7.3f} {r['prover_mean_ms']:8.3f}"
            f"  {r['overhead_median'] * 100:+6.1f}% {r['overhead_mean'] * 100:+6.1f}%"
            f" {r['overhead_with_catch_up'] * 100:+7.1f}%  {target:>6}"
            f"  {r['hash_only_mean_ms']:7.3f} {r['hash_only_overhead_mean'] * 100:+7.1f}%"
            f"  {r['flush_seconds']:7.2f}")
    lines.append("")
    lines.append("CPU time per prover step (trainer incl. its torch threads; the log server's "
                 "work is per statement):")
    for name, r in out.items():
        lines.append(f"  {name:<11} " + ", ".join(
            f"{key} {v:,.0f} µs" for key, v in r["cpu_us_per_prover_step"].items())
            + f"  (torch threads: {r['torch_threads']})")
    return "\n".join(lines)


def main() -> None:
    if "--ddp" in sys.argv[1:]:  # the data-parallel overhead: scripts/bench_ddp.py
        rest = [a for a in sys.argv[1:] if a != "--ddp"]
        script = str(Path(__file__).with_name("bench_ddp.py"))
        os.execv(sys.executable, [sys.executable, script, *rest])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ddp", action="store_true",
                    help="measure data-parallel training instead: runs scripts/bench_ddp.py "
                         "with the other arguments (see its --help)")
    ap.add_argument("--recipes", default="digits-mlp,wide-mlp,tiny-gpt")
    ap.add_argument("--steps", type=int, default=200,
                    help=f"timed steps per recipe, each way (at most {MAX_STEPS})")
    ap.add_argument("--chunks", type=int, default=4,
                    help="alternations of plain and prover chunks (default 4)")
    ap.add_argument("--k-wide", type=int, default=100,
                    help="checkpoint interval for wide-mlp (default 100: 80 MB of evidence "
                         "per checkpoint)")
    ap.add_argument("--k-digits", type=int, default=5, help="checkpoint interval for digits")
    ap.add_argument("--server-nice", type=int, default=19,
                    help="niceness of the loopback log server (default 19: a real log runs "
                         "elsewhere; 0 lets it compete with training for the CPU)")
    ap.add_argument("--threads", type=int,
                    help="torch intra-op threads for every loop (default: torch's default, "
                         "here one per core); the same for the plain and the prover loop")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:INDEX (default cpu)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="recipe settings for every recipe, e.g. n_layer=12 n_embd=768")
    ap.add_argument("--json", nargs="?", const="-", metavar="PATH",
                    help="write the results as JSON to PATH (no PATH: to stdout, and the "
                         "table to stderr)")
    args = ap.parse_args()
    if not 1 <= args.steps <= MAX_STEPS or not 1 <= args.chunks <= args.steps:
        ap.error(f"--steps must be 1..{MAX_STEPS} and --chunks 1..steps")
    if args.threads:
        torch.set_num_threads(args.threads)
    from ledger.errors import PotdError
    from prover.recipes.settings import parse_settings

    try:
        device, settings = parse_device(args.device), parse_settings(tuple(args.set))
    except PotdError as e:
        ap.error(f"{e.message} ({e.hint})")
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        log_key = Signer.generate("bench.example/log")
        (d / "log.key").write_text(log_key.private_string())
        Log.create(str(d / "log.db"), log_key).store.close()
        with ServerProcess(str(d / "log.db"), str(d / "log.key"),
                           extra=["--open-registration"]) as srv:
            if args.server_nice and srv.proc is not None:
                renice(srv.proc.pid, args.server_nice)
            for name in args.recipes.split(","):
                k = {"wide-mlp": args.k_wide, "digits-mlp": args.k_digits}.get(name)
                out[name] = bench(name, args.steps, args.chunks, k, srv.url,
                                  str(log_key.verifier), d,
                                  srv.proc.pid if srv.proc is not None else None,
                                  device, settings)
    text = table(out)
    print(text, file=sys.stderr if args.json == "-" else sys.stdout)
    if args.json == "-":
        print(json.dumps(out, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
