"""``dassl`` inside this process: Dassl's module names resolve to ``dpl``'s modules.

Plugin files are Dassl code (``from dassl.engine import TRAINER_REGISTRY, TrainerX``). An import finder,
installed only by ``dpl.plugins.load_plugins`` (so a program that imports ``dpl`` as a library and uses a
real Dassl is left alone), answers every ``dassl[.X]`` import with a module that forwards to ``dpl[.X]``.
The two dataset modules also give Dassl-style code ``DasslDatum``, our ``Datum`` under Dassl's class path,
so the few-shot caches such code pickles are read by Dassl and by us.
"""
import importlib
import importlib.abc
import importlib.util
import sys
import types

from dpl.data.datasets.datum import DASSL_DATUM_MODULE, DasslDatum

DASSL = "dassl"
DATUM_MODULES = (DASSL_DATUM_MODULE, "dassl.data.datasets")  # where Dassl code imports Datum from


def dpl_name(dassl_name):
    """``dassl.engine.trainer`` -> ``dpl.engine.trainer``."""
    return "dpl" + dassl_name[len(DASSL):]


class DasslModule(types.ModuleType):
    """``dassl.X``: its own attributes (``Datum`` in the dataset modules), else those of ``dpl.X``."""

    def __init__(self, name, target):
        super().__init__(name, getattr(target, "__doc__", None))
        self.__dict__["_dpl_module"] = target

    def __getattr__(self, attr):
        if attr == "__all__":  # what `from dassl.X import *` takes
            return getattr(self._dpl_module, "__all__", [n for n in dir(self._dpl_module) if not n.startswith("_")])
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self._dpl_module, attr)

    def __dir__(self):
        return sorted(set(dir(self._dpl_module)) | set(self.__dict__))


class DasslAliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``dassl`` and ``dassl.*`` and loads them as ``DasslModule``s over the matching ``dpl`` module."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != DASSL and not fullname.startswith(DASSL + "."):
            return None
        target_name = dpl_name(fullname)
        try:
            spec = importlib.util.find_spec(target_name)
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            raise ModuleNotFoundError(f"No module named {fullname!r}: this project provides Dassl's API under dpl "
                                      f"but has no {target_name}", name=fullname)
        return importlib.util.spec_from_loader(fullname, self, is_package=spec.submodule_search_locations is not None)

    def create_module(self, spec):
        return DasslModule(spec.name, importlib.import_module(dpl_name(spec.name)))

    def exec_module(self, module):
        if module.__spec__.submodule_search_locations is not None:
            module.__path__ = []  # submodules come from this finder too
        if module.__name__ in DATUM_MODULES:
            module.Datum = DasslDatum


def install_dassl_alias():
    """Make ``dassl`` imports in this process resolve to ``dpl`` (idempotent).

    A real Dassl imported earlier in the process is dropped from ``sys.modules`` (not from disk), so the
    plugins' imports get the engine that runs them.
    """
    if any(isinstance(finder, DasslAliasFinder) for finder in sys.meta_path):
        return
    for name in [name for name in sys.modules if name == DASSL or name.startswith(DASSL + ".")]:
        del sys.modules[name]
    sys.meta_path.insert(0, DasslAliasFinder())
