"""The audit with selective disclosure (``potd auditor audit --disclosure URL``;
docs/protocol.md §4.9): the auditor holds no training data.

Order: the log and the run are verified as in every audit; the *published example-hash
list* is fetched from the evidence store and checked against the committed ordered and
sorted roots (check ``hash_list``) before anything else uses it; the order check runs on
those hashes (no data needed). Then, for the public challenge fixed at ``run.close``,
the auditor derives the segments it will replay and test for memorization
(:mod:`prover.disclosure`), asks the trainer's data server for exactly the examples of
their batches and the held-out sample, checks every disclosed example's SHA-256 against
the committed hash (train: the verified hash list; held-out: the server's held-out hash
list, first checked against the committed held-out root), and replays and tests
memorization on those examples only (check ``disclosure``).

Verdicts: a disclosed example whose bytes do not hash to the committed hash, or held-out
hashes that do not make the committed root, fail (the trainer lied); a server that does
not answer, or refuses to disclose what the challenge asks for, leaves the audit
inconclusive by design (nothing learnt about the claim: an unreachable server is no
evidence against the trainer, and withholding never earns a pass). The order check runs
on the verified hash list, and its report says so. Trusts the pinned log key only; the
data server, like the evidence store, is hostile.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger.errors import MalformedError, PeerUnreachable, PotdError, UsageError
from ledger.note import SignedCheckpoint
from ledger.statement import Statement
from prover.dataset_cache import HashTable
from prover.datasets import Dataset, Datasets, Indexes
from prover.disclosure import (
    RunPlan,
    TransformError,
    heldout_indexes,
    segments,
    train_indexes,
)
from prover.hashing import merkle_root_hex

from .audit import Audit, AuditOptions
from .logview import LogSnapshot
from .replay_check import ReplayCheck
from .runs import RunView

if TYPE_CHECKING:
    import torch

    from prover.recipes import Recipe

CHUNK = 256              # indexes per request (the server's MAX_INDEXES)
MAX_ANSWER = 512 << 20   # bytes of one answer read at most
NOT_CHECKED = [
    "the content of the undisclosed training examples: only their hashes are known, so "
    "nothing about what they contain (provenance, licence, personal data) is checked",
    "that the committed examples are the data the trainer claims to own or use: the hash "
    "list proves order and membership, not content",
    "the held-out examples beyond the memorization sample",
]
ORDER_NOT_CHECKED = (
    "the order check proves that each step's batch is the seed-derived selection of "
    "committed example hashes; what the undisclosed examples contain (which documents "
    "they are) is not checked: only the disclosed ones were seen")


def _int(x: Any) -> int:
    if type(x) is not int:
        raise TypeError(f"{str(x)[:20]!r} is not an integer")
    return x


class DisclosureRefused(PotdError):
    """The data server answered, but refused (a status and its JSON error)."""

    code = "refused"


class RunChallenge(Audit):
    """An :class:`Audit` that stops after the seed and the public challenge, and keeps
    the run's :class:`~prover.disclosure.RunPlan` (what the data server discloses)."""

    plan: RunPlan | None = None
    o: Statement

    @classmethod
    def derive(cls, client: Any, run: str, evidence: str = "") -> RunChallenge:
        a = cls(client, AuditOptions(run=run, evidence=evidence, public_challenge=True))
        a.run()
        if a.plan is None:
            bad = [c for c in a.checks if c["status"] in ("fail", "inconclusive", "skip")]
            why = bad[0]["summary"] if bad else "no plan"
            raise UsageError(f"run {run[:16]}… has no valid public challenge: {why}",
                             hint="serve data only for a closed run that audits cleanly")
        return a

    def _verify(self, view: RunView, snap: LogSnapshot, o: Statement, close: Statement,
                cp: SignedCheckpoint) -> None:
        rc = ReplayCheck(self, view, snap, o, close, cp)
        seed = rc._seed()
        public, _ = rc._public_challenge()
        self.o = o
        hp, ds, ho = (o.body.get(k) for k in ("hyperparameters", "dataset", "heldout"))
        if seed is None or public is None or not all(isinstance(x, dict) for x in (hp, ds, ho)):
            return
        assert isinstance(hp, dict) and isinstance(ds, dict) and isinstance(ho, dict)
        ends = [-1] + [int(st.body["step"]) for st in rc.steps  # type: ignore[arg-type]
                       if isinstance(st.body.get("checkpoint"), dict)]
        try:
            self.plan = RunPlan(seed, public, _int(ds["size"]), _int(ho["size"]),
                                _int(hp["batch_size"]), _int(hp["epochs"]), len(rc.steps),
                                tuple(ends))
        except (KeyError, TypeError, ValueError, UsageError) as e:
            self.check("disclosure", "fail", f"run.open's sizes and schedule are unusable: {e}")


class DataClient:
    """The auditor's side of the data server's API (bounded answers, typed errors)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        import httpx

        try:
            with self.http.stream(method, self.url + path, json=body) as r:
                data = b""
                for chunk in r.iter_bytes():
                    data += chunk
                    if len(data) > MAX_ANSWER:
                        raise DisclosureRefused(f"{path}: the answer exceeds {MAX_ANSWER} "
                                                "bytes")
                status = r.status_code
        except httpx.HTTPError as e:
            raise PeerUnreachable(f"data server {self.url}: {type(e).__name__}: {e}") from e
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            obj = None
        if status != 200:
            err = obj if isinstance(obj, dict) else {}
            raise DisclosureRefused(f"data server {path}: HTTP {status} "
                                    f"{str(err.get('error'))[:40]}: "
                                    f"{str(err.get('detail'))[:300]}",
                                    hint=str(err.get("hint"))[:300] or None)
        if not isinstance(obj, dict):
            raise DisclosureRefused(f"data server {path}: the answer is not a JSON object")
        return obj

    def info(self) -> dict[str, Any]:
        return dict(self._call("GET", "/v1/disclosure"))

    def heldout_hashes(self) -> list[bytes]:
        hs = self._call("GET", "/v1/disclosure/heldout-hashes").get("hashes")
        try:
            assert isinstance(hs, list)
            out = [bytes.fromhex(h) for h in hs]
            assert all(len(h) == 32 for h in out)
        except (AssertionError, ValueError, TypeError):
            raise DisclosureRefused("data server: the held-out hash list is malformed") \
                from None
        return out

    def examples(self, run: str, challenge: bytes, split: str, indexes: Sequence[int]
                 ) -> Iterator[tuple[int, bytes]]:
        for k in range(0, len(indexes), CHUNK):
            want = list(indexes[k:k + CHUNK])
            ans = self._call("POST", "/v1/disclosure/examples", {
                "run": run, "challenge": challenge.hex(), "split": split, "indexes": want})
            got = ans.get("examples")
            if not isinstance(got, list) or len(got) != len(want):
                raise DisclosureRefused(f"data server: {split} answer does not hold the "
                                        f"{len(want)} examples asked for")
            for i, e in zip(want, got, strict=True):
                try:
                    assert isinstance(e, dict) and e.get("index") == i
                    yield i, base64.b64decode(str(e["data"]), validate=True)
                except (AssertionError, KeyError, ValueError):
                    raise DisclosureRefused(f"data server: {split} example {i} is not "
                                            "{index, data: base64}") from None


class Disclosed(Dataset):
    """The examples a data server disclosed, decoded (``n`` is the committed size; an
    undisclosed index is a :class:`UsageError`, never silently another example)."""

    def __init__(self, encoding: str, n: int,
                 examples: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.encoding, self.n, self.examples = encoding, n, examples

    def __len__(self) -> int:
        return self.n

    def example_bytes(self, i: int) -> bytes:
        raise UsageError(f"example {i}: disclosed examples are held decoded only")

    def batch(self, indexes: Indexes) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        try:
            rows = [self.examples[int(i)] for i in indexes]
        except KeyError as e:
            raise UsageError(f"example {e.args[0]} was not disclosed") from None
        try:
            return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
        except RuntimeError as e:  # committed examples of differing shapes
            raise MalformedError(f"the disclosed examples do not stack into a batch: "
                                 f"{str(e)[:200]}") from None


class _Mismatch(Exception):
    """A disclosed example is not the committed one (or, ``why``, the committed one is
    not an example of the committed encoding)."""

    def __init__(self, split: str, index: int, got: bytes, want: bytes,
                 why: str | None = None) -> None:
        self.split, self.index, self.got, self.want, self.why = split, index, got, want, why


class _Undecodable(Exception):
    """A disclosed example is the committed one, but the recipe's code cannot make
    tensors of it here (no evidence either way: the trainer ran it in its environment)."""

    def __init__(self, split: str, index: int, why: str) -> None:
        self.split, self.index, self.why = split, index, why


class DisclosureCheck(ReplayCheck):
    """:class:`ReplayCheck` on the published hash list and the disclosed examples."""

    _challenge: tuple[bytes | None, dict[str, Any]] | None = None
    _recipe_decode: Callable[[str, bytes], tuple[torch.Tensor, torch.Tensor]]

    def _public_challenge(self) -> tuple[bytes | None, dict[str, Any]]:
        if self._challenge is None:
            self._challenge = super()._public_challenge()
        return self._challenge

    def _dataset(self, recipe: Recipe) -> bool:
        from .membership import _verified_list

        a = self.a
        ds = self.o.body.get("dataset")
        ds = ds if isinstance(ds, dict) else {}
        enc = str(ds.get("example_hash"))
        try:
            recipe.decode(enc, b"")
        except UsageError as e:
            a.check("dataset", "inconclusive", f"disclosure mode: {e.message}", hint=e.hint)
            return False
        except Exception:  # noqa: BLE001, S110 — decodable: the empty blob is not an example
            pass
        self._recipe_decode = recipe.decode
        with tempfile.TemporaryDirectory(prefix="potd-disclosure-") as work:
            got = _verified_list(a, a.opts.evidence, self.o, Path(work))
            if got is None:
                return False
            ordered, srt, _ = got
            self.hashes = HashTable(b"".join(ordered.entry(i) for i in range(ordered.size)),
                                    ordered.root.hex())
            ordered.close()
            srt.close()
        a.check("dataset", "pass", f"disclosure mode: the auditor holds no training data; "
                f"the {len(self.hashes)} committed example hashes ({enc}) come from the "
                "verified hash list, and each disclosed example is checked against them")
        return True

    def _order(self, recipe: Recipe, seed: bytes) -> None:
        """The order check of :class:`ReplayCheck`, on the verified hash list: its report
        says so, and what a check on hashes cannot see."""
        super()._order(recipe, seed)
        c = self.a.checks[-1]
        if c["name"] != "order":
            return
        c["evidence"].update(basis="the committed example-hash list (hashes, not data)",
                             not_checked=ORDER_NOT_CHECKED)
        if c["status"] == "pass":
            c["summary"] = (f"all {len(self.steps)} batch roots equal the roots recomputed "
                            "in the seed-derived order from the committed example-hash list "
                            "(hashes, not data: disclosure mode). Not checked: what the "
                            "examples the trainer did not disclose contain")
        else:
            c["summary"] += " (recomputed from the committed example-hash list)"

    def _replay(self, recipe: Recipe, seed: bytes, ckpts: list[dict[str, Any]]) -> None:
        from .replay import provided_data

        a = self.a
        if self._world(recipe) is None:
            return  # a failed check says why (a data-parallel run replays as any: its
            # global batches are disclosed, and the replay splits them per the shard rule)
        public, _ = self._public_challenge()
        if public is None:
            a.check("disclosure", "skip", "no trusted public challenge: nothing to ask "
                    "the data server for (see the challenge check)")
            a.check("replay", "inconclusive", "no examples disclosed")
            return
        ds, ho = self.o.body.get("dataset"), self.o.body.get("heldout")
        assert isinstance(ds, dict)
        ho = ho if isinstance(ho, dict) else {}
        h = _int(ho["size"]) if type(ho.get("size")) is int else 0
        ends = tuple([-1] + [int(c["step"]) for c in ckpts])
        plan = RunPlan(seed, public, len(self.hashes), h,
                       recipe.batch_size, recipe.epochs, len(self.steps), ends)
        segs = segments(plan, a.opts.samples, a.opts.memorization_segments)
        want_train = train_indexes(plan, segs)
        want_held = heldout_indexes(plan, a.opts.memorization_segments)
        url = str(a.opts.disclosure)
        enc = str(ds.get("example_hash"))
        client = DataClient(url)
        try:
            held_hashes = client.heldout_hashes() if want_held else []
            if want_held and (merkle_root_hex(held_hashes) != ho.get("root")
                              or len(held_hashes) != ho.get("size")):
                a.check("disclosure", "fail", f"the data server's {len(held_hashes)} "
                        "held-out hashes do not make the committed held-out root",
                        server=url)
                a.check("replay", "skip", "the disclosed data cannot be trusted")
                return
            train = self._fetch(client, public, "train", want_train, self.hashes, enc)
            held = self._fetch(client, public, "heldout", want_held, held_hashes, enc)
        except _Mismatch as m:
            what = (f"hashes to its committed hash but is not an example of the committed "
                    f"encoding {enc}: {m.why}" if m.why else
                    f"hashes to {m.got.hex()[:16]}…, not to its committed hash "
                    f"{m.want.hex()[:16]}…: the data server disclosed other data than the "
                    "run committed")
            a.check("disclosure", "fail", f"disclosed {m.split} example {m.index} {what}",
                    split=m.split, index=m.index, got=m.got.hex(), committed=m.want.hex(),
                    server=url)
            a.check("replay", "skip", "the disclosed data is not the committed data")
            return
        except _Undecodable as u:
            a.check("disclosure", "inconclusive", f"disclosed {u.split} example {u.index} "
                    f"is the committed one, but the recipe cannot make tensors of it here: "
                    f"{u.why}. Nothing is learnt about the claim (the trainer ran the same "
                    "recipe code in its own environment)", split=u.split, index=u.index,
                    server=url, hint="a recipe's transform must depend on the example's "
                    "bytes and the config only (not on its data directory); else audit "
                    "with the full data (--data-dir)")
            a.check("replay", "inconclusive", "the disclosed examples could not be made "
                    "into tensors: nothing replayed")
            return
        except PotdError as e:
            from .audit import unreachable

            why = "did not answer" if unreachable(e) or isinstance(e, PeerUnreachable) \
                else "refused"
            a.check("disclosure", "inconclusive", f"the data server {url} {why}: "
                    f"{e.message}. Inconclusive by design: nothing was learnt about the "
                    "claim, and a run whose trainer withholds the examples never passes",
                    server=url, hint=e.hint)
            a.check("replay", "inconclusive", "the sampled segments' examples were not "
                    "disclosed: nothing replayed")
            return
        finally:
            client.close()
        n = len(self.hashes)
        a.report["disclosure"] = {
            "server": url, "segments": segs,
            "train": {"disclosed": len(train), "total": n,
                      "fraction": round(len(train) / n, 6) if n else 0.0},
            "heldout": {"disclosed": len(held), "total": h,
                        "fraction": round(len(held) / h, 6) if h else 0.0},
            "bytes": self._bytes, "not_checked": NOT_CHECKED}
        a.check("disclosure", "pass", f"{len(train)} of {n} training examples "
                f"({len(train) / max(n, 1):.1%}, the batches of {len(segs)} segments) and "
                f"{len(held)} of {h} held-out examples disclosed by {url}; each hashes to "
                "its committed hash. Not checked: the content of the other "
                f"{n - len(train)} training examples", **a.report["disclosure"])
        data = Datasets(Disclosed(enc, n, train), Disclosed(enc, h, held))
        # one worker (Audit refuses more): the replays run here, and a data-parallel
        # run's exact replay hands the examples to its ranks (auditor.replay_dp)
        with provided_data(recipe, data):
            super()._replay(recipe, seed, ckpts)

    _bytes = 0

    def _fetch(self, client: DataClient, challenge: bytes, split: str,
               indexes: list[int], hashes: HashTable | list[bytes], enc: str
               ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        for done, (i, blob) in enumerate(client.examples(self.view.run, challenge, split,
                                                         indexes)):
            got = hashlib.sha256(blob).digest()
            if got != hashes[i]:
                raise _Mismatch(split, i, got, hashes[i])
            self._bytes += len(blob)
            try:
                out[i] = self._recipe_decode(enc, blob)
            except MalformedError as e:  # it is the committed example: committed garbage
                raise _Mismatch(split, i, got, hashes[i], e.message) from None
            except TransformError as e:
                raise _Undecodable(split, i, e.message) from None
            except Exception as e:  # noqa: BLE001 — a recipe's own decode, run here
                raise _Undecodable(split, i, f"the recipe's decode fails "
                                   f"({type(e).__name__}: {str(e)[:200]})") from None
            self.a._tick(f"disclosure {split}", done + 1, len(indexes))
        return out
