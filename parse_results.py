#!/usr/bin/env python
"""Read run results and print seed summaries or protocol tables.

Upstream mode (the CLI of CoOp's ``parse_test_res.py``, same output)::

    python parse_results.py output/base2new/train_base/dtd/shots_16/CoOp/vit_b16_ep50_ctxv1
    python parse_results.py DIR --test-log          # eval-only runs (end signal "=> result")
    python parse_results.py DIR --multi-exp --ci95  # DIR/<experiment>/<seed>/...

Protocol tables (trainers side by side, mean ± std over seeds, missing seeds listed)::

    python parse_results.py --protocol base2new output/base2new            # Base / New / HM
    python parse_results.py --protocol xd output                             # ImageNet -> 10 datasets
    python parse_results.py --protocol dg output                             # ImageNet -> V2/Sketch/A/R
    python parse_results.py --protocol fewshot output/few_shot
    python parse_results.py --protocol longtail output/long_tail/imb10       # + many/medium/few groups
    ... --format {text,markdown,csv,json} --plot DIR --strict --seeds 1 2 3

Where a number comes from, per run folder: ``results.json`` (written by every ``test()`` of this code
base) when it holds a test-split result; else ``log.txt``; else the newest ``log.txt-<timestamp>``
that holds a result (upstream Dassl starts such a file when a run is restarted). In a log, the value
is the last ``* <keyword>: <number>%`` line after the end signal (``Finish training`` or Dassl's older
``Finished training``; ``=> result`` with ``--test-log``). Protocol tables pick the end signal per log:
eval-only runs (``eval_only: True`` in the printed arguments) use ``=> result``.

Layouts read by the tables (what the scripts under ``scripts/`` write)::

    base2new / longtail  ROOT/{train_base,test_base,test_new}/<dataset>/shots_<K>/<Trainer>/<cfg>/seed<S>
    xd / dg              ROOT/<source>/<Trainer>/<tag>/seed<S>  (training run; tag = <cfg>_16shots)
                         ROOT/evaluation/<Trainer>/<tag>/<dataset>/seed<S>
    fewshot              ROOT/<dataset>/<Trainer>/<cfg>_<K>shots/seed<S>

``python parse_results.py --run-status RUN_DIR`` prints where a run's result is (exit 0) or why
there is none (exit 3). Config folders named ``<cfg>@<variant>`` (a run whose options changed the
experiment, or a ``TAG``) and base-to-novel runs with other than 16 shots are rows of their own:
``DropoutPrompt [IMPORTANCE=uniform]``, ``CoOp [shots_4]``.
"""
import argparse
import csv
import io
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from dpl.results.layout import (BASE2NEW_DATASETS, DG_TARGETS, EVALUATION_DIR, XD_TARGETS, split_config_folder,
                                split_shots_tag)
from dpl.results.logs import TEST_END_SIGNAL, TRAIN_END_SIGNALS
from dpl.results.runs import RunResult, parse_run
from dpl.results.schema import LONG_TAIL_GROUPS

SEED_DIR = re.compile(r"seed(\d+)")



class ParseError(Exception):
    """A problem the user must fix; printed as one line by main()."""


# ----------------------------------------------------------------------------------------------
# Parsing one run
# ----------------------------------------------------------------------------------------------


def listdir_nohidden(path):
    return sorted(name for name in os.listdir(path) if not name.startswith("."))


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------


def mean_std(values, ci95=False):
    """Mean and population std (np.std, ddof=0), or the 95% interval 1.96·std/√n."""
    values = np.asarray(values, dtype=np.float64)
    std = float(np.std(values))
    if ci95:
        std = 1.96 * std / math.sqrt(len(values))
    return float(np.mean(values)), std


def harmonic_mean(base, new):
    """2·B·N/(B+N); None when either is missing; 0 when both are 0."""
    if base is None or new is None:
        return None
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


# ----------------------------------------------------------------------------------------------
# Upstream mode: seeds of one directory (CoOp's parse_test_res.py output)
# ----------------------------------------------------------------------------------------------


def upstream_end_signals(args):
    return (TEST_END_SIGNAL,) if args.test_log else TRAIN_END_SIGNALS


def summarize_directory(directory, args, out):
    """Print per-run values and the summary of one directory; return {keyword: mean} and problems."""
    print(f"Parsing files in {directory}", file=out)
    results, problems = [], []
    for name in listdir_nohidden(directory):
        path = os.path.join(directory, name)
        if not os.path.isdir(path):
            problems.append(f"{path}: not a run folder (ignored)")
            continue
        run = parse_run(path, args.keyword, upstream_end_signals(args), use_json=not args.no_json)
        if run.ok:
            results.append(run)
        else:
            problems.append(f"{path}: {run.problem}")
    for run in results:
        print(f"file: {run.source}. {args.keyword}: {run.metrics[args.keyword]:.2f}%. ", file=out)
    for problem in problems:
        print(f"skipped: {problem}", file=out)
    if not results:
        print(f"Nothing found in {directory}", file=out)
        return None, problems
    mean, spread = mean_std([run.metrics[args.keyword] for run in results], args.ci95)
    print("===", file=out)
    print(f"Summary of directory: {directory}", file=out)
    print(f"* {args.keyword}: {mean:.2f}% +- {spread:.2f}%", file=out)
    print("===", file=out)
    return {args.keyword: mean}, problems


def run_upstream(args, out):
    directory = args.directory
    if not directory or not os.path.isdir(directory):
        raise ParseError(f"directory not found: {directory!r} (give the folder that holds the seed folders)")
    if not args.multi_exp:
        summary, problems = summarize_directory(directory, args, out)
        return finish_upstream([summary], problems, args)
    summaries, problems = [], []
    for name in listdir_nohidden(directory):
        path = os.path.join(directory, name)
        if os.path.isdir(path):
            summary, found = summarize_directory(path, args, out)
            summaries.append(summary)
            problems += found
    complete = [s for s in summaries if s]
    if complete:
        print("Average performance", file=out)
        print(f"* {args.keyword}: {np.mean([s[args.keyword] for s in complete]):.2f}%", file=out)
    return finish_upstream(summaries, problems, args)


def finish_upstream(summaries, problems, args):
    if not any(summaries):
        raise ParseError(f"nothing found in {args.directory}")
    if args.strict and problems:
        raise ParseError(f"{len(problems)} run(s) without a result (--strict): " + "; ".join(problems))
    return 0


# ----------------------------------------------------------------------------------------------
# Discovery for protocol tables
# ----------------------------------------------------------------------------------------------


TRAINING_FREE_TRAINERS = ("ZeroshotCLIP", "ZeroshotCLIP2")


@dataclass(frozen=True)
class Method:
    """One column group of a table: a trainer with its config, the variant of its config folder
    (``<cfg>@<variant>``: an ablation or a tagged run) and, for base-to-novel, a shot count other
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
    """[(path, names)] for every root/n1/.../nk whose names fully match ``patterns``; other entries -> strays."""
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


def order_datasets(names, canonical):
    known = [d for d in canonical if d in names]
    return known + sorted(set(names) - set(known))


@dataclass
class Runs:
    """Parsed runs keyed by (part, dataset, method, seed); ``part`` is e.g. 'base', 'new', 'target'."""

    table: Dict[Tuple[str, str, Method, int], RunResult] = field(default_factory=dict)
    strays: List[str] = field(default_factory=list)
    # (part, dataset, method, seed) -> the folder where that run belongs (named in "missing" lines)
    expected_path: Callable[[str, str, Method, int], str] = lambda *key: "?"

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


def discover_base2new(root, keyword):
    """Runs of ROOT/{train_base,test_base,test_new}/<ds>/shots_K/<T>/<cfg>/seed<S>."""
    parts = {"train_base": "base", "test_base": "base_eval", "test_new": "new"}
    folders = {part: folder for folder, part in parts.items()}
    runs = Runs(expected_path=lambda part, dataset, m, seed: os.path.join(
        root, folders[part], dataset, m.shots or "shots_16", m.trainer, m.folder, f"seed{seed}"))
    if not any(os.path.isdir(os.path.join(root, d)) for d in parts):
        raise ParseError(f"no train_base/ or test_new/ folder under {root} (give e.g. output/base2new)")
    for folder, part in parts.items():
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
        raise ParseError(f"no {EVALUATION_DIR}/ folder under {root} (give the output root, e.g. output)")
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
        raise ParseError(f"few-shot root not found: {root} (give e.g. output/few_shot)")
    pattern = [r"[^.].*", r".+", r".+_(\d+|all)shots(@.*)?", SEED_DIR.pattern]
    for path, (dataset, trainer, folder, seed) in walk(root, pattern, runs.strays):
        tag, variant = split_config_folder(folder)
        cfg, shots = split_shots_tag(tag)
        runs.add((shots, dataset, Method(trainer, cfg, variant), seed_of(seed)), parse_run(path, keyword))
    return runs


# ----------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------


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

    def __init__(self, runs, args):
        self.runs, self.ci95, self.forced_seeds, self.keyword = runs, args.ci95, args.seeds, args.keyword
        self.missing = []

    def expected_seeds(self, method):
        # Zero-shot CLIP does not train: its one run (the runner makes the first seed's) stands for every seed.
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


def build_base2new(runs, args, with_groups=False):
    agg = Aggregator(runs, args)
    methods = runs.methods()
    labels = method_labels(methods)
    datasets = args.datasets or order_datasets(runs.datasets(), BASE2NEW_DATASETS)
    metrics = ["Base", "New", "HM"] + ([g.capitalize() for g in LONG_TAIL_GROUPS] if with_groups else [])
    grid = Grid(args.title or "Base-to-novel", ["Dataset"], [(labels[m], k) for m in methods for k in metrics])
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
    grid.missing, grid.ignored = agg.missing, runs.strays
    return grid


def build_crossdomain(runs, args, targets_canonical, title):
    agg = Aggregator(runs, args)
    methods = runs.methods()
    labels = method_labels(methods)
    found = runs.datasets("target")
    if args.datasets:
        targets = args.datasets
    elif targets_canonical is DG_TARGETS:
        targets = [d for d in DG_TARGETS if d in found]
    else:
        targets = [d for d in order_datasets(found, XD_TARGETS) if d not in DG_TARGETS]
    if not targets:
        raise ParseError(f"no evaluation runs on {', '.join(targets_canonical)} under {args.directory}")
    columns = [("Source", args.source)] + [("Target", d) for d in targets] + [("Target", "Average")]
    grid = Grid(args.title or title, ["Method"], columns)
    for m in methods:
        source = agg.seed_stat(("source", "source_eval"), args.source, m, f"{labels[m]} {args.source}")
        cells = [agg.seed_stat(("target",), d, m, f"{labels[m]} {d}") for d in targets]
        grid.rows.append(((labels[m],), [source] + cells + [average_value(cells, len(targets))]))
    grid.missing, grid.ignored = agg.missing, runs.strays
    return grid


def build_fewshot(runs, args):
    agg = Aggregator(runs, args)
    methods = runs.methods()
    labels = method_labels(methods)
    datasets = args.datasets or order_datasets(runs.datasets(), BASE2NEW_DATASETS)
    shots = sorted({k[0] for k in runs.table}, key=lambda k: (k == "all", k if k != "all" else 0))
    columns = [("Dataset", d) for d in datasets] + [("Dataset", "Average")]
    grid = Grid(args.title or "Few-shot", ["Method", "Shots"], columns)
    for m in methods:
        for k in shots:
            cells = [agg.seed_stat((k,), d, m, f"{labels[m]} {d} {k}-shot") for d in datasets]
            grid.rows.append(((labels[m], k), cells + [average_value(cells, len(datasets))]))
    grid.missing, grid.ignored = agg.missing, runs.strays
    return grid


def build_grid(args):
    root = args.directory
    if args.protocol in ("base2new", "longtail"):
        runs = discover_base2new(root, args.keyword)
        grid = build_base2new(runs, args, with_groups=args.protocol == "longtail")
        if args.protocol == "longtail":
            grid.title = args.title or "Long-tail (base classes: many / medium / few)"
        return grid
    if args.protocol in ("xd", "dg"):
        runs = discover_crossdomain(root, args.keyword, args.source)
        canonical = XD_TARGETS if args.protocol == "xd" else DG_TARGETS
        title = "Cross-dataset" if args.protocol == "xd" else "Domain generalisation"
        return build_crossdomain(runs, args, canonical, title)
    return build_fewshot(discover_fewshot(root, args.keyword), args)


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def column_header(column):
    group, name = column
    return f"{group} {name}".strip()


def render_table(grid, fmt):
    from tabulate import tabulate

    headers = grid.index_names + [column_header(c) for c in grid.columns]
    body = [list(index) + [c.text() if c else "-" for c in cells] for index, cells in grid.rows]
    table = tabulate(body, headers=headers, tablefmt="pipe" if fmt == "markdown" else "simple",
                     disable_numparse=True)
    heading = f"## {grid.title}" if fmt == "markdown" else grid.title
    lines = [heading, "", f"mean ± {grid.spread_name} over seeds; (n/m): n of m expected present", "", table]
    for label, items in (("Missing", grid.missing), ("Ignored (not a run folder)", grid.ignored)):
        if items:
            lines += ["", f"{label}:"] + [f"- {item}" for item in items]
    return "\n".join(lines) + "\n"


def render_csv(grid):
    """Long form: one line per (row, column) cell."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(grid.index_names + ["group", "column", "mean", grid.spread_name, "n", "expected", "values"])
    for index, cells in grid.rows:
        for (group, name), cell in zip(grid.columns, cells):
            if cell is None:
                writer.writerow(list(index) + [group, name, "", "", "", "", ""])
                continue
            values = ";".join(f"seed{s}={v}" for s, v in (cell.values or {}).items())
            writer.writerow(list(index) + [group, name, repr(cell.mean), _blank(cell.spread), _blank(cell.n),
                                           _blank(cell.expected), values])
    return buf.getvalue()


def _blank(x):
    return "" if x is None else x


def render_json(grid):
    rows = []
    for index, cells in grid.rows:
        row = dict(zip(grid.index_names, index))
        row["cells"] = [
            dict(group=g, column=c, **({} if cell is None else {
                "mean": cell.mean, grid.spread_name: cell.spread, "n": cell.n, "expected": cell.expected,
                "values": cell.values}))
            for (g, c), cell in zip(grid.columns, cells)
        ]
        rows.append(row)
    doc = {"title": grid.title, "spread": grid.spread_name, "rows": rows, "missing": grid.missing,
           "ignored": grid.ignored}
    return json.dumps(doc, indent=2) + "\n"


def render(grid, fmt):
    if fmt == "csv":
        return render_csv(grid)
    if fmt == "json":
        return render_json(grid)
    return render_table(grid, fmt)


# ----------------------------------------------------------------------------------------------
# Plots (matplotlib is an optional extra: pip install -e .[plot])
# ----------------------------------------------------------------------------------------------


def import_pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ParseError("--plot needs matplotlib: pip install matplotlib (or pip install -e .[plot])") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def safe_name(text):
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")


def plot_bars(grid, out_dir, plt):
    """One PNG per dataset row: bars of each method's Base / New / HM."""
    written = []
    groups = list(dict.fromkeys(g for g, _ in grid.columns))
    metrics = ["Base", "New", "HM"]
    for (dataset,), cells in grid.rows:
        by_col = dict(zip(grid.columns, cells))
        fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(groups)), 3.5))
        width = 0.8 / len(metrics)
        for i, metric in enumerate(metrics):
            heights = [by_col[(g, metric)].mean if by_col.get((g, metric)) else 0.0 for g in groups]
            ax.bar([x + (i - 1) * width for x in range(len(groups))], heights, width, label=metric)
        ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
        ax.set_ylim(0, 125)  # headroom for the legend above the bars
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{grid.title}: {dataset}")
        ax.legend(loc="upper center", ncol=len(metrics))
        written.append(save_figure(fig, out_dir, f"base2new_{dataset}.png", plt))
    return written


def plot_curves(grid, out_dir, plt):
    """One PNG per dataset column: accuracy against shots, one line per method."""
    written = []
    methods = list(dict.fromkeys(index[0] for index, _ in grid.rows))
    for col_idx, (_, dataset) in enumerate(grid.columns):
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        for method in methods:
            points = [(index[1], cells[col_idx].mean) for index, cells in grid.rows
                      if index[0] == method and cells[col_idx] is not None]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("shots per class")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{grid.title}: {dataset}")
        ax.legend()
        written.append(save_figure(fig, out_dir, f"few_shot_{dataset}.png", plt))
    return written


def save_figure(fig, out_dir, name, plt):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, safe_name(name))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_plots(grid, protocol, out_dir, plt):
    if protocol == "fewshot":
        return plot_curves(grid, out_dir, plt)
    return plot_bars(grid, out_dir, plt)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", nargs="?", default="", help="folder of seed folders (upstream mode) or protocol root")
    p.add_argument("--root", default="", help="protocol root (same as the positional directory)")
    p.add_argument("--ci95", action="store_true", help="95%% confidence interval instead of std")
    p.add_argument("--test-log", action="store_true", help="logs of eval-only runs: end signal '=> result'")
    p.add_argument("--multi-exp", action="store_true", help="each sub-folder is an experiment of seed folders")
    p.add_argument("--keyword", default="accuracy", help="metric name in '* <keyword>: X%%' (default accuracy)")
    p.add_argument("--no-json", action="store_true", help="ignore results.json, read logs only")
    p.add_argument("--strict", action="store_true", help="missing seeds/runs are an error (exit 1)")
    p.add_argument("--protocol", choices=["base2new", "xd", "dg", "fewshot", "longtail"],
                   help="print a protocol table instead of one directory's seed summary")
    p.add_argument("--format", choices=["text", "markdown", "csv", "json"], default="text")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds every run must have (default: those found)")
    p.add_argument("--datasets", nargs="+", help="datasets (rows / targets) to show, in this order")
    p.add_argument("--source", default="imagenet", help="source dataset for --protocol xd/dg")
    p.add_argument("--title", default="", help="table title")
    p.add_argument("--plot", metavar="DIR", help="also write PNG charts to DIR (needs matplotlib)")
    p.add_argument("--run-status", metavar="RUN_DIR", help="print where RUN_DIR's result is; exit 3 if none")
    return p


def run_status(run_dir, args, out):
    """For scripts: exit 0 and the source file when the run has a final result, else 3 and the reason."""
    end_signals = (TEST_END_SIGNAL,) if args.test_log else None
    run = parse_run(run_dir, args.keyword, end_signals, use_json=not args.no_json)
    if run.ok:
        print(f"{run.source}: {args.keyword} {run.metrics[args.keyword]:.2f}%", file=out)
        return 0
    print(run.problem, file=out)
    return 3


def run_protocol(args, out):
    if not args.directory or not os.path.isdir(args.directory):
        raise ParseError(f"protocol root not found: {args.directory!r}")
    if args.plot and args.protocol not in ("base2new", "longtail", "fewshot"):
        raise ParseError(f"--plot supports --protocol base2new, longtail and fewshot, not {args.protocol}")
    plt = import_pyplot() if args.plot else None  # fail before any work when matplotlib is missing
    grid = build_grid(args)
    grid.spread_name = "ci95" if args.ci95 else "std"
    if args.strict and grid.missing:
        raise ParseError(f"{len(grid.missing)} missing run(s) (--strict): " + "; ".join(grid.missing))
    out.write(render(grid, args.format))
    if args.format == "csv" and grid.missing:
        print(f"warning: {len(grid.missing)} missing run(s): " + "; ".join(grid.missing), file=sys.stderr)
    if args.plot:
        for path in write_plots(grid, args.protocol, args.plot, plt):
            print(f"plot: {path}", file=sys.stderr)
    return 0


def main(argv=None, out=None):
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    args.directory = args.directory or args.root
    try:
        if args.run_status:
            return run_status(args.run_status, args, out)
        if args.protocol:
            return run_protocol(args, out)
        return run_upstream(args, out)
    except ParseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
