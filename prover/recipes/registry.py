"""Finding a recipe class from what a person types after ``--recipe``.

A recipe **spec** is one of

* a registered name: a built-in (:data:`BUILTIN`) or one an installed package declares
  in the entry-point group ``potd.recipes`` (``name = "pkg.module:Class"``);
* ``path/to/file.py:Class`` — a file anywhere; its directory goes on ``sys.path`` so that
  it can import sibling modules (which its hash then pins, :mod:`prover.recipes.pin`);
* ``package.module:Class`` — a module importable from ``sys.path``.

This module is in no hashed file: adding a name here changes no recipe's code hash.
Loading a recipe *runs its code*; an auditor passes the spec explicitly (see
``auditor.replay_check``), never a spec read from a log.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from ledger.errors import UsageError

from .pin import check_loaded, is_user_file, source_files

if TYPE_CHECKING:
    from . import Recipe

BUILTIN = {
    "digits-mlp": "prover.recipes.digits_mlp:DigitsMLP",
    "digits-cnn": "prover.recipes.digits_cnn:DigitsCNN",
    "wide-mlp": "prover.recipes.wide_mlp:WideMLP",
    "tiny-gpt": "prover.recipes.tiny_gpt:TinyGPT",
}
GROUP = "potd.recipes"


class RecipeNotFound(UsageError):
    code = "unknown_recipe"
    hint = ("pass a registered name (`potd prover recipes`), path/to/file.py:Class or "
            "package.module:Class")


def registered() -> dict[str, str]:
    """Every registered name: built-ins, then installed entry points (which cannot
    shadow a built-in)."""
    out = {ep.name: ep.value for ep in entry_points(group=GROUP)}
    out.update(BUILTIN)
    return out


def is_file_spec(spec: str) -> bool:
    return ":" in spec and spec.rpartition(":")[0].endswith(".py")


def canonical(spec: str) -> str:
    """``spec`` with a file path made absolute (so another process or directory finds
    the same file)."""
    if is_file_spec(spec):
        path, _, cls = spec.rpartition(":")
        return f"{Path(path).expanduser().resolve()}:{cls}"
    return spec


def resolve(spec: str) -> type[Recipe]:
    """The recipe class ``spec`` names (loading its module; see the module docstring)."""
    from . import Recipe

    target = spec
    if ":" not in spec:
        names = registered()
        if spec not in names:
            raise RecipeNotFound(f"unknown recipe {spec!r}",
                                 hint=f"registered: {', '.join(sorted(names))}; or pass "
                                      "path/to/file.py:Class or package.module:Class")
        target = names[spec]
    where, _, clsname = target.rpartition(":")
    if not where or not clsname:
        raise RecipeNotFound(f"recipe {spec!r} is not NAME, FILE.py:CLASS or MODULE:CLASS")
    mod = _load_file(Path(where)) if is_file_spec(target) else _load_module(where)
    obj = mod
    for part in clsname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise RecipeNotFound(f"{where} has no class {clsname!r}")
    if not (isinstance(obj, type) and issubclass(obj, Recipe)) or obj is Recipe:
        raise UsageError(f"{where}:{clsname} is not a recipe (a subclass of "
                         "prover.recipes.Recipe)",
                         hint="class MyRecipe(prover.recipes.Recipe): ...")
    if is_file_spec(target) and obj.__module__ != Path(where).stem:
        raise UsageError(f"{where}:{clsname} is defined in module {obj.__module__}, not in "
                         "that file: name the file that defines it",
                         hint=f"--recipe {obj.__module__}:{clsname}, or the defining file")
    return obj


def _load_module(name: str) -> object:
    before = set(sys.modules)
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise RecipeNotFound(f"cannot import recipe module {name!r}: {e}") from None
    f = getattr(mod, "__file__", None)
    if f:
        check_loaded(before, source_files(name, Path(f)), name.split(".")[0], name)
    return mod


_FILES: dict[Path, tuple[str, object]] = {}  # file -> (sha256 of the bytes run, module)
_FOLDERS: list[Path] = []  # folders of the file recipes loaded, put on sys.path


def _forget_file_recipes() -> None:
    """Unload (from ``sys.modules``, not from objects holding them) the modules of file
    recipes loaded earlier in this process and their siblings, so that a file recipe of
    the same name elsewhere, or an edited one, loads its own code."""
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if f and any(d in Path(f).resolve().parents for d in _FOLDERS) \
                and is_user_file(Path(f), name.split(".")[0], name):
            del sys.modules[name]
    for d in _FOLDERS:
        if str(d) in sys.path:
            sys.path.remove(str(d))
    _FOLDERS.clear()
    _FILES.clear()


def _load_file(path: Path) -> object:
    """Run ``path`` as module ``<stem>`` from exactly the bytes read (reloaded when the
    file changed since it was last loaded in this process)."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise RecipeNotFound(f"recipe file {path} does not exist")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    cached = _FILES.get(path)
    if cached is not None and cached[0] == digest:
        return cached[1]
    name = path.stem
    if not name.isidentifier():
        raise UsageError(f"recipe file name {path.name!r} is not a Python module name",
                         hint="rename it, e.g. my_recipe.py")
    _forget_file_recipes()
    other = sys.modules.get(name)
    if other is not None:
        raise UsageError(f"recipe file {path} would be module {name!r}, which is already "
                         f"loaded from {getattr(other, '__file__', 'elsewhere')}",
                         hint="rename the recipe file")
    folder = str(path.parent)
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)  # sibling modules import by name (and are pinned)
    _FOLDERS.append(path.parent)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    before = set(sys.modules)
    sys.modules[name] = mod
    try:
        exec(compile(data, str(path), "exec"), mod.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    mod.__dict__["__potd_source__"] = data  # the bytes run (and hashed)
    check_loaded(before, source_files(name, path), name, str(path))
    _FILES[path] = (digest, mod)
    return mod
