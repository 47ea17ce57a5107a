"""Which bytes pin a recipe: the recipe code hash (docs/protocol.md §4.3 "Recipes").

A recipe's **files** are, each labelled by its path relative to its import root
(``pkg/sub.py``, ``pkg/__init__.py``, ``my_recipe.py``):

* the shared step code, ``prover/recipes/__init__.py`` (:class:`Recipe`'s default hooks and
  :func:`~prover.recipes.train_step`);
* the module defining the recipe class, and the ``__init__.py`` of each package above it;
* every *user* module reached from it by ``import`` / ``from … import`` statements
  (static: every such statement anywhere in the file, relative imports resolved,
  transitively). A module is *user* code when its file is outside the standard library,
  outside potd's own packages, and outside site-packages — except that a recipe installed
  in site-packages pins the modules of its own top-level package.

``code_hash`` = hex SHA-256 of ``potd-recipe-v2\\n`` then, for each file in label order
(UTF-8 bytes): u16 BE len(label) || label || u64 BE len(bytes) || bytes.

The registry of names (:mod:`prover.recipes.registry`) is in no hashed file, so adding a
name changes no recipe's hash. Imports the static scan cannot see (``importlib`` with a
computed name) are caught when the recipe is loaded: a user module that appears during the
load and is not pinned is refused (:func:`check_loaded`). This module does no I/O besides
reading the files it pins.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import struct
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

from ledger.errors import UsageError

DOMAIN = b"potd-recipe-v2\n"
STEP_LABEL = "prover/recipes/__init__.py"
_POTD_ROOT = Path(__file__).resolve().parent.parent.parent
_POTD = tuple(_POTD_ROOT / p for p in ("prover", "ledger", "auditor"))
_STDLIB = tuple(Path(sysconfig.get_paths()[k]).resolve() for k in ("stdlib", "platstdlib"))
_SITE = tuple({Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")})


class RecipePinError(UsageError):
    """A recipe loads code its hash cannot pin."""

    code = "recipe_unpinned"
    hint = ("put the code in the recipe's file or in a sibling module it imports by name, "
            "or install it as a package (its version is then part of the environment)")


def code_hash(files: Mapping[str, bytes]) -> str:
    """The ``potd-recipe-v2`` hash over ``{label: bytes}``."""
    h = hashlib.sha256(DOMAIN)
    for label in sorted(files, key=lambda s: s.encode()):
        b = label.encode()
        h.update(struct.pack(">H", len(b)) + b + struct.pack(">Q", len(files[label])))
        h.update(files[label])
    return h.hexdigest()


def file_hashes(files: Mapping[str, bytes]) -> dict[str, str]:
    """``{label: SHA-256 hex of the file}``, as committed in ``run.open``."""
    return {k: hashlib.sha256(v).hexdigest() for k, v in sorted(files.items())}


def _under(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def is_user_file(path: Path, own_top: str, modname: str) -> bool:
    """User code, pinned by the recipe hash (see the module docstring)."""
    p = path.resolve()
    if _under(p, _POTD):
        return False
    if _under(p, _SITE):
        return modname.split(".")[0] == own_top
    return not _under(p, _STDLIB)


def _label(modname: str, origin: Path) -> str:
    parts = modname.split(".")
    if origin.name == "__init__.py":
        return "/".join(parts) + "/__init__.py"
    return "/".join(parts) + ".py"


def _imports(tree: ast.AST, modname: str, is_pkg: bool) -> list[str]:
    """Candidate module names of every import statement (parents first)."""
    package = modname if is_pkg else modname.rpartition(".")[0]
    out: list[str] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            try:
                base = importlib.util.resolve_name("." * node.level + (node.module or ""),
                                                   package) if node.level else str(node.module)
            except (ImportError, ValueError):
                continue
            names = [base] + [f"{base}.{a.name}" for a in node.names if a.name != "*"]
        for n in names:
            parts = n.split(".")
            out += [".".join(parts[:i + 1]) for i in range(len(parts))]
    return out


def _origin(name: str) -> Path | None:
    if name in sys.modules:
        f = getattr(sys.modules[name], "__file__", None)
        return Path(f) if f else None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):
        return None  # not a module (an attribute of one), or not importable: nothing to pin
    if spec is None or not spec.has_location or not spec.origin:
        return None
    return Path(spec.origin)


def source_files(modname: str, path: Path, *, step_code: bool = True) -> dict[str, bytes]:
    """``{label: bytes}`` pinned by a recipe whose class lives in module ``modname``
    (file ``path``)."""
    own_top = modname.split(".")[0]
    files: dict[str, bytes] = {}
    if step_code:
        files[STEP_LABEL] = (_POTD_ROOT / STEP_LABEL).read_bytes()
    todo = [(modname, path)]
    parts = modname.split(".")
    for parent in (".".join(parts[:i]) for i in range(1, len(parts))):
        o = _origin(parent)  # its package's __init__ runs when the module is imported
        if o is not None and is_user_file(o, own_top, parent):
            todo.append((parent, o))
    seen = {n for n, _ in todo}
    while todo:
        name, origin = todo.pop()
        if not is_user_file(origin, own_top, name) and name != modname:
            continue
        if origin.suffix != ".py":
            raise RecipePinError(f"recipe module {name} imports compiled code {origin}, "
                                 "which the recipe hash cannot pin")
        data = origin.read_bytes()
        files[_label(name, origin)] = data
        try:
            tree = ast.parse(data, str(origin))
        except SyntaxError as e:
            raise UsageError(f"recipe file {origin} is not valid Python: {e}") from None
        for imp in _imports(tree, name, origin.name == "__init__.py"):
            if imp in seen:
                continue
            seen.add(imp)
            o = _origin(imp)
            if o is not None and is_user_file(o, own_top, imp):
                todo.append((imp, o))
    return files


def check_loaded(before: set[str], pinned: Mapping[str, bytes], own_top: str,
                 what: str) -> None:
    """Refuse user modules that appeared in ``sys.modules`` during a recipe's load without
    being pinned (an import the static scan could not see)."""
    labels = set(pinned)
    for name in sorted(set(sys.modules) - before):
        f = getattr(sys.modules[name], "__file__", None)
        if f and is_user_file(Path(f), own_top, name) and _label(name, Path(f)) not in labels:
            raise RecipePinError(
                f"recipe {what} loaded module {name} ({f}), which its hash does not pin "
                "(imported by a computed name?)")


def module_file(mod: ModuleType) -> Path:
    f = getattr(mod, "__file__", None)
    if not f:
        raise UsageError(f"cannot find the source of recipe module {mod.__name__}")
    return Path(f)
