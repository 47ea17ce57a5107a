"""The commit stage of a training session: a child process that turns step records into
signed ``step`` statements, spools them, writes checkpoint evidence and submits them.

Why a process: hashing a small model's weights, building, signing and spooling a
statement, and the submitter's HTTP traffic are mostly Python or short bursts. In the
training process they hold the GIL the training loop needs between its PyTorch calls; on
another core in a low-priority process (nice 10, ``POTD_COMMIT_NICE``) they cost the
training loop a memory copy and, every few steps, a pipe write. The child needs no torch.

Channels (the child's stdin and stdout, plus two inherited descriptors):

* frames ``u32 LE length || u8 type || payload`` from the parent: ``I`` settings and
  the training set's example hashes (once, first); ``S`` a step record; ``F`` flush;
  ``C`` log ``run.close``; ``D`` drain; ``P`` stop submitting; ``X`` exit. Step records
  are written in batches (every 32 records or :attr:`Committer.batch_seconds`, 5 ms);
  requests send the batch first.
* answers to requests, ``u32 LE length || JSON``, on the child's stdout.
* the ring: a shared memory file. A small model's weights after a step are copied into
  it as their ``potd-tensors-v1`` stream (the exact bytes the weights hash is defined
  over, so the child hashes the stream itself); checkpoints put their optimizer state
  there too. A large model is hashed in the training process (overlapping the next
  step) and its checkpoint streams go through a snapshot file instead.
* credits: the child reports how far it has consumed the ring (a monotonic byte
  count); the parent never overwrites what the child has not consumed — when the ring
  is full it hashes inline instead, so training never waits for the child.

Durability. The child commits whatever records have arrived together: checkpoint objects
first (each fsynced), then every statement in one SQLite transaction (one fsync).
Statements are built, chained and spooled strictly in the order the parent recorded
them, so the spool always holds a prefix of the run: a step whose statement was not
spooled was never committed, and nothing after it was. If the parent goes away (EOF:
crash or kill), the child spools every complete record it received and exits without
submitting; ``potd prover resume`` submits the rest, exactly once. Errors (a failed
spool write, a statement that does not build) stop the child after it reports them;
the parent raises them at its next write or request.
"""

from __future__ import annotations

import array
import json
import mmap
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger.errors import PotdError, StorageError, VerificationError

if TYPE_CHECKING:
    from ledger.client import LogClient
    from prover.hashing import Parts

_LEN = struct.Struct("<I")
_POS = struct.Struct("<qq")  # ring position, length
_STEP = struct.Struct("<cqqddB")  # type, step, epoch, loss, lr, flags
_TOKEN = struct.Struct("<cQ")
_CREDIT = struct.Struct("<q")
_WEIGHTS, _ROOT, _RING, _CKPT, _LAST = 1, 2, 4, 8, 16
_BATCH_RECORDS, _BATCH_SECONDS = 32, 0.005
_SUBMIT_INTERVAL = 0.25  # prover.spool.Submitter's default
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from prover.commit_child import child_main; "
         "child_main(int(sys.argv[2]), int(sys.argv[3]))")
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
           "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
           "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def decimal_string(x: float) -> str:
    """A real number as a plain decimal string (no exponent), exact for the float's repr."""
    return format(Decimal(repr(float(x))), "f")


# --- errors across the process boundary ------------------------------------------------

def _error_json(e: BaseException) -> dict[str, Any]:
    d: dict[str, Any] = {"type": type(e).__name__, "message": getattr(e, "message", str(e)),
                         "potd": isinstance(e, PotdError)}
    if isinstance(e, PotdError):
        d["hint"] = e.hint
    for k in ("status", "code", "detail"):
        v = getattr(e, k, None)
        if isinstance(v, (int, str)):
            d[k] = v
    return d


def _subclasses(cls: type[PotdError]) -> Iterable[type[PotdError]]:
    for c in cls.__subclasses__():
        yield c
        yield from _subclasses(c)


def _error_from(d: Mapping[str, Any]) -> PotdError:
    """The child's error as an exception of the same class (message and hint kept)."""
    from ledger.client import LogRejected

    if d.get("type") == "LogRejected" and isinstance(d.get("status"), int):
        return LogRejected(d["status"], str(d.get("code", "")), str(d.get("detail", "")))
    if not d.get("potd"):
        return StorageError(f"the commit process failed: {d.get('type')}: {d.get('message')}",
                            hint="see its traceback above; the spool holds every statement "
                                 "committed before the failure (`potd prover resume`)")
    cls = next((c for c in _subclasses(PotdError) if c.__name__ == d.get("type")), PotdError)
    e = cls.__new__(cls)
    PotdError.__init__(e, str(d.get("message")), hint=d.get("hint"))
    if isinstance(e, VerificationError):
        e.evidence = {}
    return e


def client_settings(client: LogClient) -> dict[str, Any]:
    """What it takes to build an equivalent :class:`LogClient` in another process."""
    timeout = getattr(getattr(getattr(client, "_http", None), "timeout", None), "read", None)
    out = {"url": client.url, "log_key": str(client.log_key),
           "state_dir": str(client.state_dir) if getattr(client, "state_dir", None) else None,
           "proofs": getattr(client, "proofs", "server"),
           "retries": getattr(client, "retries", 8), "backoff": getattr(client, "backoff", 0.2),
           "max_backoff": getattr(client, "max_backoff", 10.0),
           "witnesses": [str(w) for w in getattr(client, "witnesses", ())],
           "quorum": getattr(client, "quorum", 0)}
    if isinstance(timeout, (int, float)):
        out["timeout"] = float(timeout)
    return out


# --- parent side -----------------------------------------------------------------------

def _shared_file() -> int:
    if hasattr(os, "memfd_create"):
        return os.memfd_create("potd-ring")
    fd, path = tempfile.mkstemp(prefix="potd-ring-")
    os.unlink(path)
    return fd


def _map_ring(fd: int, capacity: int) -> mmap.mmap:
    """Map the ring, its pages mapped in up front where the system can (``MAP_POPULATE``):
    a page touched for the first time costs the writer (the training loop) a fault, about
    0.6 ms per megabyte copied, until the ring has wrapped once."""
    flags = getattr(mmap, "MAP_POPULATE", 0)
    if flags:
        try:
            return mmap.mmap(fd, capacity, flags=mmap.MAP_SHARED | flags)
        except OSError:
            pass
    return mmap.mmap(fd, capacity)


class Ring:
    """Parent side of the ring: allocates positions, never past what the child consumed."""

    def __init__(self, fd: int, credits: int) -> None:
        self.fd, self.credits = fd, credits
        self.capacity = 0
        self.head = self.tail = 0
        self.mm: mmap.mmap | None = None

    def resize(self, capacity: int) -> None:
        """Size the ring, its memory allocated and mapped now (:func:`_map_ring`)."""
        os.ftruncate(self.fd, capacity)
        try:
            os.posix_fallocate(self.fd, 0, capacity)
        except (AttributeError, OSError):  # not everywhere; the pages come on first use
            pass
        self.mm = _map_ring(self.fd, capacity)
        self.capacity = capacity

    def _read_credits(self) -> None:
        try:
            data = os.read(self.credits, 1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        if len(data) >= 8:
            (self.tail,) = _CREDIT.unpack_from(data, len(data) - len(data) % 8 - 8)

    def alloc(self, n: int) -> int | None:
        """A position for ``n`` bytes (wrapping to the start rather than splitting), or
        None when the child has not consumed enough yet."""
        c = self.capacity
        if n > c or self.mm is None:
            return None
        pos = self.head
        if pos % c + n > c:
            pos += c - pos % c
        if pos + n - self.tail > c:
            self._read_credits()
            if pos + n - self.tail > c:
                return None
        self.head = pos + n
        return pos

    def view(self, pos: int, n: int) -> memoryview:
        assert self.mm is not None
        o = pos % self.capacity
        return memoryview(self.mm)[o:o + n]


class Committer:
    """The parent's handle on the commit process. Records may come from one thread (the
    hasher) and requests from another: buffer and pipe are under one lock."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[1])
        ring_fd = _shared_file()
        credits_r, credits_w = os.pipe()
        os.set_blocking(credits_r, False)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, root, str(ring_fd), str(credits_w)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
                pass_fds=(ring_fd, credits_w))
        finally:
            os.close(credits_w)
        self.ring = Ring(ring_fd, credits_r)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._w, self._r = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        try:  # room for many batches if the child falls behind for a moment
            import fcntl

            fcntl.fcntl(self._w, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except (ImportError, OSError):
            pass
        self._lock = threading.Lock()
        self._buf = bytearray()
        self._count = 0
        self._since = 0.0
        self._token = 0
        self.outages = 0
        self.submitter = SubmitterHandle(self)
        # set before start(): records wait up to this long to be written together (each
        # write wakes the child, which spools what it got in one transaction), and the
        # submitter waits this long between requests while statements trickle in
        self.batch_seconds = _BATCH_SECONDS
        self.submit_interval = _SUBMIT_INTERVAL

    # frames out
    def _write(self, data: bytes | bytearray) -> None:
        mv = memoryview(data)
        try:
            while mv:
                mv = mv[os.write(self._w, mv):]
        except OSError:
            raise self._died() from None

    def _send(self, frame: bytes) -> None:
        with self._lock:
            self._buf += _LEN.pack(len(frame)) + frame
            self._write(self._buf)
            self._buf.clear()
            self._count = 0

    def start(self, settings: Mapping[str, Any], example_hashes: Iterable[bytes],
              ring_capacity: int) -> None:
        if ring_capacity:
            self.ring.resize(ring_capacity)
        js = json.dumps({**settings, "ring": ring_capacity,
                         "submit_interval": self.submit_interval}).encode()
        self._send(b"I" + _LEN.pack(len(js)) + js + b"".join(example_hashes))

    def stream_to_ring(self, parts: Parts, size: int) -> tuple[int, int] | None:
        """Copy a tensor stream into the ring; its position, or None if there is no room
        (records still buffered here are sent, so the child can free some)."""
        from prover.hashing import write_stream

        pos = self.ring.alloc(size)
        if pos is None:
            if self._count:
                with self._lock:
                    self._write(self._buf)
                    self._buf.clear()
                    self._count = 0
            return None
        write_stream(parts, self.ring.view(pos, size))
        return pos, size

    def step(self, step: int, epoch: int, loss: float, lr: float, *, weights: str | None,
             ring: tuple[int, int] | None, indexes: Iterable[int], root: str | None,
             last: bool, checkpoint: Mapping[str, Any] | None = None,
             inline: bytes = b"") -> None:
        """Queue one step record: ``weights`` (hex hash) or ``ring`` (where its weights
        stream is), and at a checkpoint where its streams are (``inline``: appended)."""
        flags = ((_WEIGHTS if weights is not None else 0) | (_ROOT if root else 0)
                 | (_RING if ring is not None else 0) | (_LAST if last else 0)
                 | (_CKPT if checkpoint is not None else 0))
        parts = [_STEP.pack(b"S", step, epoch, loss, lr, flags)]
        if weights is not None:
            parts.append(weights.encode())
        if root:
            parts.append(root.encode())
        if ring is not None:
            parts.append(_POS.pack(*ring))
        idx = array.array("q", indexes).tobytes()
        parts += [_LEN.pack(len(idx) // 8), idx]
        if checkpoint is not None:
            js = json.dumps(checkpoint).encode()
            parts += [_LEN.pack(len(js)), js, inline]
        frame = b"".join(parts)
        with self._lock:
            if not self._count:
                self._since = time.monotonic()
            self._buf += _LEN.pack(len(frame))
            self._buf += frame
            self._count += 1
            if self._count >= _BATCH_RECORDS or time.monotonic() - self._since > self.batch_seconds:
                self._write(self._buf)
                self._buf.clear()
                self._count = 0

    # requests
    def _read_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = os.read(self._r, n - len(buf))
            if not chunk:
                raise self._died()
            buf += chunk
        return buf

    def _request(self, frame: bytes) -> dict[str, Any]:
        self._send(frame)
        (n,) = _LEN.unpack(self._read_exact(4))
        reply: dict[str, Any] = json.loads(self._read_exact(n))
        if "error" in reply:
            raise _error_from(reply["error"])
        return reply

    def _died(self) -> PotdError:
        """The child is gone: its last word (an error report) as an exception."""
        data = b""
        try:
            while chunk := os.read(self._r, 1 << 16):
                data += chunk
        except OSError:
            pass
        code = self.proc.wait()
        while len(data) >= 4:
            (n,) = _LEN.unpack_from(data)
            reply = json.loads(data[4:4 + n])
            data = data[4 + n:]
            if "error" in reply:
                return _error_from(reply["error"])
        return StorageError(f"the commit process exited (code {code})",
                            hint="statements it spooled are safe: `potd prover resume` "
                                 "submits them")

    def flush(self) -> None:
        self._token += 1
        self._request(_TOKEN.pack(b"F", self._token))

    def close_run(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._request(b"C" + json.dumps(body).encode())

    def drain(self, timeout: float | None) -> None:
        reply = self._request(b"D" + json.dumps({"timeout": timeout}).encode())
        self.outages = int(reply.get("outages", self.outages))

    def pause(self) -> None:
        reply = self._request(b"P")
        self.outages = int(reply.get("outages", self.outages))

    def exit(self, timeout: float = 60) -> None:
        """Let the child spool what it holds and exit; kill it if it does not."""
        if self.proc.poll() is None:
            try:
                self._send(b"X")
            except PotdError:
                pass
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.ring.mm is not None:
            self.ring.mm.close()
            self.ring.mm = None
        for fd in (self.ring.fd, self.ring.credits):
            try:
                os.close(fd)
            except OSError:
                pass


class SubmitterHandle:
    """``session.submitter``: the submitter running in the commit process."""

    def __init__(self, committer: Committer) -> None:
        self._c = committer

    @property
    def outages(self) -> int:
        return self._c.outages

    def stop(self) -> None:
        """Stop submitting (after spooling everything recorded so far)."""
        self._c.pause()

    def join(self, timeout: float | None = None) -> None:
        """:meth:`stop` returns once the submitter has stopped; nothing to wait for."""

    def drain(self, timeout: float | None = None) -> None:
        self._c.drain(timeout)


# --- child side ------------------------------------------------------------------------
