"""Seed summaries of one directory, to the digit what CoOp's ``parse_test_res.py`` prints.

``DIR/<seed folder>/...`` (or, with ``multi_exp``, ``DIR/<experiment>/<seed folder>/...``): each run's
value, then mean +- std (population std, or the 95% interval) over the seed folders, and with
``multi_exp`` the average over experiments. Folders without a result are listed as ``skipped:``.
"""
import os
from dataclasses import dataclass

import numpy as np

from .discovery import listdir_nohidden
from .errors import ResultsError
from .logs import TEST_END_SIGNAL, TRAIN_END_SIGNALS
from .runs import parse_run
from .stats import mean_std


@dataclass
class SummaryOptions:
    """How the seed folders are read and summarised (``parse_results.py``'s upstream-mode options)."""

    keyword: str = "accuracy"
    test_log: bool = False  # eval-only logs: the end signal is "=> result"
    use_json: bool = True  # False: read logs only
    ci95: bool = False  # the 95% interval instead of the std
    multi_exp: bool = False  # each sub-folder is an experiment of seed folders
    strict: bool = False  # a folder without a result is an error

    @property
    def end_signals(self):
        return (TEST_END_SIGNAL,) if self.test_log else TRAIN_END_SIGNALS


def summarize_directory(directory, options, out):
    """Print per-run values and the summary of one directory; return {keyword: mean} and problems."""
    keyword = options.keyword
    print(f"Parsing files in {directory}", file=out)
    results, problems = [], []
    for name in listdir_nohidden(directory):
        path = os.path.join(directory, name)
        if not os.path.isdir(path):
            problems.append(f"{path}: not a run folder (ignored)")
            continue
        run = parse_run(path, keyword, options.end_signals, use_json=options.use_json)
        if run.ok:
            results.append(run)
        else:
            problems.append(f"{path}: {run.problem}")
    for run in results:
        print(f"file: {run.source}. {keyword}: {run.metrics[keyword]:.2f}%. ", file=out)
    for problem in problems:
        print(f"skipped: {problem}", file=out)
    if not results:
        print(f"Nothing found in {directory}", file=out)
        return None, problems
    mean, spread = mean_std([run.metrics[keyword] for run in results], options.ci95)
    print("===", file=out)
    print(f"Summary of directory: {directory}", file=out)
    print(f"* {keyword}: {mean:.2f}% +- {spread:.2f}%", file=out)
    print("===", file=out)
    return {keyword: mean}, problems


def summarize_experiments(directory, options, out):
    """Each experiment folder of ``directory`` summarised, then the average over them."""
    summaries, problems = [], []
    for name in listdir_nohidden(directory):
        path = os.path.join(directory, name)
        if os.path.isdir(path):
            summary, found = summarize_directory(path, options, out)
            summaries.append(summary)
            problems += found
    complete = [s for s in summaries if s]
    if complete:
        print("Average performance", file=out)
        print(f"* {options.keyword}: {np.mean([s[options.keyword] for s in complete]):.2f}%", file=out)
    return summaries, problems


def summarize_seeds(directory, options, out):
    """Print the summary of ``directory`` to ``out``; a ``ResultsError`` when nothing was found (or, with
    ``strict``, when a folder has no result)."""
    if not directory or not os.path.isdir(directory):
        raise ResultsError(f"directory not found: {directory!r} (give the folder that holds the seed folders)")
    if options.multi_exp:
        summaries, problems = summarize_experiments(directory, options, out)
    else:
        summary, problems = summarize_directory(directory, options, out)
        summaries = [summary]
    if not any(summaries):
        raise ResultsError(f"nothing found in {directory}")
    if options.strict and problems:
        raise ResultsError(f"{len(problems)} run(s) without a result (--strict): " + "; ".join(problems))
