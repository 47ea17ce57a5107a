"""The commit process's side of :mod:`prover.committer` (started by
:class:`~prover.committer.Committer` as ``python -c``, importing :func:`child_main`): it
reads the parent's frames and the ring, builds, signs and spools the statements, writes
checkpoint evidence and runs the submitter. The channels, the ring and the durability
rules are described in :mod:`prover.committer`."""

from __future__ import annotations

import array
import ctypes
import hashlib
import json
import mmap
import os
import sys
import traceback
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ledger.errors import MalformedError, PotdError, VerificationError

if TYPE_CHECKING:
    pass

from prover.committer import (
    _CKPT,
    _CREDIT,
    _DTYPES,
    _LAST,
    _LEN,
    _POS,
    _RING,
    _ROOT,
    _STEP,
    _SUBMIT_INTERVAL,
    _TOKEN,
    _WEIGHTS,
    _error_json,
    _map_ring,
    decimal_string,
)


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
            got = (weights_hash if same and weights_hash is not None
                   else self.stream_hash(streams["weights"]))
            if got != weights_hash:
                raise VerificationError(f"step {step}: the checkpoint's weights hash to {got}, "
                                        f"the step committed {weights_hash}",
                                        hint="the weights changed while being committed: a bug")
            from prover.hashing import state_hash

            opt_hash = self.stream_hash(streams["optimizer"])
            return {"step": step, "weights": self.put_object(streams["weights"]),
                    "weights_hash": got,
                    "optimizer": self.put_object(streams["optimizer"]),
                    "optimizer_hash": opt_hash,
                    "state": state_hash({"weights": got, "optimizer": opt_hash})}
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
