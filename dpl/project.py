"""Registration of the project's ``datasets/`` and ``trainers/`` folders.

The folders keep CoOp's names but are deliberately *not* top-level packages: ``datasets`` is also
the name of Hugging Face's package, and shadowing it would break user code. They are imported
under the private package names ``dpl_datasets`` and ``dpl_trainers`` instead, which also lets
users add a loader or trainer by dropping a file into the folder (no import line to add).

The files in them are leaves: each imports ``dpl`` only, never another file of the folders, so each
is imported on its own and a broken one is left out with a warning naming its path; only a run that
selects what it would have registered fails (its error lists the broken files).
"""
import importlib
import importlib.util
import sys
import types
import warnings
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = {"dpl_datasets": PROJECT_ROOT / "datasets", "dpl_trainers": PROJECT_ROOT / "trainers"}


def alias_package(name, folder):
    """The package ``name`` over ``folder`` (its ``__init__.py``, if any, is not run), created once per process."""
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name)
        module.__path__ = [str(folder)]
        module.__package__ = name
        module.__file__ = None
        spec = importlib.util.spec_from_loader(name, loader=None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        module.__spec__ = spec
        sys.modules[name] = module
    return module


# Leaf files that raised on import, ``{path: "ExceptionType: message"}``. Like ``sys.modules`` (whose
# complement it is) it lives as long as the process, so a broken file is reported and tried once.
_BROKEN_LEAVES = {}


def import_project_modules():
    """Import every leaf in ``datasets/`` and ``trainers/``; registration happens on import.

    Each leaf is imported on its own: one that raises is left out (one warning line on stderr naming
    its path and the error) and the others still register. Idempotent: imported or broken leaves are
    not executed again. Returns ``broken_leaves()``.
    """
    for package, folder in PROJECT_PACKAGES.items():
        if not folder.is_dir():
            raise FileNotFoundError(
                f"Project folder {folder} is missing: dpl must run from a checkout of the project "
                "(install it with `pip install -e .` from the repository root)."
            )
        alias_package(package, folder)
        for path in sorted(folder.glob("*.py")):
            if not path.stem.startswith("_"):
                import_leaf(f"{package}.{path.stem}", path)
    return broken_leaves()


def import_leaf(module_name, path):
    """Import ``path`` as ``module_name`` once; an error is kept in ``broken_leaves()`` with a warning line."""
    if module_name in sys.modules or str(path) in _BROKEN_LEAVES:
        return
    try:
        importlib.import_module(module_name)
    except Exception as exc:  # a user's file may raise anything; it must not take the other leaves down
        _BROKEN_LEAVES[str(path)] = f"{type(exc).__name__}: {exc}"
        print(f"Warning: {path} failed to import and is left out ({_BROKEN_LEAVES[str(path)]}); "
              "only a run that selects what it defines fails", file=sys.stderr)


def broken_leaves(folder=None):
    """``{path: error}`` of the leaves that failed to import (those in ``folder`` only, when given)."""
    return {path: error for path, error in _BROKEN_LEAVES.items()
            if folder is None or Path(path).parent == Path(folder)}


def broken_leaves_note(folder=None):
    """A sentence for a "not registered" error: the files (of ``folder``, when given) that failed to import,
    else ""."""
    broken = broken_leaves(folder)
    if not broken:
        return ""
    return " Files that failed to import: " + "; ".join(f"{path} ({error})" for path, error in broken.items())


class _RenamedModule(types.ModuleType):
    """A module name kept for old imports: attribute access warns once and reads the new module."""

    def __init__(self, name, target):
        super().__init__(name)
        self._target = target
        self._warned = False

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        if not self._warned:
            self._warned = True
            warnings.warn(f"{self.__name__} was renamed {self._target}: import from {self._target} (the old name "
                          "is kept for one release)", FutureWarning, stacklevel=2)
        return getattr(importlib.import_module(self._target), attr)


alias_package("dpl_datasets", PROJECT_PACKAGES["dpl_datasets"])
alias_package("dpl_trainers", PROJECT_PACKAGES["dpl_trainers"])
# The trainer base moved from trainers/base.py into the library; users' trainers may still import it.
if "dpl_trainers.base" not in sys.modules:
    sys.modules["dpl_trainers.base"] = _RenamedModule("dpl_trainers.base", "dpl.prompting.base")
    sys.modules["dpl_trainers"].base = sys.modules["dpl_trainers.base"]  # `import dpl_trainers.base` too
