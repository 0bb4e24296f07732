"""Finding the runs of a protocol under its root: which trainer, config, dataset and seed each folder is.

Layouts read (what ``scripts/<method>/*.sh`` write, ``dpl.results.layout``)::

    base2new / longtail  ROOT/{train_base,test_base,test_new}/<dataset>/shots_<K>/<Trainer>/<cfg>/seed<S>
    xd / dg              ROOT/<source>/<Trainer>/<tag>/seed<S>  (training run; tag = <cfg>_16shots)
                         ROOT/evaluation/<Trainer>/<tag>/<dataset>/seed<S>
    fewshot              ROOT/<dataset>/<Trainer>/<cfg>_<K>shots/seed<S>

Config folders named ``<cfg>@<variant>`` and base-to-novel runs with other than 16 shots are methods
of their own (their own rows or columns).
"""
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

from .errors import ResultsError
from .layout import EVALUATION_DIR, FIGURE_DIRS, split_config_folder, split_shots_tag
from .runs import RunResult, parse_run

SEED_DIR = re.compile(r"seed(\d+)")
BASE2NEW_PARTS = {"train_base": "base", "test_base": "base_eval", "test_new": "new"}  # folder -> part


def may_hold_runs(name):
    """False for dot files (editor and OS droppings are not runs) and the figure tools' output folders."""
    return not name.startswith(".") and name not in FIGURE_DIRS


def listdir_nohidden(path):
    """The entries of ``path`` that ``may_hold_runs``, sorted."""
    return sorted(name for name in os.listdir(path) if may_hold_runs(name))


@dataclass(frozen=True)
class Method:
    """One column group (or row) of a table: a trainer with its config, the variant of its config
    folder (``<cfg>@<variant>``: an ablation or a tagged run) and, for base-to-novel, a shot count other
    than the protocol's 16 (``shots_4``)."""

    trainer: str
    config: str
    variant: str = ""
    shots: str = ""

    @property
    def folder(self):
        """The config folder name (``<cfg>`` or ``<cfg>@<variant>``)."""
        return f"{self.config}@{self.variant}" if self.variant else self.config


def method_labels(methods):
    """``Trainer [variant, shots_K]`` (what differs from the protocol is always shown), with
    ``(config)`` added where two methods would share a label."""
    base = {}
    for m in methods:
        bits = ", ".join(x for x in (m.variant, m.shots) if x)
        base[m] = f"{m.trainer} [{bits}]" if bits else m.trainer
    counts = {}
    for label in base.values():
        counts[label] = counts.get(label, 0) + 1
    return {m: base[m] if counts[base[m]] == 1 else f"{base[m]} ({m.config})" for m in methods}


def method_of(trainer, folder, shots=""):
    """The ``Method`` of a ``<Trainer>/<config folder>`` pair."""
    config, variant = split_config_folder(folder)
    return Method(trainer, config, variant, shots)


def walk(root, patterns, strays):
    """[(path, names)] for every root/n1/.../nk whose names fully match ``patterns``; other entries ->
    ``strays`` (listed under the table, so that a misplaced run is seen rather than silently dropped)."""
    found = []

    def visit(path, depth, names):
        if depth == len(patterns):
            found.append((path, tuple(names)))
            return
        for name in listdir_nohidden(path):
            sub = os.path.join(path, name)
            if os.path.isdir(sub) and re.fullmatch(patterns[depth], name):
                visit(sub, depth + 1, names + [name])
            else:
                strays.append(sub)

    if os.path.isdir(root):
        visit(root, 0, [])
    return found


def seed_of(name):
    return int(SEED_DIR.fullmatch(name).group(1))


def _unknown_path(*key):
    return "?"


@dataclass
class Runs:
    """Parsed runs keyed by (part, dataset, method, seed); ``part`` is e.g. 'base', 'new', 'target'."""

    table: Dict[Tuple[str, str, Method, int], RunResult] = field(default_factory=dict)
    strays: List[str] = field(default_factory=list)
    # (part, dataset, method, seed) -> the folder where that run belongs (named in "missing" lines)
    expected_path: Callable[[str, str, Method, int], str] = _unknown_path

    def add(self, key, run):
        self.table[key] = run

    def get(self, part, dataset, method, seed):
        return self.table.get((part, dataset, method, seed))

    def methods(self):
        return sorted({k[2] for k in self.table}, key=lambda m: (m.trainer, m.config, m.variant, m.shots))

    def datasets(self, part=None):
        return {k[1] for k in self.table if part is None or k[0] == part}

    def seeds(self, method):
        return sorted({k[3] for k in self.table if k[2] == method})

    def parts(self):
        return {k[0] for k in self.table}


def discover_base2new(root, keyword):
    """Runs of ROOT/{train_base,test_base,test_new}/<ds>/shots_K/<T>/<cfg>/seed<S>."""
    folders = {part: folder for folder, part in BASE2NEW_PARTS.items()}
    runs = Runs(expected_path=lambda part, dataset, m, seed: os.path.join(
        root, folders[part], dataset, m.shots or "shots_16", m.trainer, m.folder, f"seed{seed}"))
    if not any(os.path.isdir(os.path.join(root, d)) for d in BASE2NEW_PARTS):
        raise ResultsError(f"no train_base/ or test_new/ folder under {root} (give e.g. output/base2new)")
    for folder, part in BASE2NEW_PARTS.items():
        pattern = [r"[^.].*", r"shots_.+", r".+", r".+", SEED_DIR.pattern]
        for path, (dataset, shots, trainer, cfg, seed) in walk(os.path.join(root, folder), pattern, runs.strays):
            method = method_of(trainer, cfg, "" if shots == "shots_16" else shots)
            runs.add((part, dataset, method, seed_of(seed)), parse_run(path, keyword))
    return runs


def discover_crossdomain(root, keyword, source):
    """Source runs ROOT/<source>/<T>/<tag>/seed<S> and targets ROOT/evaluation/<T>/<tag>/<ds>/seed<S>."""
    def expected_path(part, dataset, m, seed):
        if part == "source":
            return os.path.join(root, source, m.trainer, m.folder, f"seed{seed}")
        return os.path.join(root, EVALUATION_DIR, m.trainer, m.folder, dataset, f"seed{seed}")

    runs = Runs(expected_path=expected_path)
    if not os.path.isdir(os.path.join(root, EVALUATION_DIR)):
        raise ResultsError(f"no {EVALUATION_DIR}/ folder under {root} (give the output root, e.g. output)")
    source_dir = os.path.join(root, source)
    for path, (trainer, tag, seed) in walk(source_dir, [r".+", r".+", SEED_DIR.pattern], runs.strays):
        runs.add(("source", source, method_of(trainer, tag), seed_of(seed)), parse_run(path, keyword))
    pattern = [r".+", r".+", r".+", SEED_DIR.pattern]
    for path, (trainer, tag, dataset, seed) in walk(os.path.join(root, EVALUATION_DIR), pattern, runs.strays):
        # a zero-shot model has no training run: its source accuracy is an evaluation on the source dataset
        part = "source_eval" if dataset == source else "target"
        runs.add((part, dataset, method_of(trainer, tag), seed_of(seed)), parse_run(path, keyword))
    return runs


def discover_fewshot(root, keyword):
    """Runs of ROOT/<ds>/<T>/<cfg>_<K>shots[@<variant>]/seed<S>; the part is the shot count."""
    def expected_path(shots, dataset, m, seed):
        folder = f"{m.config}_{shots}shots" + (f"@{m.variant}" if m.variant else "")
        return os.path.join(root, dataset, m.trainer, folder, f"seed{seed}")

    runs = Runs(expected_path=expected_path)
    if not os.path.isdir(root):
        raise ResultsError(f"few-shot root not found: {root} (give e.g. output/few_shot)")
    pattern = [r"[^.].*", r".+", r".+_(\d+|all)shots(@.*)?", SEED_DIR.pattern]
    for path, (dataset, trainer, folder, seed) in walk(root, pattern, runs.strays):
        tag, variant = split_config_folder(folder)
        cfg, shots = split_shots_tag(tag)
        runs.add((shots, dataset, Method(trainer, cfg, variant), seed_of(seed)), parse_run(path, keyword))
    return runs
