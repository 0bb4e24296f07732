"""Protocol tables: seed statistics per method and dataset, and each protocol's rows and columns.

``build_table(TableOptions(...))`` reads a protocol's runs (``dpl.results.discovery``) and returns a
``Grid``: mean ± std (or the 95% interval) over seeds per cell, ``(n/m)`` where seeds are missing, the
average over datasets, and the harmonic mean of base and new accuracy for base-to-novel. Every
expected-but-absent run is listed with the folder where it belongs. ``dpl.results.render`` prints a grid.

==========  ==================================================================================
base2new    rows: datasets (+ Average); columns per method: Base / New / HM
longtail    as base2new, plus the base classes' many / medium / few group accuracies
xd / dg     rows: methods; columns: the source, each target and the targets' average
fewshot     rows: method x shots; columns: datasets (+ Average)
==========  ==================================================================================
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from .discovery import discover_base2new, discover_crossdomain, discover_fewshot, method_labels
from .errors import ResultsError
from .layout import BASE2NEW_DATASETS, DG_TARGETS, TRAINING_FREE_TRAINERS, XD_TARGETS
from .schema import LONG_TAIL_GROUPS
from .stats import harmonic_mean, mean_std

PROTOCOLS = ("base2new", "xd", "dg", "fewshot", "longtail")
PROTOCOL_TITLES = {
    "base2new": "Base-to-novel",
    "longtail": "Long-tail (base classes: many / medium / few)",
    "xd": "Cross-dataset",
    "dg": "Domain generalisation",
    "fewshot": "Few-shot",
}


@dataclass
class TableOptions:
    """What a protocol table is built from and how (``parse_results.py --protocol``'s options)."""

    protocol: str
    root: str
    keyword: str = "accuracy"
    ci95: bool = False  # the 95% interval instead of the std
    seeds: Optional[List[int]] = None  # seeds every run must have (None: those found)
    datasets: Optional[List[str]] = None  # rows / targets to show, in this order (None: those found)
    title: str = ""
    source: str = "imagenet"  # xd / dg


@dataclass
class Value:
    """A table cell: a mean with optional spread and a count of what it averages (n of expected)."""

    mean: float
    spread: Optional[float] = None
    n: Optional[int] = None
    expected: Optional[int] = None
    values: Optional[Dict[str, float]] = None  # seed -> value, for JSON/CSV

    def text(self):
        s = f"{self.mean:.2f}"
        if self.spread is not None:
            s += f" ± {self.spread:.2f}"
        if self.n is not None and self.expected is not None and self.n < self.expected:
            s += f" ({self.n}/{self.expected})"
        return s


@dataclass
class Grid:
    """A protocol table: index columns + value columns (method, metric), and what is missing."""

    title: str
    index_names: List[str]
    columns: List[Tuple[str, str]]
    rows: List[Tuple[tuple, List[Optional[Value]]]] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)
    spread_name: str = "std"


class Aggregator:
    """Seed statistics over a Runs table, recording each expected-but-absent run."""

    def __init__(self, runs, options):
        self.runs, self.ci95, self.forced_seeds, self.keyword = runs, options.ci95, options.seeds, options.keyword
        self.missing = []

    def expected_seeds(self, method):
        # A training-free model does not train: its one run (the runner makes the first seed's) stands for every seed.
        if self.forced_seeds and method.trainer not in TRAINING_FREE_TRAINERS:
            return list(self.forced_seeds)
        return self.runs.seeds(method)

    def seed_stat(self, parts, dataset, method, label):
        """Value over seeds of the first part in ``parts`` that has a run for each seed."""
        values = {}
        for seed in self.expected_seeds(method):
            run = self._first_run(parts, dataset, method, seed)
            if run is not None and run.ok:
                values[str(seed)] = run.metrics[self.keyword]
            else:
                self.missing.append(f"{label} seed{seed}: {self._why_missing(run, parts[0], dataset, method, seed)}")
        return self.to_value(values, len(self.expected_seeds(method)))

    def _why_missing(self, run, part, dataset, method, seed):
        if run is not None:
            return f"{run.problem} ({run.run_dir})"
        return f"run missing ({self.runs.expected_path(part, dataset, method, seed)})"

    def seed_groups(self, part, dataset, method):
        """Per long-tail group, a Value over the seeds whose results.json has that group."""
        per_group = {g: {} for g in LONG_TAIL_GROUPS}
        for seed in self.expected_seeds(method):
            run = self.runs.get(part, dataset, method, seed)
            for g, v in (run.groups if run is not None else {}).items():
                per_group[g][str(seed)] = v
        return {g: self.to_value(v, len(self.expected_seeds(method))) for g, v in per_group.items()}

    def _first_run(self, parts, dataset, method, seed):
        candidates = [self.runs.get(p, dataset, method, seed) for p in parts]
        present = [r for r in candidates if r is not None]
        return next((r for r in present if r.ok), present[0] if present else None)

    def to_value(self, values, expected):
        if not values:
            return None
        mean, spread = mean_std(list(values.values()), self.ci95)
        return Value(mean, spread, len(values), expected, values)


def average_value(cells, expected):
    """Mean over datasets of seed-averaged cells (None cells skipped, counted in n/expected)."""
    present = [c.mean for c in cells if c is not None]
    return Value(float(np.mean(present)), None, len(present), expected) if present else None


def hm_value(base, new):
    hm = harmonic_mean(base.mean if base else None, new.mean if new else None)
    return None if hm is None else Value(hm)


def order_datasets(names, canonical):
    """The protocol's datasets in their canonical order, then any others alphabetically."""
    known = [d for d in canonical if d in names]
    return known + sorted(set(names) - set(known))


def _finish(grid, agg, runs):
    grid.missing, grid.ignored = agg.missing, runs.strays
    return grid


def build_base2new(runs, options, with_groups=False):
    """Rows per dataset (+ Average), per method Base / New / HM (+ the long-tail groups)."""
    agg = Aggregator(runs, options)
    methods = runs.methods()
    labels = method_labels(methods)
    datasets = options.datasets or order_datasets(runs.datasets(), BASE2NEW_DATASETS)
    metrics = ["Base", "New", "HM"] + ([g.capitalize() for g in LONG_TAIL_GROUPS] if with_groups else [])
    title = options.title or PROTOCOL_TITLES["longtail" if with_groups else "base2new"]
    grid = Grid(title, ["Dataset"], [(labels[m], k) for m in methods for k in metrics])
    per_method = {m: {"Base": [], "New": []} for m in methods}
    for dataset in datasets:
        cells = []
        for m in methods:
            where = f"{labels[m]} {dataset}"
            base = agg.seed_stat(("base", "base_eval"), dataset, m, f"{where} base")
            new = agg.seed_stat(("new",), dataset, m, f"{where} new")
            per_method[m]["Base"].append(base)
            per_method[m]["New"].append(new)
            cells += [base, new, hm_value(base, new)]
            if with_groups:
                groups = agg.seed_groups("base", dataset, m)
                cells += [groups[g] for g in LONG_TAIL_GROUPS]
        grid.rows.append(((dataset,), cells))
    average = []
    for m in methods:
        base = average_value(per_method[m]["Base"], len(datasets))
        new = average_value(per_method[m]["New"], len(datasets))
        average += [base, new, hm_value(base, new)] + ([None] * len(LONG_TAIL_GROUPS) if with_groups else [])
    if len(datasets) > 1:
        grid.rows.append((("Average",), average))
    return _finish(grid, agg, runs)


def crossdomain_targets(runs, options):
    """The target columns: ``--datasets``, else the DG targets found (dg) or the other targets found (xd)."""
    found = runs.datasets("target")
    if options.datasets:
        return options.datasets
    if options.protocol == "dg":
        return [d for d in DG_TARGETS if d in found]
    return [d for d in order_datasets(found, XD_TARGETS) if d not in DG_TARGETS]


def build_crossdomain(runs, options):
    """Rows per method; columns: the source, each target and the targets' average."""
    agg = Aggregator(runs, options)
    methods = runs.methods()
    labels = method_labels(methods)
    targets = crossdomain_targets(runs, options)
    if not targets:
        canonical = DG_TARGETS if options.protocol == "dg" else XD_TARGETS
        raise ResultsError(f"no evaluation runs on {', '.join(canonical)} under {options.root}")
    columns = [("Source", options.source)] + [("Target", d) for d in targets] + [("Target", "Average")]
    grid = Grid(options.title or PROTOCOL_TITLES[options.protocol], ["Method"], columns)
    for m in methods:
        source = agg.seed_stat(("source", "source_eval"), options.source, m, f"{labels[m]} {options.source}")
        cells = [agg.seed_stat(("target",), d, m, f"{labels[m]} {d}") for d in targets]
        grid.rows.append(((labels[m],), [source] + cells + [average_value(cells, len(targets))]))
    return _finish(grid, agg, runs)


def build_fewshot(runs, options):
    """Rows per method and shot count; columns: datasets (+ Average)."""
    agg = Aggregator(runs, options)
    methods = runs.methods()
    labels = method_labels(methods)
    datasets = options.datasets or order_datasets(runs.datasets(), BASE2NEW_DATASETS)
    shots = sorted(runs.parts(), key=lambda k: (k == "all", k if k != "all" else 0))
    columns = [("Dataset", d) for d in datasets] + [("Dataset", "Average")]
    grid = Grid(options.title or PROTOCOL_TITLES["fewshot"], ["Method", "Shots"], columns)
    for m in methods:
        for k in shots:
            cells = [agg.seed_stat((k,), d, m, f"{labels[m]} {d} {k}-shot") for d in datasets]
            grid.rows.append(((labels[m], k), cells + [average_value(cells, len(datasets))]))
    return _finish(grid, agg, runs)


def build_table(options):
    """The ``Grid`` of ``options.protocol`` over the runs under ``options.root``."""
    root, keyword = options.root, options.keyword
    if options.protocol in ("base2new", "longtail"):
        grid = build_base2new(discover_base2new(root, keyword), options, with_groups=options.protocol == "longtail")
    elif options.protocol in ("xd", "dg"):
        grid = build_crossdomain(discover_crossdomain(root, keyword, options.source), options)
    else:
        grid = build_fewshot(discover_fewshot(root, keyword), options)
    grid.spread_name = "ci95" if options.ci95 else "std"
    return grid
