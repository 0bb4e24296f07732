"""Reading results from ``log.txt``: Dassl's two log generations and restarted runs.

A value is the last ``* <keyword>: <number>%`` line after the end signal: ``Finish training`` (Dassl
0.6.x) or ``Finished training`` (the older fork) for training runs, ``=> result`` for eval-only runs
(recognised by ``eval_only: True`` in the printed arguments). Upstream Dassl starts a
``log.txt-<timestamp>`` file when a run is restarted; those are read newest first after ``log.txt``.
"""
import os
import re

LOG_FILE = "log.txt"
TRAIN_END_SIGNALS = ("Finish training", "Finished training")  # Dassl 0.6.x / the older fork
TEST_END_SIGNAL = "=> result"
EVAL_ONLY_LINE = "eval_only: True"  # printed by print_args() for --eval-only runs
TIMESTAMPED_LOG = re.compile(r"log\.txt-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}")


def log_candidates(run_dir):
    """``log.txt`` first, then ``log.txt-<timestamp>`` files, newest first."""
    names = [LOG_FILE] if os.path.isfile(os.path.join(run_dir, LOG_FILE)) else []
    stamped = [n for n in os.listdir(run_dir) if TIMESTAMPED_LOG.fullmatch(n)]
    return names + sorted(stamped, reverse=True)


def metric_regex(keyword):
    return re.compile(rf"\* {re.escape(keyword)}: ([\.\deE+-]+)%")


def parse_log(path, keyword="accuracy", end_signals=None):
    """The last ``* <keyword>: X%`` value after an end-signal line, or None.

    ``end_signals=None`` chooses per log: ``=> result`` for eval-only runs, else the training signals.
    """
    with open(path, "r", errors="replace") as f:
        lines = [line.strip() for line in f]
    if end_signals is None:
        end_signals = (TEST_END_SIGNAL,) if EVAL_ONLY_LINE in lines else TRAIN_END_SIGNALS
    regex = metric_regex(keyword)
    value, armed = None, False
    for line in lines:
        if line in end_signals:
            armed = True
        match = regex.search(line)
        if armed and match:
            value = float(match.group(1))
    return value
