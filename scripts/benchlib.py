"""What the server benchmarks share (scripts/bench_server.py, bench_frontends.py,
bench_witness.py): a raw-HTTP load generator in a child process, percentiles, CPU time
of a process from /proc, and starting a ``potd`` server on a free port.

The load generator keeps one keep-alive connection per client and sends that client's
pre-built requests one after another, timing each from the first byte written to the
last byte of the reply read; it runs in its own process (with uvloop when installed) so
its CPU is not the server's."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
OnError = Literal["pause", "stop"]  # a non-200 reply: pause on 503 and go on, or stop


def http_request(method: str, path: str, body: bytes = b"",
                 content_type: str = "application/json") -> bytes:
    """One HTTP/1.1 request as bytes (a body only with POST)."""
    if method == "GET":
        return f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    return (f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def client(port: int, requests: list[bytes], deadline: float, lat: list[float],
                 statuses: dict[int, int], on_error: OnError = "pause") -> None:
    """Send ``requests`` over one connection until done or past ``deadline``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for req in requests:
            if time.perf_counter() > deadline:
                break
            t = time.perf_counter()
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            m = re.search(rb"(?i)content-length: *(\d+)", head)
            if m:
                await reader.readexactly(int(m.group(1)))
            lat.append(time.perf_counter() - t)
            statuses[status] = statuses.get(status, 0) + 1
            if status != 200 and on_error == "stop":
                break
            if status == 503:
                await asyncio.sleep(0.05)
    finally:
        writer.close()


def _load(ports: list[int], per_client: list[list[bytes]], limit_s: float,
          on_error: OnError, out: Any, cpus: set[int] | None = None) -> None:
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    async def main() -> dict[str, Any]:
        lat: list[float] = []
        statuses: dict[int, int] = {}
        t0 = time.perf_counter()
        await asyncio.gather(*[client(ports[i % len(ports)], reqs, t0 + limit_s, lat,
                                      statuses, on_error)
                               for i, reqs in enumerate(per_client)])
        return {"seconds": time.perf_counter() - t0, "latencies": lat, "statuses": statuses}

    out.put(asyncio.run(main()))


def run_load(ports: int | list[int], per_client: list[list[bytes]], limit_s: float,
             on_error: OnError = "pause", cpus: set[int] | None = None) -> dict[str, Any]:
    """Run the clients (client ``i`` on ``ports[i % len(ports)]``) in a child process
    (on the CPUs ``cpus`` if given): ``{"seconds", "latencies", "statuses"}``."""
    q: Any = mp.Queue()
    p = mp.Process(target=_load, args=([ports] if isinstance(ports, int) else ports,
                                       per_client, limit_s, on_error, q, cpus))
    p.start()
    res: dict[str, Any] = q.get()
    p.join()
    return res


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def thread_cpu(pid: int) -> dict[int, tuple[float, int, int, int]]:
    """``{thread id: (user + system CPU seconds, minor page faults, voluntary and
    involuntary context switches)}`` of a process's threads, from /proc (threads that
    ended are missing)."""
    out: dict[int, tuple[float, int, int, int]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for t in tids:
        try:
            f = Path(f"/proc/{pid}/task/{t}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{pid}/task/{t}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        switches = dict(re.findall(r"(?m)^(\w+_ctxt_switches):\s*(\d+)", status))
        out[int(t)] = ((int(f[11]) + int(f[12])) / TICK, int(f[7]),
                       int(switches.get("voluntary_ctxt_switches", 0)),
                       int(switches.get("nonvoluntary_ctxt_switches", 0)))
    return out


def pin_process(pid: int, cpus: set[int]) -> None:
    """Move every thread of process ``pid`` onto ``cpus`` (threads it starts later
    inherit that)."""
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(t), cpus)
        except (ProcessLookupError, FileNotFoundError):
            pass


def load_avg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def start_potd(args: list[str], errfile: Path, what: str = "server",
               cmd: list[str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``potd ARGS`` (or ``cmd``) with stderr to ``errfile``; wait until it logs
    "listening on http://127.0.0.1:PORT" and return the process and that URL."""
    err = open(errfile, "w+b")  # noqa: SIM115 (the child keeps writing to it)
    p = subprocess.Popen(cmd or [sys.executable, "-c", "from ledger.cli import main; main()",
                                 *args], stderr=err, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        err.seek(0)
        m = re.search(rb"listening on (http://127\.0\.0\.1:\d+)", err.read())
        if m:
            return p, m.group(1).decode()
        if p.poll() is not None:
            break
        time.sleep(0.05)
    p.kill()
    err.seek(0)
    raise SystemExit(f"{what} did not start:\n" + err.read().decode(errors="replace"))
