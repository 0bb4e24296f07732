"""Registration of the project's ``datasets/`` and ``trainers/`` folders.

The folders keep CoOp's names but are deliberately *not* top-level packages: ``datasets`` is also
the name of Hugging Face's package, and shadowing it would break user code. They are imported
under the private package names ``dpl_datasets`` and ``dpl_trainers`` instead, which also lets
users add a loader or trainer by dropping a file into the folder (no import line to add).
"""
import importlib
import importlib.util
import sys
import types
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = {"dpl_datasets": PROJECT_ROOT / "datasets", "dpl_trainers": PROJECT_ROOT / "trainers"}


def _package(name, folder):
    """The alias package for ``folder``, created once per process."""
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


def import_project_modules():
    """Import every module in ``datasets/`` and ``trainers/``; registration happens on import.

    Idempotent: modules already imported are not re-executed.
    """
    for package, folder in PROJECT_PACKAGES.items():
        if not folder.is_dir():
            raise FileNotFoundError(
                f"Project folder {folder} is missing: dpl must run from a checkout of the project "
                "(install it with `pip install -e .` from the repository root)."
            )
        _package(package, folder)
        for path in sorted(folder.glob("*.py")):
            if path.stem.startswith("_"):
                continue
            importlib.import_module(f"{package}.{path.stem}")


_package("dpl_datasets", PROJECT_PACKAGES["dpl_datasets"])
_package("dpl_trainers", PROJECT_PACKAGES["dpl_trainers"])
