"""Plugins: trainer and dataset files from outside the project, e.g. an upstream Dassl-based checkout, run as
their authors wrote them (``train.py --plugin PATH``, repeatable, or ``$DPL_PLUGINS``, paths separated by
``os.pathsep``, which the scripts pass on).

A plugin is

- a ``.py`` file, imported under a private module name; or
- a checkout: a folder with ``trainers/`` and/or ``datasets/``. Their files are imported under private
  package names (``datasets`` is also Hugging Face's package, which stays importable), so relative imports
  between them work. The checkout's other top-level packages (its vendored ``clip/``) are importable under
  their own names, for its files: from then on the name ``clip`` is the checkout's, while ``dpl`` keeps
  OpenAI's package, which it bound when it was imported (``dpl.clip.package``) and never looks up by name.

Inside the process, ``dassl`` imports resolve to ``dpl`` (``dassl_alias``); a vendored ``clip`` gets this
project's weights (``clip_weights``). The project's own ``datasets/`` and ``trainers/`` are imported first,
so a name a plugin also registers replaces the project's (a later plugin's replaces an earlier one's), said
in one line of the run's log (``dpl.utils.registry``). Each plugin's identity is the SHA-256 of its Python
files, which becomes part of the run identity of a run whose trainer or dataset it provides.
"""
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from dpl.project import alias_package, import_leaf, import_project_modules
from dpl.utils.errors import UserError
from dpl.utils.registry import PLUGIN_MODULE_PREFIX

from .clip_weights import RunWeights, adapt_vendored_clip, is_vendored_clip
from .dassl_alias import install_dassl_alias

PLUGIN_ENV = "DPL_PLUGINS"
LEAF_FOLDERS = ("datasets", "trainers")  # imported in this order (a trainer file may use a dataset's names)


class PluginError(UserError):
    """A ``--plugin`` path that is not a plugin."""


@dataclass(frozen=True)
class Plugin:
    path: str  # resolved
    package: str  # the private module prefix of its files
    sha256: str  # of its Python files: the plugin's identity
    vendored: tuple  # top-level packages it provides under their own names (e.g. ("clip",))

    def relative_module(self, module_name):
        """``module_name`` as the plugin names it (``trainers.coop``, or its file's name), wherever it was loaded."""
        if module_name == self.package:
            return Path(self.path).name
        return module_name[len(self.package) + 1:] if module_name.startswith(self.package + "_") else module_name

    def owns(self, module_name):
        """Whether ``module_name`` is one of its modules: its files' private names or a vendored package's."""
        top = module_name.split(".")[0]
        return top == self.package or top.startswith(self.package + "_") or top in self.vendored


class PluginSet:
    """The plugins loaded into this process (plugins live as long as ``sys.modules``) and the run's weights."""

    def __init__(self):
        self.plugins = {}  # resolved path -> Plugin
        self.weights = RunWeights()
        self.notes = []  # lines for the run's log

    def plugin_of_module(self, module_name):
        return next((plugin for plugin in self.plugins.values() if plugin.owns(module_name)), None)

    def plugin_of_file(self, filename):
        filename = os.path.realpath(filename)
        return next((plugin for plugin in self.plugins.values()
                     if filename == plugin.path or filename.startswith(plugin.path + os.sep)), None)


LOADED = PluginSet()


def plugin_paths(cli_paths=(), environ=None):
    """The plugins a run loads: ``$DPL_PLUGINS`` first, then ``--plugin`` values, in order, each once."""
    environ = os.environ if environ is None else environ
    paths = [p for p in environ.get(PLUGIN_ENV, "").split(os.pathsep) if p] + list(cli_paths or ())
    return list(dict.fromkeys(paths))


def load_plugins(paths):
    """Load ``paths`` (files or checkouts) after the project's own folders; returns the loaded ``Plugin``s."""
    if not paths:
        return []
    import_project_modules()
    install_dassl_alias()
    return [load_plugin(path) for path in paths]


def load_plugin(path):
    resolved = Path(path).expanduser().resolve()
    if str(resolved) in LOADED.plugins:
        return LOADED.plugins[str(resolved)]
    files = _plugin_files(path, resolved)
    try:
        sha256 = _files_sha256(resolved, files)
    except OSError as err:
        raise PluginError(f"--plugin {path}: cannot read {err.filename} ({err.strerror})") from err
    slug = re.sub(r"\W", "_", resolved.stem if resolved.is_file() else resolved.name)
    package = f"{PLUGIN_MODULE_PREFIX}{slug}_{sha256[:8]}"
    vendored = () if resolved.is_file() else _vendored_packages(path, resolved)
    plugin = Plugin(str(resolved), package, sha256, vendored)
    LOADED.plugins[plugin.path] = plugin
    if vendored:
        _serve_vendored(resolved, vendored)
    if resolved.is_file():
        _import_file(package, resolved)
    else:
        for folder in LEAF_FOLDERS:
            if (resolved / folder).is_dir():
                folder_package = f"{package}_{folder}"
                alias_package(folder_package, resolved / folder)
                for leaf in sorted((resolved / folder).glob("*.py")):
                    if not leaf.stem.startswith("_"):
                        import_leaf(f"{folder_package}.{leaf.stem}", leaf)
    extra = f", with its own {', '.join(vendored)}" if vendored else ""
    LOADED.notes.append(f"Plugin {plugin.path} (sha256 {sha256[:12]}{extra}) loaded")
    return plugin


def _import_file(module_name, path):
    """A single-file plugin, as a module of its own: asked for by name, so an error in it is a ``PluginError``."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a user's file may raise anything
        del sys.modules[module_name]
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PluginError(f"--plugin {path} failed to import ({type(exc).__name__}: {first})") from exc


def _plugin_files(given, resolved):
    """The files that make the plugin's code: the file, or a checkout's leaf folders and top-level packages."""
    if resolved.is_file():
        if resolved.suffix != ".py":
            raise PluginError(f"--plugin {given}: a plugin file must be a .py file")
        return [resolved]
    if not resolved.is_dir():
        raise PluginError(f"--plugin {given}: no such file or folder")
    if not any((resolved / folder).is_dir() for folder in LEAF_FOLDERS):
        raise PluginError(f"--plugin {given}: the folder has neither trainers/ nor datasets/; pass a .py file or "
                          "the root of a Dassl-style checkout")
    folders = [resolved / name for name in LEAF_FOLDERS + _package_names(resolved) if (resolved / name).is_dir()]
    return sorted(p for folder in folders for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _files_sha256(root, files):
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root if root.is_dir() else root.parent)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _package_names(root):
    return tuple(sorted(p.name for p in root.iterdir()
                        if p.is_dir() and p.name not in LEAF_FOLDERS and (p / "__init__.py").is_file()))


# A checkout's package that would take the place of one this process runs on is refused: this project's own
# library (a fork of the project runs from its own checkout), the dassl alias, or anything already imported.
RESERVED_PACKAGES = ("dpl", "dassl")
VENDORABLE = ("clip",)  # what checkouts vendor and dpl holds on to (dpl.clip.package)


def _vendored_packages(given, root):
    names = _package_names(root)
    for name in names:
        taken = name in RESERVED_PACKAGES or name.startswith("dpl_") or (name in sys.modules and name not in VENDORABLE)
        if taken:
            raise PluginError(f"--plugin {given}: its package {name}/ would replace the {name} this project runs on; "
                              "a checkout is loaded for its trainers/ and datasets/ (and packages such as its own "
                              "clip/), and a fork of this project runs from its own folder")
    return names


class VendoredFinder(importlib.abc.MetaPathFinder):
    """Finds a checkout's top-level packages (and their modules) in the checkout, before anything else."""

    def __init__(self, root, names):
        self.root, self.names = str(root), set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, [self.root] if "." not in fullname else path)
        if spec is not None and spec.loader is not None:
            spec.loader = VendoredLoader(spec.loader)
        return spec


class VendoredLoader(importlib.abc.Loader):
    """A vendored module's own loader, plus: a vendored ``clip`` module gets this project's weights."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        if is_vendored_clip(module):
            adapt_vendored_clip(module, LOADED.weights)


def _serve_vendored(root, names):
    """From now on ``names`` are the checkout's packages in this process (already imported ones are dropped
    from ``sys.modules``; ``dpl`` holds its own references to OpenAI's ``clip``)."""
    import dpl.clip.package  # noqa: F401  (bind OpenAI's clip before the name changes hands)

    taken = [name for name in names if any(p.owns(name) for p in LOADED.plugins.values() if p.path != str(root))]
    if taken:
        print(f"Warning: plugin {root} also has {', '.join(taken)}: from now on its copy is the one imported "
              "under that name", file=sys.stderr)
    for name in [m for m in sys.modules if m.split(".")[0] in names]:
        del sys.modules[name]
    sys.meta_path.insert(0, VendoredFinder(root, names))


def configure_run(cfg):
    """The run's settings plugins need (the weights file their ``clip`` loads); returns the notes to log: the
    plugins loaded, one line each for the run's trainer and dataset when a plugin replaced ours, and one line
    naming every other replaced name."""
    from dpl.data.datasets import DATASET_REGISTRY
    from dpl.engine import TRAINER_REGISTRY

    LOADED.weights.configure(cfg)
    used = {TRAINER_REGISTRY: cfg.TRAINER.NAME, DATASET_REGISTRY: cfg.DATASET.NAME}
    notes = list(LOADED.notes)
    for registry, name in used.items():
        notes += registry.override_notes([name])
    others = [f"{kind} {', '.join(sorted(n for n in registry.overrides if n != used[registry]))}"
              for kind, registry in (("trainers", TRAINER_REGISTRY), ("datasets", DATASET_REGISTRY))
              if set(registry.overrides) - {used[registry]}]
    if others:
        notes.append(f"Plugins also replace the project's {'; '.join(others)} (not used by this run)")
    return notes


# A CUDA call on a machine without a usable GPU ("Torch not compiled with CUDA enabled", "Found no NVIDIA
# driver on your system", "No CUDA GPUs are available", ...).
_NO_CUDA = re.compile(r"CUDA|NVIDIA|cuda")


def gpu_required_line(exc):
    """One line when ``exc`` is a plugin calling CUDA on a machine without one, else None."""
    if torch.cuda.is_available() or not isinstance(exc, (RuntimeError, AssertionError)) or not _NO_CUDA.search(str(exc)):
        return None
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if LOADED.plugin_of_file(frame.filename)]
    if not frames:
        return None
    where = frames[-1]
    plugin = LOADED.plugin_of_file(where.filename)
    first = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else type(exc).__name__
    return (f"Error: the plugin {plugin.path} needs a GPU: {where.filename}:{where.lineno} ({where.line}) uses CUDA, "
            f"which this machine does not have ({first})")
