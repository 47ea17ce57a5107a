"""``potd auditor fetch-recipe``: the committed recipe source, fetched to read before
running it (docs/protocol.md §4.3 "Recipes").

Nothing fetched is executed or imported here. Every file is checked against its content
address; the code hash is recomputed over the files (plus this potd's own step code) and
compared with ``recipe.json``'s — the audit compares it with the log's ``run.open``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from ledger.errors import MalformedError
from ledger.peer import parse_json
from prover.evidence import EvidenceError, EvidenceSource
from prover.recipes.pin import STEP_LABEL, code_hash
from prover.recipes.source import INDEX

_LABEL = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*/)*[A-Za-z_][A-Za-z0-9_]*\.py$")
_HEX = re.compile(r"^[0-9a-f]{64}$")
MAX_FILE = 4 << 20
MAX_FILES = 256


def fetch_recipe(location: str, run: str, out: Path) -> dict[str, Any]:
    """Write the recipe files of ``run`` from the evidence at ``location`` under ``out``;
    return ``{"name", "code_hash", "files": {label: sha256}, "spec", "step_code"}``.
    Raises :class:`EvidenceError` for anything that does not check out."""
    src = EvidenceSource(location)
    try:
        index = parse_json(src.read(INDEX), INDEX, max_depth=4)
    except MalformedError as e:
        raise EvidenceError(e.message, file=INDEX) from None
    files = index.get("files") if isinstance(index, dict) else None
    if not isinstance(index, dict) or not isinstance(files, dict) or not files \
            or len(files) > MAX_FILES:
        raise EvidenceError(f"{INDEX} lists no recipe files", file=INDEX)
    if index.get("run") != run:
        raise EvidenceError(f"the evidence holds the recipe of run {str(index.get('run'))[:64]}"
                            f", not of run {run}", file=INDEX)
    got: dict[str, bytes] = {}
    for label, digest in files.items():
        if not _LABEL.match(label) or not isinstance(digest, str) or not _HEX.match(digest):
            raise EvidenceError(f"{INDEX}: bad entry {label[:80]!r}", file=INDEX)
        data = src.read(f"recipe/{digest}.py", MAX_FILE)
        if hashlib.sha256(data).hexdigest() != digest:
            raise EvidenceError(f"recipe/{digest}.py is not what its name says", file=label)
        got[label] = data
    mine = (Path(__file__).resolve().parent.parent / STEP_LABEL).read_bytes()
    step_same = got.get(STEP_LABEL) == mine
    got[STEP_LABEL] = mine  # the code this potd runs, whatever the trainer's was
    digest = code_hash(got)
    for label, data in got.items():
        if label != STEP_LABEL:
            path = out / label
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    module, cls = str(index.get("module")), str(index.get("class"))
    main = module.replace(".", "/") + ".py"
    # a top-level module runs as a file; a package module by name, with `out` on the path
    spec = f"{out / main}:{cls}" if "." not in module and main in got else f"{module}:{cls}"
    return {"name": index.get("name"), "code_hash": digest,
            "committed_code_hash": index.get("code_hash"), "step_code_matches": step_same,
            "files": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(got.items())},
            "spec": spec}
