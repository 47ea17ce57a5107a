"""Checks 3–5 of the audit: seed and data order, replay, memorization (docs/protocol.md §5);
the sampled replay and memorization are in :mod:`auditor.replay_sampled`.

Everything recomputed here comes from the recipe (whose code hash must match the one
committed in ``run.open``), the data the auditor was given, the revealed ``s_rand``, the
log's own signature (beacon) and evidence files checked against the log's hashes.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from ledger.errors import PotdError
from ledger.merkle import check_tree
from ledger.note import SignedCheckpoint, open_checkpoint
from ledger.statement import Statement
from prover.beacon import trust
from prover.derive import (
    batch_indexes,
    beacon_from_checkpoint,
    derive_seed,
    init_seed,
    schedule,
    seed_commitment,
)
from prover.evidence import EvidenceError, EvidenceSource, manifest_bytes
from prover.hashing import hash_tensors, merkle_root_hex
from prover.recipes import Recipe, get_recipe
from prover.recipes.pin import code_hash, file_hashes
from prover.session import decimal_string

from .beacon_check import BeaconFail, drand_seed_beacon, public_challenge
from .chain import (
    Chain,
    optimizer_layout_problem,
    safetensors_layout,
    weights_layout_problem,
)
from .logview import LogSnapshot
from .model import checkpoints_check, model_check
from .replay_sampled import SampledReplay, _evidence_status
from .runs import RunView

if TYPE_CHECKING:
    from .audit import Audit

class ReplayCheck(SampledReplay):
    """Checks 3–5: recipe, seed, data and order, initial state and evidence here; the
    sampled replay and memorization in :class:`~auditor.replay_sampled.SampledReplay`."""

    def __init__(self, audit: Audit, view: RunView, snap: LogSnapshot, o: Statement,
                 close: Statement, cp: SignedCheckpoint) -> None:
        self.a, self.view, self.snap, self.o, self.close, self.cp = audit, view, snap, o, close, cp
        self.steps = [st for _, st in view.steps]
        self._job_orders: dict[tuple[bytes, int, int], list[int]] = {}

    def run(self) -> None:
        from .audit import _Stop

        a = self.a
        numbers = [st.body.get("step") for st in self.steps]
        if any(type(t) is not int or t != i for i, t in enumerate(numbers)):
            a.check("replay", "fail", "the step statements are not numbered 0, 1, 2, … in "
                    "log order (see run.chain): no step can be located, nothing replayed")
            raise _Stop
        chain = self._checkpoints()
        self._model(chain)
        recipe = self._recipe()
        if recipe is None:
            raise _Stop
        seed = self._seed()
        data_ok = self._dataset(recipe)
        if seed is None or not data_ok:
            a.check("order", "skip", "cannot derive the data order without the seed and data")
            a.check("replay", "skip", "cannot replay without the seed and the committed data")
            raise _Stop
        if not self._hyperparameters(recipe):
            a.check("order", "skip", "the committed schedule does not match the log: no "
                    "data order is derived for it")
            raise _Stop
        self._order(recipe, seed)
        self._init(recipe, seed)
        ckpts = self._evidence(chain, recipe)
        if ckpts is None:
            if a.checks[-1]["name"] == "evidence" and a.checks[-1]["status"] == "inconclusive":
                a.check("replay", "inconclusive", "no evidence to replay from (see the "
                        "evidence check)")
            else:
                a.check("replay", "fail", "the evidence does not match the log; nothing can "
                        "be replayed from it")
            raise _Stop
        self._replay(recipe, seed, ckpts)

    # -- recipe, seed, data ----------------------------------------------------

    def _recipe(self) -> Recipe | None:
        """The recipe to replay with: the spec the auditor passed (``--recipe``), else the
        built-in of the committed name — never code named by the log. Its code hash must
        equal the commitment (a mismatch names both hashes and the files that differ)."""
        from prover.recipes.registry import BUILTIN

        a, o = self.a, self.o
        rc = o.body.get("recipe")
        if not isinstance(rc, dict) or not isinstance(rc.get("config"), dict):
            a.check("recipe", "fail", "run.open carries no recipe name and config")
            return None
        name = str(rc.get("name"))
        spec = a.opts.recipe or name
        a.report["recipe"] = name
        if not a.opts.recipe and name not in BUILTIN:
            a.check("recipe", "fail", f"the run was trained with recipe {name!r}, which is not "
                    "built into potd; the auditor runs only code it is given",
                    hint="fetch its source (potd auditor fetch-recipe --evidence … --run …), "
                         "read it, then pass it with --recipe FILE.py:CLASS")
            return None
        try:
            config = rc["config"]
            assert isinstance(config, dict)
            recipe = get_recipe(spec, data_dir=a.opts.data_dir, **config)
        except PotdError as e:  # a recipe's own __init__ may refuse a config, too
            a.check("recipe", "fail", f"cannot instantiate recipe {spec!r} with the committed "
                    f"config: {e.message}", hint=e.hint)
            return None
        if recipe.name != name:
            a.check("recipe", "fail", f"the run was trained with recipe {name!r}, not the "
                    f"{recipe.name!r} you asked to audit with ({spec})")
            return None
        try:
            files = recipe.source_files()
        except PotdError as e:
            a.check("recipe", "fail", f"recipe {spec!r}: {e.message}", hint=e.hint)
            return None
        have, want = code_hash(files), rc.get("code_hash")
        if have != want:
            mine = file_hashes(files)
            committed = rc.get("files")
            theirs = {str(k): v for k, v in committed.items()} \
                if isinstance(committed, dict) else {}
            differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            a.check("recipe", "fail", f"recipe {name!r} here ({spec}) has code hash {have}, the "
                    f"run committed {str(want)[:64]}: the recipe changed since run.open"
                    + (f" (files differing: {', '.join(differ)[:400]})" if differ else ""),
                    committed=want, local=have, files_differing=differ,
                    hint="audit with the committed source: potd auditor fetch-recipe, "
                         "read it, pass it with --recipe")
            return None
        probe = self._probe(recipe)
        if isinstance(probe, str):
            a.check("recipe", "fail", f"recipe {name!r} with the committed config: {probe}",
                    config=rc["config"])
            return None
        where = "" if spec == name else f" ({spec})"
        a.check("recipe", "pass", f"recipe {name!r}{where} code hash matches the "
                f"commitment; the committed config builds a {probe:,}-byte model",
                code_hash=have, config=rc["config"], model_bytes=probe, spec=spec)
        return recipe

    def _probe(self, recipe: Recipe) -> int | str:
        """Build the committed config's model on the meta device (no memory) and its
        optimizer: the model's size in bytes, or why the config is refused (it does not
        build, or its model is larger than ``--max-model-bytes``). Nothing the config
        asks for is allocated before this passes."""
        limit = self.a.opts.max_model_bytes
        try:
            with torch.device("meta"):
                model = recipe.model()
                self.optimizer_name = type(recipe.optimizer(model)).__name__
            size = int(sum(t.numel() * t.element_size() for t in model.state_dict().values()))
        except Exception as e:  # noqa: BLE001 — recipe code run on an untrusted config
            return f"it does not build a model and optimizer ({type(e).__name__}: " \
                   f"{str(e)[:200]})"
        if size > limit:
            return (f"its model would take {size:,} bytes, more than the {limit:,} this "
                    "audit allows (--max-model-bytes)")
        return size

    def _seed(self) -> bytes | None:
        a, o, close = self.a, self.o, self.close
        s_hex = close.body.get("s_rand")
        try:
            s_rand = bytes.fromhex(str(s_hex))
        except ValueError:
            s_rand = b""
        if len(s_rand) != 32 or seed_commitment(s_rand) != o.body.get("seed_commitment"):
            a.check("seed", "fail", "the s_rand revealed in run.close does not match the seed "
                    "commitment in run.open")
            return None
        open_index = self.view.statements[0][0]
        if "beacon" in o.body:  # drand mode (see prover.beacon)
            try:
                beacon, ev = drand_seed_beacon(a, o, self.steps[0] if self.steps else None,
                                               open_index, self.cp)
            except BeaconFail as e:
                a.check("seed", e.status, e.message, **e.evidence)
                return None
            how = (f"the beacon is drand round {ev['round']} of chain {ev['chain'][:16]}…, "
                   f"published after run.open is attested ({ev['time_basis']})")
        else:
            if a.opts.require_drand:
                a.check("seed", "fail", "the run's seed beacon is the log's own signature, "
                        "which a colluding log operator can grind; this audit requires a "
                        "drand beacon (--require-drand)", trust=trust("log"))
                return None
            if not self.steps or not isinstance(self.steps[0].body.get("beacon_checkpoint"),
                                                str):
                a.check("seed", "fail", "the first step does not carry the beacon checkpoint")
                return None
            text = str(self.steps[0].body["beacon_checkpoint"])
            try:
                beacon = beacon_from_checkpoint(text, a.client.log_key, open_index + 1,
                                                origin=self.cp.origin)  # the audited log's
                bcp = open_checkpoint(text, a.client.log_key, origin=self.cp.origin)
                proof = a.client.consistency_proof(bcp, self.cp)
                check_tree(proof, self.cp.size, self.cp.root, bcp.size, bcp.root)
            except PotdError as e:
                from .audit import unreachable

                if unreachable(e):
                    raise  # the log, not the trainer: the audit is inconclusive
                a.check("seed", "fail", f"beacon checkpoint rejected: {e.message}")
                return None
            ev = {"mode": "log", "trust": trust("log")}
            how = (f"the beacon is the log's signature on the checkpoint of size "
                   f"{open_index + 1}, consistent with size {self.cp.size} (weaker mode)")
        root = self._committed_root()
        if root is None:
            a.check("seed", "fail", "run.open has no valid dataset root")
            return None
        seed = derive_seed(root, s_rand, beacon)
        a.report["beacon"] = ev
        a.check("seed", "pass", f"s_rand matches its commitment; {how}; seed recomputed. "
                f"Trust: {ev['trust']}", seed=seed.hex(), **{"beacon": beacon.hex(), **ev})
        return seed

    def _public_challenge(self) -> tuple[bytes | None, dict[str, Any]]:
        if not self.a.opts.public_challenge:
            return None, {"kind": "auditor"}
        close_index = next(i for i, st in self.view.statements if st is self.close)
        return public_challenge(self.a, self.view.run, self.close, close_index,
                                self.snap.leaf_hashes, self.cp)

    def _committed_root(self) -> bytes | None:
        ds = self.o.body.get("dataset")
        try:
            root = bytes.fromhex(str(ds.get("root"))) if isinstance(ds, dict) else b""
        except ValueError:
            return None
        return root if len(root) == 32 else None

    def _dataset(self, recipe: Recipe) -> bool:
        """The auditor's copy of the data (the recipe's, read from ``--data-dir``) against
        the commitment: the example encoding first (another or an unknown encoding is a
        fail: the committed root means nothing this auditor can check), then the roots
        and sizes of the training and held-out sets."""
        from prover.dataset_cache import dataset_hashes
        from prover.datasets import KNOWN_ENCODINGS, as_datasets

        from .replay import recipe_data

        a = self.a
        ds, ho = self.o.body.get("dataset"), self.o.body.get("heldout")
        ds, ho = (ds if isinstance(ds, dict) else {}), (ho if isinstance(ho, dict) else {})
        enc = ds.get("example_hash")
        if enc not in KNOWN_ENCODINGS:
            a.check("dataset", "fail", f"run.open commits example encoding "
                    f"{str(enc)[:80]!r}, which this auditor does not know",
                    hint=f"known encodings: {', '.join(KNOWN_ENCODINGS)}")
            return False
        try:
            data = as_datasets(recipe_data(recipe))
            train, held = dataset_hashes(data.train), dataset_hashes(data.heldout)
        except (OSError, PotdError) as e:  # the auditor's copy of the data is not there
            a.check("dataset", "inconclusive", f"the recipe's data is not available to the "
                    f"auditor: {getattr(e, 'message', e)}",
                    hint="point the recipe at your copy of the data with --data-dir")
            return False
        if data.train.encoding != enc:
            a.check("dataset", "fail", f"run.open commits example encoding {enc!r}, but the "
                    f"recipe's data here is encoded as {data.train.encoding!r}: the "
                    "committed root is not a root of this recipe's examples",
                    committed=enc, local=data.train.encoding)
            return False
        self.hashes = train
        root = train.root
        # the auditor holding other data than the committed root says nothing against the
        # claim (it is about the committed data, which this auditor does not have):
        # nothing past this point can be checked, so the audit is inconclusive
        hint = ("obtain the data whose Merkle root the run committed (same recipe, same "
                "data version) and audit again (--data-dir)")
        n_train, n_held = len(data.train), len(data.heldout)
        if root != ds.get("root") or n_train != ds.get("size"):
            a.check("dataset", "inconclusive", "the data available to the auditor is not "
                    f"the committed data: here {n_train} examples, root {root}; committed "
                    f"{str(ds.get('size'))[:20]} examples, root {str(ds.get('root'))[:64]}: "
                    "nothing trained on it can be checked",
                    local=root, committed=ds.get("root"), hint=hint)
            return False
        if held.root != ho.get("root") or n_held != ho.get("size"):
            a.check("dataset", "inconclusive", "the held-out split available to the auditor "
                    f"is not the committed one: here {n_held} examples, root {held.root}; "
                    f"committed {str(ho.get('size'))[:20]} examples, root "
                    f"{str(ho.get('root'))[:64]}", local=held.root, committed=ho.get("root"),
                    hint=hint)
            return False
        a.check("dataset", "pass", f"{n_train} training examples ({enc}) hash to the "
                f"committed root; {n_held} held-out examples match too", root=root)
        from .membership import check_sorted_root

        check_sorted_root(a, ds, self.hashes)
        return True

    def _order(self, recipe: Recipe, seed: bytes) -> None:
        a = self.a
        n = len(self.hashes)
        plan = schedule(n, recipe.batch_size, recipe.epochs)
        self.plan = plan
        bad = []
        if len(plan) != len(self.steps):
            bad.append(f"the recipe schedules {len(plan)} steps, the run logged "
                       f"{len(self.steps)}")
        cache: dict[tuple[bytes, int, int], list[int]] = {}
        for (step, epoch, off), st in zip(plan, self.steps, strict=False):
            idx = batch_indexes(seed, n, recipe.batch_size, step, epoch, off, cache)
            root = merkle_root_hex(self.hashes[i] for i in idx)
            if st.body.get("batch_root") != root or st.body.get("epoch") != epoch or \
                    st.body.get("batch_size") != len(idx):
                bad.append(f"step {step}: committed batch root/epoch/size differ from the "
                           "seed-derived order")
                if len(bad) > 20:
                    break
        a.check("order", "fail" if bad else "pass", bad[0] if bad else
                f"all {len(self.steps)} batch roots equal the roots recomputed from the data "
                "in the seed-derived order", problems=bad[:20])

    def _hyperparameters(self, recipe: Recipe) -> bool:
        """Every field of run.open's ``hyperparameters`` against the recipe config, the
        data and the log, and every step's lr against the schedule. The step count
        (epochs x ceil(n / batch size)) is compared with the log by arithmetic, before
        any schedule is built: False when it differs (the audit cannot go on)."""
        a = self.a
        n, bs, epochs = len(self.hashes), recipe.batch_size, recipe.epochs
        planned = epochs * -(-n // bs)
        with_weights = [isinstance(st.body.get("weights"), str) for st in self.steps]
        at_ckpt = [isinstance(st.body.get("checkpoint"), dict) for st in self.steps]
        want: dict[str, Any] = {
            "optimizer": self.optimizer_name, "lr": str(recipe.config.get("lr")),
            "batch_size": bs, "epochs": epochs, "steps": planned, "k": recipe.k}
        bad = []
        hp = self.o.body.get("hyperparameters")
        if not isinstance(hp, dict):
            bad.append("run.open carries no hyperparameters block")
            hp = {}
        for key, value in want.items():
            got = hp.get(key)
            if type(got) is not type(value) or got != value:
                source = {"optimizer": "the optimizer the recipe builds",
                          "steps": f"epochs x ceil({n} examples / batch size)"
                          }.get(key, "the recipe config")
                bad.append(f"run.open hyperparameters {key} = {str(got)[:40]!r} differs from "
                           f"{source} ({value!r})")
        bad += [f"run.open hyperparameters carry {k!r}, which no check covers"
                for k in sorted(set(hp) - set(want) - {"per_step_weights"})[:5]]
        per_step = hp.get("per_step_weights")
        if per_step is True and not all(with_weights):
            bad.append("per-step weights hashing is committed on, yet a step statement "
                       "carries no weights hash")
        elif per_step is False and any(w and not c for w, c in zip(with_weights, at_ckpt,
                                                                    strict=True)):
            bad.append("per-step weights hashing is committed off, yet steps without a "
                       "checkpoint carry weights hashes")
        elif type(per_step) is not bool:
            bad.append(f"run.open hyperparameters per_step_weights = {str(per_step)[:40]!r} "
                       "is not true or false")
        if planned != len(self.steps):
            bad.insert(0, f"the committed config schedules {planned} steps ({epochs} epochs "
                          f"x ceil({n} / {bs})), the run logged {len(self.steps)}")
        for st in self.steps:
            step = int(st.body["step"])  # type: ignore[arg-type]  # ints: checked in run()
            if st.body.get("lr") != decimal_string(recipe.lr(step)):
                bad.append(f"step {step}: logged lr {str(st.body.get('lr'))[:40]} differs "
                           f"from the committed schedule ({decimal_string(recipe.lr(step))})")
                if len(bad) > 20:
                    break
        a.check("hyperparameters", "fail" if bad else "pass", bad[0] if bad else
                f"every committed hyperparameter matches the recipe config and the log "
                f"({self.optimizer_name}, lr {recipe.config.get('lr')}, batch {bs}, "
                f"{epochs} epochs = {planned} steps, k {recipe.k}, per-step weights "
                f"{'on' if per_step else 'off'}); every step's lr follows "
                "the schedule", problems=bad[:20])
        return planned == len(self.steps)

    def _init(self, recipe: Recipe, seed: bytes) -> None:
        a = self.a
        torch.manual_seed(init_seed(seed))
        model = recipe.model()
        alg = str(self.o.body.get("weights_hash"))[:40]
        try:
            h = hash_tensors(model.state_dict(), alg)
        except PotdError as e:  # an algorithm named by the trainer that we do not know
            from .audit import _Stop

            a.check("init", "fail", f"run.open names weights hash {alg!r}: {e.message}")
            raise _Stop from None
        init = self.steps[0].body.get("init") if self.steps else None
        want = init.get("weights_hash") if isinstance(init, dict) else None
        self.alg = alg
        self.init = init if isinstance(init, dict) else {}
        if h != want:
            a.check("init", "fail", "the initial weights are not the ones the seed dictates "
                    f"(recomputed {h[:16]}…, committed {str(want)[:16]}…)")
        else:
            a.check("init", "pass", "initial weights recomputed from the seed match the "
                    "committed hash", weights_hash=h)

    # -- evidence, replay, memorization -----------------------------------------

    def _checkpoints(self) -> Chain:
        return checkpoints_check(self.a, self.o, self.steps)

    def _model(self, chain: Chain) -> None:
        model_check(self.a, self.o, self.close, self.steps, chain, self.a.opts.model)

    def _evidence(self, chain: Chain, recipe: Recipe) -> list[dict[str, Any]] | None:
        """Checkpoints committed in the log, cross-checked with the evidence manifest;
        every object fetched and hash-checked up front. Returns the well-formed ones."""
        a = self.a
        src = EvidenceSource(a.opts.evidence)
        ckpts = []
        for st in self.steps:
            c = st.body.get("checkpoint")
            if "checkpoint" in st.body:
                ckpts.append({"step": st.body["step"], **c} if isinstance(c, dict) else c)
        try:
            missing = self._no_manifest(src)
            manifest, mhash = src.manifest() if missing is None else ({}, "")
        except EvidenceError as e:
            missing = self._no_manifest(src, e)
            if missing is None:
                a.check("evidence", "fail", e.message, file=e.evidence.get("file"))
                return None
        if missing is not None:
            a.check("evidence", "inconclusive", missing, location=a.opts.evidence,
                    hint="give --evidence the directory or URL the trainer published this "
                         "run's evidence at")
            return None
        if manifest.get("run") != self.view.run and mhash != self.close.body.get("manifest"):
            a.check("evidence", "inconclusive", f"the evidence at {a.opts.evidence} is run "
                    f"{str(manifest.get('run'))[:64]}'s, not run {self.view.run}'s: nothing "
                    "of this run to check there", location=a.opts.evidence,
                    hint="give --evidence the location of this run's evidence")
            return None
        if mhash != self.close.body.get("manifest"):
            a.check("evidence", "fail", "manifest.json is not the manifest committed in "
                    "run.close", file="manifest.json")
            return None
        listed = manifest.get("checkpoints")
        if listed != ckpts:
            a.check("evidence", "fail", "the manifest's checkpoints differ from those "
                    "committed in the step statements", file="manifest.json")
            return None
        try:
            src.load(str(self.init.get("weights")), str(self.init.get("weights_hash")),
                     self.alg)
        except EvidenceError as e:
            self._evidence_error(e)
            return None
        if not self._objects(src, chain.checkpoints, recipe):
            return None
        a.check("evidence", "pass", f"manifest matches run.close; all {len(ckpts)} "
                "checkpoints' objects fetched and match their names and the log's hashes",
                manifest=manifest_bytes(manifest).decode()[:200])
        return chain.checkpoints

    def _evidence_error(self, e: EvidenceError) -> None:
        """An object the log names could not be had: missing, altered or misshapen is
        evidence (fail); the evidence server not answering at all is not (inconclusive)."""
        status = _evidence_status(e)
        self.a.check("evidence", status, f"could not be fetched: {e.message}"
                     if status == "inconclusive" else e.message, file=e.evidence.get("file"))

    def _no_manifest(self, src: EvidenceSource, error: EvidenceError | None = None
                     ) -> str | None:
        """Why the evidence location holds nothing to check — no directory, no manifest,
        a URL that does not answer or answers no manifest (``error``: fetching it
        failed) — else None. That is no evidence against the trainer (a wrong --evidence,
        or nothing published yet): inconclusive. A manifest that is there is checked, and
        an object it or the log names that is missing is evidence (withheld): a fail."""
        from .audit import unreachable

        where = self.a.opts.evidence
        if not src.is_url:
            if not where or not os.path.isdir(where):
                return f"the evidence directory {where!r} does not exist"
            if not os.path.lexists(os.path.join(where, "manifest.json")):
                return (f"the evidence directory {where} holds no manifest.json: it is not "
                        "a run's evidence (or nothing was published yet)")
            return None
        if error is None:
            return None
        if unreachable(error.__context__) or error.message.startswith(
                f"evidence {where.rstrip('/')}/manifest.json: HTTP "):
            return f"no manifest could be fetched from {where}: {error.message}"
        return None

    def _objects(self, src: EvidenceSource, ckpts: list[dict[str, Any]],
                 recipe: Recipe) -> bool:
        """Fetch every evidence object the log names and check its bytes, its tensor hash
        and that it fits the recipe's model (withheld, altered or misshapen evidence of
        an unsampled checkpoint is noticed too; replay never loads a misfit)."""
        from prover.hashing import dtype_name

        a = self.a
        with torch.device("meta"):
            model = recipe.model()
            opt = recipe.optimizer(model)  # its parameter order (groups) names the state
        want = {k: (dtype_name(v), list(v.shape)) for k, v in model.state_dict().items()}
        params = [(dtype_name(p), list(p.shape)) for g in opt.param_groups
                  for p in g["params"]]
        objs = [(str(self.init.get("weights")), str(self.init.get("weights_hash")), "weights")]
        objs += [(str(c[f]), str(c[f + "_hash"]), f) for c in ckpts
                 for f in ("weights", "optimizer")]
        for i, (name, want_hash, kind) in enumerate(objs):
            try:
                got = safetensors_layout(src.verify(name, want_hash, self.alg))
            except EvidenceError as e:
                self._evidence_error(e)
                return False
            bad = (weights_layout_problem(got, want) if kind == "weights"
                   else optimizer_layout_problem(got, params))
            if bad is not None:
                a.check("evidence", "fail", f"evidence file objects/{name}: {bad}", file=name)
                return False
            a._tick("evidence", i + 1, len(objs))
        return True
