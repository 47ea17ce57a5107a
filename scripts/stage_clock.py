"""Run ``potd`` with the log server's write-path stages timed in CPU (benchmarks only).

``python scripts/stage_clock.py OUT.json ledger serve ...`` runs the CLI as usual, with
the write path's functions wrapped so that each call adds its thread's CPU time
(``time.thread_time``: user + system, this thread only) to a stage; at exit the totals
in seconds go to ``OUT.json``. ``scripts/bench_server.py --stages`` starts the server
this way and prints CPU per entry by stage beside the process's total (/proc).

Stages nest (``flush`` holds ``flush.admit`` which holds ``flush.log_append`` ...); the
event loop, HTTP and thread hand-offs are what the process spent outside all of them.
"""

from __future__ import annotations

import atexit
import functools
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOTALS: dict[str, float] = {}
_lock = threading.Lock()


def _clock(owner: Any, name: str, stage: str) -> None:
    f = getattr(owner, name)

    @functools.wraps(f)
    def timed(*args: Any, **kw: Any) -> Any:
        t = time.thread_time()
        try:
            return f(*args, **kw)
        finally:
            spent = time.thread_time() - t
            with _lock:
                TOTALS[stage] = TOTALS.get(stage, 0.0) + spent

    setattr(owner, name, timed)


def install() -> None:
    import nacl.signing

    import ledger.log
    import ledger.merkle
    import ledger.sequencer
    import ledger.server
    import ledger.storage.sqlite

    _clock(ledger.server, "parse_statement_array", "parse")
    _clock(ledger.server, "verify_signatures", "verify")
    _clock(nacl.signing.VerifyKey, "verify", "verify.ed25519")
    import ledger.statement_native
    if ledger.statement_native._verify is not None:  # the native path: Ed25519 in C
        _clock(ledger.statement_native, "_verify", "verify.ed25519")
    _clock(ledger.sequencer.Sequencer, "_flush", "flush")
    _clock(ledger.sequencer.Sequencer, "_admit_and_append", "flush.admit")
    _clock(ledger.log.Log, "append", "flush.admit.log_append")
    _clock(ledger.storage.sqlite.SQLiteStore, "append", "flush.admit.log_append.store")
    try:
        import ledger.storage.postgres
    except ImportError:  # psycopg not installed: SQLite only
        pass
    else:
        _clock(ledger.storage.postgres.PostgresStore, "append", "flush.admit.log_append.store")
    _clock(ledger.sequencer.Sequencer, "_replies", "flush.replies")
    _clock(ledger.log.Log, "appended_proofs_quoted", "flush.replies.proofs")
    _clock(ledger.sequencer, "_replies", "flush.replies.join")
    _clock(ledger.merkle.CompactRange, "extend", "flush.admit.log_append.hashes")
    _clock(ledger.sequencer.Sequencer, "_admit_fast", "flush.admit.checks")
    # a shared store: catching up with the tree other frontends committed
    _clock(ledger.log.Log, "refresh", "flush.refresh")


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] in ("-h", "--help"):
        print((__doc__ or "").strip())
        print("\nusage: stage_clock.py OUT.json potd-arguments...")
        raise SystemExit(0 if sys.argv[1:2] in (["-h"], ["--help"]) else 2)
    out = Path(sys.argv[1])
    install()
    atexit.register(lambda: out.write_text(json.dumps(TOTALS, indent=1) + "\n"))
    sys.argv = ["potd", *sys.argv[2:]]
    from ledger.cli import main as potd
    potd()


if __name__ == "__main__":
    main()
