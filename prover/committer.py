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
import ctypes
import hashlib
import json
import mmap
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger.errors import MalformedError, PotdError, StorageError, VerificationError

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
         "from prover.committer import child_main; child_main(int(sys.argv[2]), int(sys.argv[3]))")
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

def _address(buf: Any) -> tuple[int, Any]:
    """The address of a writable buffer, and the object that pins it (drop it first)."""
    anchor = ctypes.c_char.from_buffer(buf)
    return ctypes.addressof(anchor), anchor


class _Child:
    def __init__(self, out: int, ring_fd: int, credits: int) -> None:
        self.out, self.ring_fd, self.credits = out, ring_fd, credits
        os.set_blocking(credits, False)
        self.submitter: Any = None
        self.checkpoints: list[dict[str, Any]] = []
        self.final_weights: str | None = None
        self.final_state: str | None = None  # the last checkpoint's state (potd-state-v1)
        self.consumed = self.reported = 0
        self.ring: mmap.mmap | None = None
        self.ring_view = memoryview(b"")

    def reply(self, obj: Mapping[str, Any]) -> None:
        data = json.dumps(obj).encode()
        data = _LEN.pack(len(data)) + data
        while data:
            data = data[os.write(self.out, data):]

    def run(self) -> None:
        buf = bytearray()
        while True:
            data = os.read(0, 1 << 20)
            buf += data
            frames = []
            off = 0
            while len(buf) - off >= 4:
                (n,) = _LEN.unpack_from(buf, off)
                if len(buf) - off - 4 < n:
                    break
                frames.append(bytes(buf[off + 4:off + 4 + n]))
                off += 4 + n
            del buf[:off]
            if self.process(frames) or not data:
                return  # exit request, or EOF: the parent is gone

    def process(self, frames: list[bytes]) -> bool:
        """Handle frames in order; statements are committed together. True: exit."""
        items: list[tuple[str, dict[str, Any]]] = []
        flushed: list[int] = []
        for f in frames:
            t = f[:1]
            if t == b"S":
                items.append(("step", self.step_body(f)))
                continue
            if t == b"F":
                flushed.append(_TOKEN.unpack(f)[1])
                continue
            self.commit(items)
            items = []
            for tok in flushed:
                self.reply({"flushed": tok})
            flushed = []
            if t == b"I":
                self.init(f)
            elif t == b"C":
                self.reply(self.close_run(json.loads(f[1:])))
            elif t == b"D":
                try:
                    self.submitter.drain(json.loads(f[1:])["timeout"])
                    self.reply({"outages": self.submitter.outages})
                except Exception as e:  # reported; the statements stay in the spool
                    self.reply({"error": _error_json(e)})
            elif t == b"P":
                self.submitter.stop()
                self.submitter.join()
                self.reply({"outages": self.submitter.outages})
            elif t == b"X":
                return True
            else:
                raise PotdError(f"commit process: unknown frame type {t!r}")
        self.report_consumed()
        self.commit(items)
        for tok in flushed:
            self.reply({"flushed": tok})
        return False

    def report_consumed(self) -> None:
        if self.consumed != self.reported:
            try:
                os.write(self.credits, _CREDIT.pack(self.consumed))
                self.reported = self.consumed
            except BlockingIOError:  # the parent reads later; the count is cumulative
                pass
            except OSError:  # the parent is gone (EPIPE): what it sent is still committed
                self.reported = self.consumed

    def init(self, f: bytes) -> None:
        from ledger.client import LogClient
        from ledger.note import Signer, Verifier
        from prover.evidence import EvidenceStore
        from prover.hashing import StateHasher
        from prover.spool import Spool, Submitter

        (n,) = _LEN.unpack_from(f, 1)
        s = json.loads(f[5:5 + n])
        hashes = f[5 + n:]
        self.train_hashes = [hashes[i:i + 32] for i in range(0, len(hashes), 32)]
        self.run_id, self.prev, self.seq = s["run"], s["prev"], s["seq"]
        self.checkpoints = list(s.get("checkpoints", []))  # committed before a resume
        final = s.get("final") or {}
        self.final_weights, self.final_state = final.get("weights"), final.get("state")
        self.signer = Signer.parse(s["signer"])
        self.alg, self.per_step_weights = s["weights_hash"], s["per_step_weights"]
        self.hasher = StateHasher(self.alg, threads=1)
        self.step0, self.init_info = s["step0"], s["init"]
        self.evidence = EvidenceStore(s["evidence"])
        if s["ring"]:
            self.ring = _map_ring(self.ring_fd, s["ring"])
            self.ring_view = memoryview(self.ring)
        self.spool = Spool(s["spool"])
        c = dict(s["client"])
        url, key = c.pop("url"), c.pop("log_key")
        c["witnesses"] = [Verifier.parse(w) for w in c.get("witnesses", [])]
        client = LogClient(url, key, **c)
        self.submitter = Submitter(self.spool, client, self.run_id, batch=s["submit_batch"],
                                   interval=float(s.get("submit_interval", _SUBMIT_INTERVAL)))
        self.submitter.start()

    def ring_slice(self, pos: int, n: int) -> memoryview:
        o = pos % len(self.ring_view)
        return self.ring_view[o:o + n]

    def stream_hash(self, stream: memoryview) -> str:
        h = self.hasher.new()
        h.update(stream)
        return h.digest().hex()

    def step_body(self, f: bytes) -> dict[str, Any]:
        from prover.hashing import merkle_root_hex

        _, step, epoch, loss, lr, flags = _STEP.unpack_from(f)
        off = _STEP.size
        w = root = None
        ring: tuple[int, int] | None = None
        if flags & _WEIGHTS:
            w, off = f[off:off + 64].decode(), off + 64
        if flags & _ROOT:
            root, off = f[off:off + 64].decode(), off + 64
        if flags & _RING:
            ring, off = _POS.unpack_from(f, off), off + _POS.size
            w = self.stream_hash(self.ring_slice(*ring))
        (n,) = _LEN.unpack_from(f, off)
        idx = array.array("q")
        idx.frombytes(f[off + 4:off + 4 + 8 * n])
        off += 4 + 8 * n
        if root is None:
            th = self.train_hashes
            root = merkle_root_hex(th[i] for i in idx)
        body: dict[str, Any] = {
            "step": step, "epoch": epoch, "batch_root": root, "batch_size": n,
            "loss": decimal_string(loss), "lr": decimal_string(lr), "prev": "",
        }
        if w is not None:
            body["weights"] = w
        if flags & _CKPT:
            (m,) = _LEN.unpack_from(f, off)
            where = json.loads(f[off + 4:off + 4 + m])
            entry = self.checkpoint(step, w, where, memoryview(f)[off + 4 + m:],
                                    hashed=ring)
            self.checkpoints.append(entry)
            body["checkpoint"] = {k: v for k, v in entry.items() if k != "step"}
        if ring is not None:
            self.consumed = max(self.consumed, ring[0] + ring[1])
        if flags & _LAST:
            self.final_weights = w
            self.final_state = body["checkpoint"]["state"] if "checkpoint" in body else None
        if step == 0:
            body.update(self.step0)  # the beacon evidence (see prover.beacon)
            body["init"] = self.init_info
        if not self.per_step_weights and "checkpoint" not in body:
            body.pop("weights", None)
        return body

    def checkpoint(self, step: int, weights_hash: str | None, where: Mapping[str, Any],
                   inline: memoryview, hashed: tuple[int, int] | None = None
                   ) -> dict[str, Any]:
        """Evidence objects (the bytes ``EvidenceStore.put`` writes) and the optimizer
        state's hash, from the two streams wherever the parent put them: ``ring`` [pos,
        n], ``inline`` [offset, n] after the record, or ``file`` [path, offset, n].
        ``hashed``: the ring slice ``weights_hash`` was just computed from (the weights
        are not hashed again when they are there)."""
        files: dict[str, mmap.mmap] = {}
        streams: dict[str, memoryview] = {}
        try:
            for group in ("weights", "optimizer"):
                kind, *loc = where[group]
                if kind == "ring":
                    streams[group] = self.ring_slice(loc[0], loc[1])
                    self.consumed = max(self.consumed, loc[0] + loc[1])
                elif kind == "inline":
                    streams[group] = inline[loc[0]:loc[0] + loc[1]]
                elif kind == "file":
                    if loc[0] not in files:
                        with open(loc[0], "rb") as fh:
                            files[loc[0]] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
                    streams[group] = memoryview(files[loc[0]])[loc[1]:loc[1] + loc[2]]
                else:
                    raise MalformedError(f"checkpoint stream location {kind!r}")
            w = where["weights"]
            same = hashed is not None and w[0] == "ring" and (w[1], w[2]) == tuple(hashed)
            got = weights_hash if same else self.stream_hash(streams["weights"])
            if got != weights_hash:
                raise VerificationError(f"step {step}: the checkpoint's weights hash to {got}, "
                                        f"the step committed {weights_hash}",
                                        hint="the weights changed while being committed: a bug")
            from prover.hashing import state_hash

            opt_hash = self.stream_hash(streams["optimizer"])
            return {"step": step, "weights": self.put_object(streams["weights"]),
                    "weights_hash": weights_hash,
                    "optimizer": self.put_object(streams["optimizer"]),
                    "optimizer_hash": opt_hash,
                    "state": state_hash({"weights": weights_hash, "optimizer": opt_hash})}
        finally:
            for v in streams.values():
                v.release()
            for path, mm in files.items():
                mm.close()
                os.unlink(path)

    def put_object(self, stream: memoryview) -> str:
        """Write the tensors of ``stream`` as a content-addressed safetensors object."""
        from safetensors import TensorSpec, serialize

        from prover.hashing import parse_stream

        tensors = parse_stream(stream)
        buf = bytearray(stream) if stream.readonly else stream
        base, anchor = _address(buf) if len(buf) else (0, None)
        try:
            data = bytes(serialize({
                name: TensorSpec(dtype=_DTYPES[code], shape=shape, data_ptr=base + o,
                                 data_len=nb) for name, code, shape, o, nb in tensors}))
        except KeyError as e:
            raise MalformedError(f"no safetensors dtype for {e}") from None
        finally:
            del anchor  # unpins the buffer
        name = hashlib.sha256(data).hexdigest() + ".safetensors"
        self.evidence.put_bytes_deferred(name, data)  # durable in commit(), before spooling
        return name

    def commit(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Sign ``items`` in order (chaining ``prev``) and spool them in one transaction."""
        if not items:
            return
        from ledger.merkle import leaf_hash
        from ledger.statement import build_statement

        self.evidence.sync()  # evidence durable before the statements that name it
        rows = []
        for kind, body in items:
            body["prev"] = self.prev
            data = build_statement(kind, self.run_id, self.seq, body, self.signer)
            rows.append((self.seq, data))
            self.prev = leaf_hash(data).hex()
            self.seq += 1
        self.spool.put_many(rows)

    def close_run(self, body: Mapping[str, Any]) -> dict[str, Any]:
        manifest = {"run": self.run_id, "weights_hash": self.alg, "init": self.init_info,
                    "checkpoints": self.checkpoints}
        digest = self.evidence.write_manifest(manifest)
        close = {**body, "manifest": digest}
        for key, value in (("final_weights", self.final_weights),
                           ("final_state", self.final_state)):
            if value is not None:  # no last step recorded: the auditor fails the model
                close[key] = value
        self.commit([("run.close", close)])
        return {"manifest": digest, "checkpoints": self.checkpoints,
                "final_weights": self.final_weights, "final_state": self.final_state}


def child_main(ring_fd: int, credits: int) -> None:
    """Entry point of the commit process (started by :class:`Committer`)."""
    out = os.dup(1)
    os.dup2(2, 1)  # answers go to the private descriptor; stray prints to stderr
    if hasattr(os, "nice"):
        os.nice(int(os.environ.get("POTD_COMMIT_NICE", "10")))
    child = _Child(out, ring_fd, credits)
    code = 0
    try:
        child.run()
        if child.submitter is not None:
            child.submitter.stop()
    except BaseException as e:
        code = 1
        if not isinstance(e, PotdError):
            traceback.print_exc()
        try:
            child.reply({"error": _error_json(e)})
        except OSError:
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the submitter thread may be mid-request: its statements stay spooled
