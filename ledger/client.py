"""A client for a potd log (or any C2SP tlog-tiles log) that never trusts the server.

* Every checkpoint is opened against the pinned log key and checked to be consistent
  with the last checkpoint this client verified for that origin (kept in memory and, with
  ``state_dir``, on disk — written only after verification). A smaller size, or another
  root at the same size, raises :class:`~ledger.errors.ConsistencyError` holding both
  checkpoints and the proof.
* Every proof received is verified; proofs can also be computed locally from tiles
  (``proofs="tiles"``), so the client works against a static tile mirror.
* Every answer is read through :class:`~ledger.peer.Peer`: a total deadline per request
  (``timeout``) and a cap per object from the protocol (a checkpoint 64 KiB, a hash tile
  32 bytes per hash, an entry bundle 2 + 65535 bytes per entry, a proof 64 KiB); a
  larger answer raises :class:`~ledger.errors.ResponseTooLarge` and is not retried.
* Requests retry with exponential backoff (with jitter) only what can recover: 429 and
  503 (honouring ``Retry-After``), a deadline, a connection that broke, and a refused
  connection for a short while (:data:`REFUSED_FOR` seconds: a log restarting is back
  within that; a trainer's spool keeps retrying at its own pace after it, an auditor
  should be told at once). What no retry can fix fails on the first try: a URL without
  an http(s) scheme (:class:`~ledger.errors.UsageError`, at construction), a TLS
  certificate that does not verify or a failed TLS handshake, a host name that does not
  resolve (:class:`~ledger.errors.PeerUnreachable` with a hint). Any other rejection
  raises :class:`LogRejected` with the server's error code and detail. Hints speak to
  the role: a failed write (the trainer's) points to its spool, a failed read never
  mentions one.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cosignature import count_cosignatures, explain_missing
from .errors import (
    ConsistencyError,
    DeadlineExceeded,
    MalformedError,
    PeerUnreachable,
    PotdError,
    PushbackError,
    SignatureError,
    UsageError,
    VerificationError,
)
from .merkle import check_hash, check_record, check_tree, leaf_hash, prove_record, prove_tree
from .note import (
    SignedCheckpoint,
    Verifier,
    b64decode,
    b64encode,
    open_checkpoint,
    parse_note,
)
from .peer import MAX_BUNDLE, MAX_CHECKPOINT, MAX_ENTRY, MAX_JSON, MAX_PROOF, Peer, Response
from .policy import Policy
from .tiles import ENTRIES_LEVEL, TILE_WIDTH, Tile, TileHashReader, decode_bundle


def _raise_storage_failure(url: str, r: Response) -> None:
    """Raise LogStorageFailing if a 503 says the log's storage is failing."""
    try:
        body = r.json()
    except MalformedError:
        return
    if isinstance(body, dict) and body.get("error") == "storage":
        raise LogStorageFailing(
            f"log {url} cannot store writes: {str(body.get('detail', ''))[:500]}",
            hint="the log operator must fix its storage (free disk space, permissions, the "
                 "device); the log resumes by itself and spooled statements are resent, "
                 "nothing acknowledged is lost")


class LogRejected(PotdError):
    """The log refused a request (4xx other than 429). ``status``/``code``/``detail``."""

    code = "rejected"

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"log rejected the request: HTTP {status} {code}: {detail}",
                         hint=_REJECT_HINTS.get(status, "fix the request; retrying won't help"))
        self.status, self.code, self.detail = status, code, detail


_REJECT_HINTS = {
    401: "the statement's signature does not verify: check the trainer key",
    403: "the signer is not allowed on this log; ask the operator to `potd ledger allow` it",
    409: "sequence conflict: another statement holds this place (already submitted?)",
    413: "the entry is too large (max 65535 bytes)",
}


class LogUnavailable(PushbackError):
    """The log could not be reached or kept pushing back past the retry budget."""

    code = "unavailable"


class LogStorageFailing(LogUnavailable):
    """The log answered 503 ``storage``: it cannot store writes (disk full, read-only
    database, I/O error). Raised at once, not retried: the cause needs its operator;
    the log takes writes again by itself once the cause is gone, so resend later."""

    code = "log_storage_failing"


class WrongLogKey(SignatureError, UsageError):
    """The log's checkpoint carries no signature by the pinned key at all: the key (or the
    URL) given is not this log's — a usage error. (A signature *by* the pinned key that
    does not verify is a plain :class:`~ledger.errors.SignatureError`: evidence, not a
    mistake.)"""

    code = "wrong_log_key"


# Seconds a refused connection is retried for: a log server restarting (a crash, an
# upgrade) listens again within about a second; past that, nothing listens at the address
# (a wrong port, a stopped server) and waiting longer only delays the message.
REFUSED_FOR = 3.0

_READ_HINT = ("check the URL and that the log server is running and reachable, then try "
              "again; nothing was verified")
_WRITE_HINT = ("the statements stay in the trainer's local spool and are submitted when the "
               "log is back (or run `potd prover resume --spool FILE`); check the URL and "
               "that the log server is running")


def unrecoverable(e: PeerUnreachable) -> str | None:
    """Why no retry can get past ``e`` (a hint for the person), or None when it may.

    Reads the cause :mod:`ledger.peer` chains to the error: a TLS certificate that does
    not verify, a TLS handshake that fails (e.g. plain HTTP on the port), a host name
    that does not exist."""
    cause = e.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (f"the server's TLS certificate does not verify ({cause.verify_message}): "
                "check the host name in the URL; a private log needs its CA in the "
                "system trust store (or SSL_CERT_FILE)")
    if isinstance(cause, ssl.SSLError) and not isinstance(
            cause, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)):
        # a protocol the two sides do not share; a connection cut mid-handshake may recover
        return ("the TLS handshake failed: is this an https URL for a server speaking "
                "plain http (or the reverse)?")
    if isinstance(cause, socket.gaierror) and cause.errno in (
            socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
        return "the host name does not resolve: check the URL"
    return None


def _refused(e: PeerUnreachable) -> bool:
    c = e.__cause__
    return isinstance(c, ConnectionRefusedError) or (
        isinstance(c, OSError) and c.errno == errno.ECONNREFUSED)


def check_url(url: str, what: str = "log") -> None:
    """``url`` is an http(s) URL with a host, else :class:`~ledger.errors.UsageError`."""
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise UsageError(f"{url[:200]!r} is not an http(s) URL",
                         hint=f"give the {what}'s URL with its scheme, e.g. "
                              "http://127.0.0.1:8080")


@dataclass(frozen=True)
class Receipt:
    """Proof that a statement is in the log: verified by the client before it is returned."""

    index: int
    leaf_hash: bytes
    checkpoint: SignedCheckpoint
    proof: tuple[bytes, ...]
    beacon_checkpoint: str | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"index": self.index, "leaf_hash": b64encode(self.leaf_hash),
                             "checkpoint": str(self.checkpoint),
                             "inclusion_proof": [b64encode(h) for h in self.proof]}
        if self.beacon_checkpoint is not None:
            d["beacon_checkpoint"] = self.beacon_checkpoint
        return d


def _state_name(origin: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in origin)
    return f"{safe[:80]}-{hashlib.sha256(origin.encode()).hexdigest()[:12]}.checkpoint"


class LogClient:
    def __init__(self, url: str, log_key: Verifier | str, *, state_dir: str | None = None,
                 proofs: str = "server", timeout: float = 30.0, retries: int = 8,
                 backoff: float = 0.2, max_backoff: float = 10.0,
                 witnesses: Sequence[Verifier] = (), quorum: int = 0,
                 policy: Policy | None = None, origin: str | None = None) -> None:
        if policy is not None:  # a C2SP tlog-policy: its witnesses and its quorum rule
            witnesses, quorum = policy.witnesses, 0
        self.policy = policy
        if proofs not in ("server", "tiles"):
            raise MalformedError("proofs must be 'server' or 'tiles'")
        if not 0 <= quorum <= len(witnesses):
            raise MalformedError(f"a quorum of {quorum} needs at least that many witnesses "
                                 f"(got {len(witnesses)})")
        self.witnesses, self.quorum = tuple(witnesses), quorum
        check_url(url)
        self.url = url.rstrip("/")
        self.log_key = Verifier.parse(log_key) if isinstance(log_key, str) else log_key
        # The log's origin when its key is named otherwise (note.open_checkpoint).
        self._origin = origin
        self.state_dir = Path(state_dir) if state_dir else None
        self.proofs = proofs
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.timeout = timeout
        self._http = Peer(deadline=timeout)
        self._lock = threading.Lock()
        self._latest: SignedCheckpoint | None = self._load_state()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LogClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state ----------------------------------------------------------------

    @property
    def origin(self) -> str:
        return self.log_key.name if self._origin is None else self._origin

    @property
    def latest(self) -> SignedCheckpoint | None:
        """The newest checkpoint this client has verified."""
        return self._latest

    def _state_path(self) -> Path | None:
        return self.state_dir / _state_name(self.origin) if self.state_dir else None

    def _load_state(self) -> SignedCheckpoint | None:
        p = self._state_path()
        if p is None or not p.exists():
            return None
        data = p.read_bytes()
        self._pinned_key_signed(data, f"the checkpoint stored in {p}")
        return open_checkpoint(data, self.log_key, origin=self._origin)

    def _pinned_key_signed(self, note: bytes, what: str) -> None:
        """Raise :class:`WrongLogKey` if ``note`` has no signature line of the pinned key
        (its name and key id): the key given is not the one that signs this log."""
        try:
            sigs = parse_note(note).signatures
        except MalformedError:
            return  # open_checkpoint reports it
        k = self.log_key
        if any((s.name, s.key_id) == (k.name, k.key_id) for s in sigs):
            return
        names = ", ".join(sorted({f"{s.name}+{s.key_id:08x}" for s in sigs}))[:300]
        raise WrongLogKey(f"{what} is not signed by the pinned key {k.name}+{k.key_id:08x} "
                          f"(it is signed by: {names})",
                          hint="check --vkey (and the log URL): pin the verifier key of the "
                               "log you mean")

    def _save_state(self, cp: SignedCheckpoint) -> None:
        p = self._state_path()
        if p is None:
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_bytes(cp.to_bytes())
        os.replace(tmp, p)

    def _advance(self, cp: SignedCheckpoint) -> SignedCheckpoint:
        """Accept ``cp`` only if it is consistent with the last verified checkpoint, and
        return the newest verified checkpoint (``cp``, or the one we already had).

        A log that cannot prove consistency from the size we saw (the proof fails, or it
        cannot produce one) has forked. A smaller size is accepted only as a lagging
        view: a log with witnesses answers writes with its newest checkpoint but publishes
        it at ``/checkpoint`` only once witnessed, a moment later. The smaller checkpoint
        must then be proven a prefix of the newer one we verified (which stays our state);
        a log that rolled its history back cannot produce that proof.
        """
        with self._lock:
            old = self._latest
            if old is not None:
                ev = {"old_checkpoint": str(old), "new_checkpoint": str(cp)}
                if cp.size < old.size:
                    try:
                        proof = (self._consistency_hashes(cp.size, old.size, old)
                                 if cp.size else [])
                        check_tree(proof, old.size, old.root, cp.size, cp.root)
                    except (LogRejected, MalformedError, VerificationError) as e:
                        raise ConsistencyError(
                            f"rollback: the log now shows size {cp.size}, after it showed "
                            f"size {old.size}, and cannot prove the smaller tree is a prefix "
                            f"of the larger ({e.message})", **ev) from None
                    return old
                try:
                    proof = self._consistency_hashes(old.size, cp.size, cp) if old.size else []
                except (LogRejected, MalformedError) as e:
                    raise ConsistencyError(
                        f"the log cannot prove that size {cp.size} extends the size {old.size} "
                        f"it showed before ({e.message})", **ev) from None
                try:
                    check_tree(proof, cp.size, cp.root, old.size, old.root)
                except VerificationError as e:
                    e.evidence.update(ev)
                    raise
                if cp.size == old.size:
                    return cp
            self._latest = cp
            self._save_state(cp)
            return cp

    # -- HTTP -----------------------------------------------------------------

    def _request(self, method: str, path: str, *, limit: int = MAX_JSON,
                 params: dict[str, Any] | None = None, content: bytes | None = None,
                 headers: dict[str, str] | None = None) -> Response:
        """One request with retries on what can recover (see the module docstring): at
        most ``retries + 1`` tries, each within ``timeout`` seconds; a refused connection
        for :data:`REFUSED_FOR` seconds only; an unrecoverable failure not at all."""
        url = self.url + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        delay = self.backoff
        last = ""
        refused_since: float | None = None
        hint = _WRITE_HINT if method == "POST" else _READ_HINT
        for attempt in range(self.retries + 1):
            try:
                r: Response | None = self._http.request(method, url, limit=limit, body=content,
                                                        headers=headers)
            except DeadlineExceeded as e:
                last = e.message
                r = None
            except PeerUnreachable as e:
                why = unrecoverable(e)
                if why is not None:
                    e.hint = why + ("; the statements stay in the trainer's local spool: "
                                    "fix this, then run `potd prover resume --spool FILE`"
                                    if method == "POST" else "; nothing was verified")
                    raise
                last = e.message
                r = None
                if _refused(e):
                    now = time.monotonic()
                    refused_since = now if refused_since is None else refused_since
                    if now - refused_since >= REFUSED_FOR:
                        break
                else:
                    refused_since = None
            if r is not None:
                refused_since = None
                if r.status < 400:
                    return r
                if r.status not in (429, 503):
                    code, detail = "http_error", r.text[:500]
                    try:
                        body = r.json()
                        code, detail = str(body.get("error", code)), str(body.get("detail", ""))
                    except (MalformedError, AttributeError):
                        pass
                    raise LogRejected(r.status, code, detail)
                last = f"HTTP {r.status}"
                if r.status == 503:
                    _raise_storage_failure(self.url, r)
                ra = r.header("Retry-After")
                if ra.replace(".", "", 1).isdigit():
                    delay = max(delay, float(ra))
            if attempt == self.retries:
                break
            pause = min(self.max_backoff, delay) * (0.5 + random.random())
            if refused_since is not None:  # one last try when the refusal budget ends
                pause = min(pause, max(0.0, refused_since + REFUSED_FOR - time.monotonic()))
            time.sleep(pause)
            delay = min(self.max_backoff, delay * 2)
        if refused_since is not None:
            last += (f"; refused for {time.monotonic() - refused_since:.1f} s: nothing "
                     "listens at that address (a wrong port, or the server is down)")
        raise LogUnavailable(f"log {self.url} unavailable after {attempt + 1} tries ({last})",
                             hint=hint)

    def _json(self, path: str, *, limit: int = MAX_JSON, **params: Any) -> dict[str, Any]:
        d = self._request("GET", path, params=params, limit=limit).json()
        if not isinstance(d, dict):
            raise MalformedError(f"{path}: expected a JSON object")
        return d

    # -- reads ----------------------------------------------------------------

    def checkpoint(self) -> SignedCheckpoint:
        """Fetch, verify and record the log's latest checkpoint.

        Returns the newest checkpoint verified so far: the fetched one, or a newer one
        this client already verified (a write receipt, the stored state) of which the
        fetched one is proven a prefix, if that newer one meets the witness policy."""
        r = self._request("GET", "/checkpoint", limit=MAX_CHECKPOINT)
        self._pinned_key_signed(r.body, f"the checkpoint of {self.url}")
        cp = open_checkpoint(r.body, self.log_key, origin=self._origin)
        self.check_witnesses(cp)
        newest = self._advance(cp)
        if newest is not cp:
            try:
                self.check_witnesses(newest)
            except SignatureError:
                return cp
        return newest

    def check_witnesses(self, cp: SignedCheckpoint) -> list[Verifier]:
        """Enforce the witness policy: at least ``quorum`` valid cosignatures from the
        listed witnesses. Returns the witnesses that cosigned."""
        ok = count_cosignatures(cp.note, self.witnesses) if self.witnesses else []
        if self.policy is not None and not self.policy.satisfied(ok):
            why = explain_missing(cp.note, [w for w in self.witnesses if w not in ok])
            raise SignatureError(
                f"checkpoint of size {cp.size}: cosignatures by {len(ok)} of the policy's "
                f"{len(self.witnesses)} witnesses do not meet its quorum",
                hint=why or "the log may be showing you a view nobody else checked (split "
                            "view); do not trust it until witnesses cosign it",
                checkpoint=str(cp))
        if len(ok) < self.quorum:
            names = ", ".join(f"{w.name}+{w.key_id:08x}" for w in self.witnesses)
            why = explain_missing(cp.note, [w for w in self.witnesses if w not in ok])
            raise SignatureError(
                f"checkpoint of size {cp.size} has {len(ok)} of the {self.quorum} required "
                f"witness cosignatures (witnesses: {names})",
                hint=why or ("the log may be showing you a view nobody else checked (split "
                             "view); do not trust it until witnesses cosign it"),
                checkpoint=str(cp))
        return ok

    def tile(self, tile: Tile) -> bytes:
        limit = (tile.width * (2 + MAX_ENTRY) if tile.level == ENTRIES_LEVEL
                 else 32 * tile.width)
        data = self._request("GET", "/" + tile.path(), limit=min(limit, MAX_BUNDLE)).body
        if tile.level != ENTRIES_LEVEL and len(data) != 32 * tile.width:
            raise MalformedError(f"{tile.path()}: {len(data)} bytes, expected {32 * tile.width}")
        return data

    def entries(self, start: int, end: int, cp: SignedCheckpoint | None = None) -> list[bytes]:
        """Entries ``[start, end)`` from entry bundles, each checked by inclusion in ``cp``."""
        cp = cp or self.checkpoint()
        if not 0 <= start <= end <= cp.size:
            raise MalformedError(f"entries [{start}, {end}) are outside size {cp.size}")
        out: list[bytes] = []
        n = start // TILE_WIDTH
        while start + len(out) < end:
            width = min(TILE_WIDTH, cp.size - n * TILE_WIDTH)
            bundle = decode_bundle(self.tile(Tile(ENTRIES_LEVEL, n, width)), expect=width)
            lo = max(start, n * TILE_WIDTH) - n * TILE_WIDTH
            hi = min(end, (n + 1) * TILE_WIDTH) - n * TILE_WIDTH
            out.extend(bundle[lo:hi])
            n += 1
        reader = TileHashReader(self.tile, cp.size)
        for i, e in enumerate(out):
            check_record(prove_record(cp.size, start + i, reader), cp.size, cp.root, start + i,
                         leaf_hash(e))
        return out

    def _hashes(self, d: dict[str, Any], key: str = "hashes") -> list[bytes]:
        hs = d.get(key)
        if not isinstance(hs, list):
            raise MalformedError(f"log reply lacks a list {key!r}")
        return [check_hash(b64decode(h, "proof hash") if isinstance(h, str) else b"", "proof hash")
                for h in hs]

    def _consistency_hashes(self, m: int, n: int, cp: SignedCheckpoint) -> list[bytes]:
        if m == n:
            return []
        if self.proofs == "tiles":
            return prove_tree(n, m, TileHashReader(self.tile, n))
        return self._hashes(self._json("/proof/consistency", limit=MAX_PROOF,
                                       **{"from": m, "to": n}))

    def inclusion_proof(self, index: int, leaf: bytes, cp: SignedCheckpoint) -> list[bytes]:
        """A verified inclusion proof of ``leaf`` at ``index`` in checkpoint ``cp``."""
        if self.proofs == "tiles":
            proof = prove_record(cp.size, index, TileHashReader(self.tile, cp.size))
        else:
            proof = self._hashes(self._json("/proof/inclusion", limit=MAX_PROOF, index=index,
                                           size=cp.size))
        check_record(proof, cp.size, cp.root, index, leaf)
        return proof

    def consistency_proof(self, old: SignedCheckpoint, new: SignedCheckpoint) -> list[bytes]:
        """A verified consistency proof between two checkpoints."""
        proof = self._consistency_hashes(old.size, new.size, new) if old.size else []
        check_tree(proof, new.size, new.root, old.size, old.root)
        return proof

    def run_indexes(self, run: str) -> list[int]:
        d = self._json(f"/runs/{run}")
        idx = d.get("indexes")
        if not isinstance(idx, list) or not all(isinstance(i, int) for i in idx):
            raise MalformedError("log reply /runs lacks a list of integer indexes")
        return idx

    # -- writes ---------------------------------------------------------------

    def _receipt(self, d: Any, entry: bytes,
                 opened: dict[str, SignedCheckpoint] | None = None) -> Receipt:
        if not isinstance(d, dict) or not isinstance(d.get("index"), int):
            raise MalformedError("log reply lacks an integer 'index'")
        cp_text = d.get("checkpoint")
        if not isinstance(cp_text, str):
            raise MalformedError("log reply lacks a 'checkpoint'")
        cp = opened.get(cp_text) if opened is not None else None
        if cp is None:
            cp = open_checkpoint(cp_text, self.log_key, origin=self._origin)
            try:
                self.check_witnesses(cp)
            except SignatureError as e:
                e.hint = ("this log answers writes before its witnesses cosign: run it with "
                          "`potd ledger serve --wait-for-witnesses`, or write with a client "
                          "that has no witness policy")
                raise
            self._advance(cp)
            if opened is not None:  # a batch's replies share checkpoints: verify each once
                opened[cp_text] = cp
        lh = leaf_hash(entry)
        if b64decode(str(d.get("leaf_hash", "")), "leaf_hash") != lh:
            raise VerificationError("the log's leaf hash is not the hash of what we sent")
        proof = self._hashes(d, "inclusion_proof")
        check_record(proof, cp.size, cp.root, d["index"], lh)
        beacon = d.get("beacon_checkpoint")
        return Receipt(d["index"], lh, cp, tuple(proof),
                       beacon if isinstance(beacon, str) else None)

    def add(self, statement: bytes) -> Receipt:
        """Submit one statement; return a verified receipt (inclusion proven)."""
        r = self._request("POST", "/add", content=statement,
                          headers={"Content-Type": "application/json"})
        return self._receipt(r.json(), statement)

    def add_batch(self, statements: Sequence[bytes]) -> list[Receipt]:
        """Submit statements all-or-nothing; return verified receipts in order."""
        body = b"[" + b",".join(statements) + b"]"
        r = self._request("POST", "/add-batch", content=body,
                          headers={"Content-Type": "application/json"})
        replies = r.json()
        if not isinstance(replies, list) or len(replies) != len(statements):
            raise MalformedError("add-batch reply is not one object per statement")
        opened: dict[str, SignedCheckpoint] = {}
        return [self._receipt(d, s, opened) for d, s in zip(replies, statements, strict=True)]
