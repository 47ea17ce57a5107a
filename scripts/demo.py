#!/usr/bin/env python3
"""The end-to-end demonstration (`scripts/demo`): real keys, a real log server on a
loopback port with a SQLite file, real training with per-step commitments, a real audit
with replay and the memorization test, then the attack suite.

Every step is a `potd` command, printed before it runs, so the output doubles as a
walk-through. Exits non-zero if the honest run does not pass or an attack is not caught.

    scripts/demo                 # everything (a few minutes on 2 cores)
    scripts/demo --no-attacks    # the honest runs only
    scripts/demo --no-lm         # without the language model (tiny-gpt) part
    scripts/demo --out DIR       # keep the keys, database, evidence and reports in DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ledger.devserver import ServerProcess, free_port  # noqa: E402


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def potd(*args: str, check: bool = True, show: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["potd", *args]
    print("$ " + " ".join(shlex.quote(a) for a in cmd), flush=True)
    r = subprocess.run([sys.executable, "-m", "ledger", *args], text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=os.getcwd())
    if show and r.stdout:
        print(r.stdout.rstrip(), flush=True)
    if check and r.returncode != 0:
        raise SystemExit(f"demo: command failed with status {r.returncode}")
    return r


def _wait_http(url: str) -> None:
    import httpx

    for _ in range(300):
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit(f"demo: {url} did not come up")


def language_model(url: str, burl: str) -> bool:
    """Step 6: the built-in language model, trained and audited like the digits run."""
    banner("6. a language model: tiny-gpt (a byte-level GPT: AdamW, warmup + cosine, "
           "accumulation, clipping) on the King James Bible")
    t = time.perf_counter()
    potd("prover", "train", "--recipe", "tiny-gpt", "--log", url, "--vkey", "log.key.pub",
         "--key", "trainer.key", "--evidence", "evidence-lm", "--beacon", burl,
         "--beacon-chain", "chain.json", "--json", "train-lm.json")
    run = json.loads(Path("train-lm.json").read_text())["run"]
    print(f"(trained in {time.perf_counter() - t:.0f}s)", flush=True)
    t = time.perf_counter()
    r = potd("auditor", "audit", "--log", url, "--vkey", "log.key.pub", "--run", run,
             "--evidence", "evidence-lm", "--samples", "4", "--state", "auditor-state",
             "--beacon-chain", "chain.json", "--require-drand", "--json", "audit-lm.json",
             check=False)
    print(f"(audited in {time.perf_counter() - t:.0f}s)", flush=True)
    return r.returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "out" / "demo"),
                    help="working directory (default: out/demo, recreated)")
    ap.add_argument("--recipe", default="digits-mlp")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--samples", type=int, default=6, help="segments the auditor replays")
    ap.add_argument("--no-attacks", action="store_true", help="skip the attack suite")
    ap.add_argument("--no-lm", action="store_true",
                    help="skip training and auditing the language model tiny-gpt")
    args = ap.parse_args()

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    os.chdir(out)
    t0 = time.perf_counter()

    banner("1. keys: the log operator's and the trainer's (Go note format, mode 0600)")
    potd("ledger", "keygen", "potd.example/demo-log", "-o", "log.key")
    trainer_vkey = potd("prover", "keygen", "trainer.example/alice", "-o",
                        "trainer.key").stdout.strip()

    banner("2. the log: a SQLite database, the trainer on its allow-list, a server on loopback")
    potd("ledger", "init", "--db", "log.db", "--key", "log.key")
    potd("ledger", "allow", "--db", "log.db", trainer_vkey)
    server = ServerProcess("log.db", "log.key", extra=["--timestamps"], log_file="server.log")
    print(f"$ potd ledger serve --db log.db --key log.key --timestamps --port {server.port} &",
          flush=True)
    server.start()
    url = server.url
    banner("2b. randomness nobody can choose: a local drand-compatible beacon (1-of-1, demo "
           "only; use --beacon https://api.drand.sh --beacon-chain quicknet for the real one)")
    potd("beacon", "keygen", "-o", "beacon.key", "--period", "1")
    Path("chain.json").write_text(potd("beacon", "info", "--key", "beacon.key",
                                       show=False).stdout)
    bport = free_port()
    print(f"$ potd beacon serve --key beacon.key --port {bport} &", flush=True)
    beacon = subprocess.Popen([sys.executable, "-m", "ledger", "beacon", "serve", "--key",
                               "beacon.key", "--port", str(bport)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    burl = f"http://127.0.0.1:{bport}"
    ok = False
    try:
        _wait_http(burl + "/info")
        banner(f"3. training {args.recipe} with a commitment per step, streamed to {url}")
        potd("prover", "train", "--recipe", args.recipe, "--log", url, "--vkey", "log.key.pub",
             "--key", "trainer.key", "--evidence", "evidence", "--epochs", str(args.epochs),
             "--beacon", burl, "--beacon-chain", "chain.json", "--json", "train.json")
        trained = json.loads(Path("train.json").read_text())
        run = trained["run"]
        model = f"evidence/{trained['final_model']}"  # the model the trainer ships

        banner("4. an independent audit: log, statements, seed, order, replay, memorization, "
               "and the shipped model")
        r = potd("auditor", "audit", "--log", url, "--vkey", "log.key.pub", "--run", run,
                 "--evidence", "evidence", "--samples", str(args.samples), "--state",
                 "auditor-state", "--beacon-chain", "chain.json", "--require-drand",
                 "--public-challenge", "--model", model, "--json", "audit.json", "--html",
                 "audit.html", check=False)
        ok = r.returncode == 0
        banner("4b. the quick question (no replay): was this model file produced by the run?")
        potd("auditor", "check-model", "--log", url, "--vkey", "log.key.pub", "--run", run,
             "--model", model, "--state", "auditor-state")

        banner("5. the whole log recomputed from its tiles and entry bundles")
        potd("auditor", "verify-log", "--log", url, "--vkey", "log.key.pub", "--state",
             "auditor-state")
        potd("auditor", "runs", "--log", url, "--vkey", "log.key.pub", "--state",
             "auditor-state")
        if not args.no_lm:
            ok = language_model(url, burl) and ok
    finally:
        print(f"$ kill {server.proc.pid if server.proc else ''} {beacon.pid}  # stop the log "
              "server and the beacon")
        server.stop()
        beacon.terminate()
        beacon.wait(20)
    print(f"\nhonest run: {'PASS' if ok else 'NOT PASSING'}; HTML report: "
          f"{(out / 'audit.html').resolve()}")

    attacks_ok = True
    if not args.no_attacks:
        banner("7. the attack suite: one adversary per threat (docs/protocol.md §6)")
        import attacks  # scripts/attacks.py

        rows = attacks.run_scenarios(attacks.SCENARIOS, out / "attacks")
        attacks.print_table(rows)
        Path("attacks.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
        attacks_ok = all(r["ok"] for r in rows)
        print(f"\n{sum(r['ok'] for r in rows)} of {len(rows)} scenarios ended as they must")
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s; files in {out}")
    return 0 if ok and attacks_ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "scripts"))
    sys.exit(main())
