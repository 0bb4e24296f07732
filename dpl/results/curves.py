"""Training curves from a run folder's logs: every logged loss, ``lambda``, ``lr`` and ``acc`` per step.

Both Dassl generations write one progress line per ``TRAIN.PRINT_FREQ`` steps::

    epoch [3/10] batch [20/50] time 0.123 (0.130) data 0.001 (0.010) loss 1.2345 (1.3456) ... lr 1.9823e-03 eta 0:01:23
    epoch [3/10][20/50]\ttime 0.123 (0.130)\tdata 0.001 (0.010)\teta 0:01:23\tloss 1.2345 (1.3456)\tlr 1.982300e-03

Each metric is ``name value (average)``; the average is over the steps of the current epoch so far (a
``MetricMeter`` per epoch), so the one on an epoch's last logged line is the mean of the epoch's steps up to
that line: the whole epoch's when its last batch is logged (``num_batches`` a multiple of ``TRAIN.PRINT_FREQ``,
or fewer batches than it), and only the steps since a restart for a run resumed mid-epoch. An evaluation is the first ``* <keyword>:
X%`` line after ``Evaluate on the *<split>* set`` (older fork: ``Do evaluation on <split> set``), at the
epoch of the last progress line before it. A run's logs are read oldest first: upstream Dassl keeps
``log.txt`` and starts a ``log.txt-<timestamp>`` for each restart; our engine appends to ``log.txt``.
Either way a step logged twice keeps its latest line. Eval-only logs hold no training and are left out.
"""
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Tuple

from .discovery import SEED_DIR, may_hold_runs
from .logs import EVAL_ONLY_LINE, LOG_FILE, TIMESTAMPED_LOG, log_candidates, metric_regex
from .runs import JSON_KEY_ALIASES
from .schema import RESULTS_NAME, final_test_record, read_results

NOT_CURVES = ("time", "data", "eta")  # timings of a progress line, not training quantities
PROGRESS = re.compile(r"^epoch \[(\d+)/(\d+)\]\s*(?:batch )?\[(\d+)/(\d+)\]")
NUMBER = r"-?(?:\d[\d.]*(?:e[+-]?\d+)?|nan|inf)"
METRIC = re.compile(rf"(?<!\S)([A-Za-z_][\w.-]*) ({NUMBER})(?: \(({NUMBER})\))?")
EVAL_START = re.compile(r"^(?:Evaluate on the \*(\w+)\* set|Do evaluation on (\w+) set)$")

Point = Tuple[float, float]  # (x in epochs, value in the metric's unit: loss, percent, learning rate)


class ProgressRow(NamedTuple):
    """One progress line; ``metrics``: name -> (value at this step, epoch average so far or None)."""

    epoch: int  # 1-based
    max_epoch: int
    batch: int  # 1-based
    num_batches: int
    metrics: Dict[str, Tuple[float, Optional[float]]]


@dataclass
class TrainingCurves:
    """What a run folder's logs and results.json say about its training, ready to plot."""

    run_dir: str
    keyword: str = "accuracy"
    sources: List[str] = field(default_factory=list)  # the logs read, oldest first
    steps: Dict[str, List[Point]] = field(default_factory=dict)  # x = epoch - 1 + batch / num_batches
    epoch_means: Dict[str, List[Point]] = field(default_factory=dict)  # x = epoch (1-based)
    evaluations: Dict[str, List[Point]] = field(default_factory=dict)  # split -> (epoch, percent)
    final: Optional[Point] = None  # (epoch, percent) of results.json's final test
    num_batches: Optional[int] = None  # batches per epoch (of the last progress line)
    max_epoch: Optional[int] = None
    eval_only_logs: List[str] = field(default_factory=list)  # logs skipped as eval-only runs

    @property
    def has_progress(self):
        return bool(self.steps)


def parse_progress(line):
    """The ``ProgressRow`` of a progress line of either Dassl generation, else None."""
    head = PROGRESS.match(line)
    if head is None:
        return None
    epoch, max_epoch, batch, num_batches = (int(g) for g in head.groups())
    metrics = {}
    for name, value, average in METRIC.findall(line[head.end():]):
        if name not in NOT_CURVES:
            metrics[name] = (float(value), float(average) if average else None)
    return ProgressRow(epoch, max_epoch, batch, num_batches, metrics)


def chronological_logs(run_dir):
    """The run's logs oldest first: ``log.txt`` (upstream keeps the first one there), then the
    ``log.txt-<timestamp>`` files of the restarts in time order (the stamp sorts as text)."""
    names = log_candidates(run_dir)
    return [n for n in names if n == LOG_FILE] + sorted(n for n in names if n != LOG_FILE)


def scan_log(lines, regex, epoch=None):
    """(progress rows, evaluations as (split, epoch, value), epoch of the last progress line) of one log;
    ``epoch``: the last progress epoch of the logs before it (a restart's final test belongs there)."""
    rows, evaluations, split = [], [], None
    for line in lines:
        row = parse_progress(line)
        if row is not None:
            rows.append(row)
            epoch = row.epoch
            continue
        start = EVAL_START.match(line)
        if start:
            split = start.group(1) or start.group(2)
            continue
        match = regex.search(line) if split else None
        if match:
            if epoch is not None:
                evaluations.append((split, epoch, float(match.group(1))))
            split = None
    return rows, evaluations, epoch


def collect_steps(curves, rows):
    """Fill ``curves.steps`` / ``epoch_means`` from progress rows in log order; a step logged twice
    (a resumed run) keeps its latest row."""
    latest = {(row.epoch, row.batch): row for row in rows}
    last_of_epoch = {}
    for key in sorted(latest):
        row = latest[key]
        x = row.epoch - 1 + row.batch / row.num_batches
        for name, (value, _) in row.metrics.items():
            curves.steps.setdefault(name, []).append((x, value))
        last_of_epoch[row.epoch] = row
    for epoch, row in sorted(last_of_epoch.items()):
        for name, (_, average) in row.metrics.items():
            if average is not None:  # lr has no average
                curves.epoch_means.setdefault(name, []).append((float(epoch), average))
    if latest:
        last = latest[max(latest)]
        curves.num_batches, curves.max_epoch = last.num_batches, last.max_epoch


def collect_evaluations(curves, evaluations):
    """Fill ``curves.evaluations``: per split, one value per epoch (the latest: a rerun after a restart)."""
    by_split = {}
    for split, epoch, value in evaluations:
        by_split.setdefault(split, {})[epoch] = value
    curves.evaluations = {s: [(float(e), v) for e, v in sorted(points.items())] for s, points in by_split.items()}


def final_result(run_dir, keyword):
    """(epoch, value) of the final test recorded in results.json, or None (none, unreadable, mid-training)."""
    doc = read_results(os.path.join(run_dir, RESULTS_NAME))
    record = final_test_record(doc) if doc is not None else None
    if record is None:
        return None
    value = record.get(JSON_KEY_ALIASES.get(keyword, keyword))
    epoch = record.get("epoch", doc.get("epoch"))
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not isinstance(epoch, int):
        return None
    return float(epoch), float(value)


def read_training_curves(run_dir, keyword="accuracy"):
    """The ``TrainingCurves`` of one run folder (empty curves when it has no progress lines)."""
    curves = TrainingCurves(run_dir, keyword)
    regex, rows, evaluations, epoch = metric_regex(keyword), [], [], None
    for name in chronological_logs(run_dir):
        path = os.path.join(run_dir, name)
        with open(path, "r", errors="replace") as f:
            lines = [line.strip() for line in f]
        if EVAL_ONLY_LINE in lines:  # it evaluates a saved model: no training, its epoch is not ours to place
            curves.eval_only_logs.append(path)
            continue
        curves.sources.append(path)
        more_rows, more_evaluations, epoch = scan_log(lines, regex, epoch)
        rows += more_rows
        evaluations += more_evaluations
    collect_steps(curves, rows)
    collect_evaluations(curves, evaluations)
    curves.final = final_result(run_dir, keyword)
    return curves


# ----- which folders are runs -----------------------------------------------------------------------

def is_run_dir(path):
    """A run folder holds ``log.txt``, a ``log.txt-<timestamp>`` or ``results.json``."""
    names = os.listdir(path)
    return LOG_FILE in names or RESULTS_NAME in names or any(TIMESTAMPED_LOG.fullmatch(n) for n in names)


def find_runs(path, skip=()):
    """The run folders at or below ``path``, sorted; not below a run (its model folders), not in hidden
    or figure folders (``may_hold_runs``), nor in the folders of ``skip`` (real paths: an output folder elsewhere)."""
    runs = []
    for dirpath, dirnames, _ in os.walk(path):
        if is_run_dir(dirpath):
            runs.append(dirpath)
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames
                             if may_hold_runs(d) and os.path.realpath(os.path.join(dirpath, d)) not in skip)
    return runs


def seed_groups(runs):
    """{parent folder: its ``seed<N>`` runs ordered by N} for the runs named ``seed<N>``."""
    groups = {}
    for run in runs:
        match = SEED_DIR.fullmatch(os.path.basename(run))
        if match:
            groups.setdefault(os.path.dirname(run), []).append((int(match.group(1)), run))
    return {parent: [run for _, run in sorted(members)] for parent, members in groups.items()}
