"""What a run folder holds: its result (for tables) and its state (for skip / resume decisions).

``parse_run(dir)`` reads the result of one folder: ``results.json`` when it records the final
test-split result, else ``log.txt``, else the newest ``log.txt-<timestamp>`` that holds one.

``read_state(dir)`` is the one definition of a finished run (``RunState.finished``: the engine's
``TRAIN.IF_EXISTS``, the protocol scripts, ``scripts/run_protocol.py`` and ``parse_results.py
--run-status`` all ask it). ``decide(state, identity)`` is the one place that says whether a requested
run is new, continues, is already done, or collides with another experiment in the same folder:

=============  ============================================================================
``finished``   the folder holds the final result of the requested experiment (same identity)
``resume``     it holds checkpoints of the requested experiment, not yet finished
``fresh``      nothing to reuse: no result and no checkpoint (a ``log.txt`` of a run that
               failed before its first checkpoint does not count)
``conflict``   it holds a result or checkpoints of *another* experiment: never reused
=============  ============================================================================

Folders written before runs recorded their identity are judged as before (by their result and
checkpoints alone) and the decision carries a one-line note saying so.
"""
import glob
import os
from dataclasses import dataclass, field
from typing import Dict, Optional

from . import identity as run_identity
from .layout import CHECKPOINT_POINTER, latest_checkpoint_path
from .logs import TEST_END_SIGNAL, TRAIN_END_SIGNALS, log_candidates, parse_log
from .schema import LONG_TAIL_GROUPS, RESULTS_NAME, final_test_record, read_results, recorded_identity

JSON_KEY_ALIASES = {"error": "error_rate"}  # log keyword -> results.json key


# ----- results (tables) ------------------------------------------------------------------------------

@dataclass
class RunResult:
    """What one run folder yields: metric values (percent) and the file they came from."""

    run_dir: str
    source: Optional[str] = None
    metrics: Dict[str, float] = field(default_factory=dict)
    groups: Dict[str, float] = field(default_factory=dict)
    problem: Optional[str] = None

    @property
    def ok(self):
        return self.source is not None


def read_results_json(path, keyword):
    """(value, groups) from a results.json whose final test-split result is recorded, else (None, {})."""
    doc = read_results(path)
    record = final_test_record(doc) if doc is not None else None
    if record is None:
        return None, {}
    value = record.get(JSON_KEY_ALIASES.get(keyword, keyword))
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None, {}
    return float(value), group_accuracies(record) or group_accuracies(doc)


def group_accuracies(record):
    """Long-tail many/medium/few accuracies (percent) of a results.json record ({} when absent).

    Read from ``group_accuracy`` ({group: percent}) or, failing that, from ``per_class`` rows tagged
    with their ``group`` (accuracy over the test images of the group's classes).
    """
    groups = record.get("group_accuracy")
    if isinstance(groups, dict):
        return {g: float(groups[g]) for g in LONG_TAIL_GROUPS if isinstance(groups.get(g), (int, float))}
    counts = {}  # group -> [correct, total]
    for row in record.get("per_class") or []:
        if isinstance(row, dict) and row.get("group") in LONG_TAIL_GROUPS and row.get("total"):
            c = counts.setdefault(row["group"], [0, 0])
            c[0] += row.get("correct", 0)
            c[1] += row["total"]
    return {g: 100.0 * counts[g][0] / counts[g][1] for g in LONG_TAIL_GROUPS if g in counts}


def parse_run(run_dir, keyword="accuracy", end_signals=None, use_json=True):
    """The result of one run folder, preferring results.json, then log.txt, then timestamped logs."""
    result = RunResult(run_dir)
    if not os.path.isdir(run_dir):
        result.problem = "run folder missing"
        return result
    json_path = os.path.join(run_dir, RESULTS_NAME)
    if use_json and os.path.isfile(json_path):
        value, groups = read_results_json(json_path, keyword)
        if value is not None:
            result.source, result.metrics[keyword], result.groups = json_path, value, groups
            return result
    logs = log_candidates(run_dir)
    for name in logs:
        value = parse_log(os.path.join(run_dir, name), keyword, end_signals)
        if value is not None:
            result.source, result.metrics[keyword] = os.path.join(run_dir, name), value
            return result
    result.problem = describe_missing(logs, keyword, end_signals, unusable_json=use_json and os.path.isfile(json_path))
    return result


def describe_missing(logs, keyword, end_signals, unusable_json=False):
    """Why a run folder has no result; ``unusable_json``: a results.json exists but holds no final result."""
    if unusable_json:  # e.g. truncated by a full disk, or written by a test mid-training
        prefix = f"{RESULTS_NAME} is unreadable or holds no final {keyword} (rerun the run's script to finish it)"
        if not logs:
            return f"{prefix}; no log.txt"
        prefix += "; "
    elif not logs:
        return "no results.json and no log.txt (not run yet?)"
    else:
        prefix = ""
    signals = " / ".join(f"'{s}'" for s in (end_signals or TRAIN_END_SIGNALS))
    hint = "" if end_signals == (TEST_END_SIGNAL,) else "; eval-only logs need --test-log"
    return f"{prefix}no '* {keyword}: X%' line after {signals} in {', '.join(logs)} (unfinished?{hint})"


# ----- state (skip / resume decisions) --------------------------------------------------------------

@dataclass
class RunState:
    """What a run folder holds, as far as skip / resume decisions go."""

    run_dir: str
    finished: bool = False
    identity: Optional[dict] = None  # recorded by results.json or the latest checkpoint; None: none recorded
    result: Optional[str] = None  # where the final result is, e.g. "<dir>/results.json: accuracy 61.25%"
    checkpoint: Optional[str] = None  # the latest checkpoint of an unfinished run
    epoch: Optional[int] = None  # epochs done: behind that checkpoint, or those a finished results.json records
    batch: int = 0  # batches of the next epoch done behind it (a mid-epoch checkpoint)

    @property
    def has_run(self):
        return self.finished or self.checkpoint is not None

    def describe(self):
        if self.finished:
            return f"a finished run ({self.result.replace(self.run_dir + os.sep, '')})"
        if self.checkpoint is not None:
            return f"an unfinished run ({self.progress()})"
        return "no run"

    def progress(self):
        where = f"last checkpoint after epoch {self.epoch}"
        if self.batch:
            where = f"last checkpoint in epoch {self.epoch + 1}, after batch {self.batch}"
        return where


def latest_checkpoints(run_dir):
    """The latest checkpoint file of each model folder of ``run_dir`` (those that exist), sorted."""
    pointers = sorted(glob.glob(os.path.join(glob.escape(run_dir), "*", CHECKPOINT_POINTER)))
    paths = [latest_checkpoint_path(os.path.dirname(pointer)) for pointer in pointers]
    return [path for path in paths if path and os.path.isfile(path)]


def read_checkpoint(path):
    """A checkpoint file's contents (torch is imported only when there is a checkpoint to read)."""
    from dpl.utils.torchtools import load_checkpoint

    return load_checkpoint(path)


def _trained_without_test(checkpoint):
    """True for the final checkpoint of a run configured with ``TEST.NO_TEST``: it has no result to wait for."""
    config = checkpoint.get("config") or {}
    epochs = (config.get("OPTIM") or {}).get("MAX_EPOCH")
    no_test = (config.get("TEST") or {}).get("NO_TEST")
    return bool(no_test) and epochs is not None and checkpoint.get("epoch", 0) >= epochs and not checkpoint.get("batch")


def _written_by_final_test(doc):
    """True when a results.json document was written by a run's final test (after training, or an
    eval-only run): a test during training writes ``finished: false``."""
    return bool(doc) and doc.get("finished") is True


def read_state(run_dir, keyword="accuracy"):
    """The ``RunState`` of ``run_dir`` (an empty state when the folder does not exist).

    The one definition of a finished run: its results.json was written by the final test; or, for a
    folder of older code (no run identity recorded), a log holds the final result; or its last
    checkpoint ends a run configured with ``TEST.NO_TEST`` (no result to wait for).
    """
    state = RunState(run_dir)
    if not os.path.isdir(run_dir):
        return state
    json_path = os.path.join(run_dir, RESULTS_NAME)
    doc = read_results(json_path)
    if _written_by_final_test(doc):
        state.finished, state.identity = True, recorded_identity(doc)[1]
        state.epoch = doc["epoch"] if isinstance(doc.get("epoch"), int) else None
        record = final_test_record(doc)
        value = record.get(JSON_KEY_ALIASES.get(keyword, keyword)) if record is not None else None
        state.result = f"{json_path}: {keyword} {value:.2f}%" if isinstance(value, (int, float)) else json_path
        return state
    if doc is None or recorded_identity(doc)[1] is None:  # a folder of older code: its logs may hold the result
        result = parse_run(run_dir, keyword, use_json=False)
        if result.ok:
            state.finished, state.result = True, _result_text(result, keyword)
            return state
    checkpoints = latest_checkpoints(run_dir)
    if checkpoints:
        checkpoint = read_checkpoint(checkpoints[0])
        identity = checkpoint.get("run_identity")
        state.identity = identity if isinstance(identity, dict) else None
        state.checkpoint, state.epoch, state.batch = checkpoints[0], checkpoint.get("epoch") or 0, checkpoint.get("batch", 0)
        if _trained_without_test(checkpoint):
            state.finished, state.result = True, f"{checkpoints[0]}: trained, no test (TEST.NO_TEST)"
    return state


def run_status(run_dir, keyword="accuracy"):
    """``(finished, line)`` for ``parse_results.py --run-status``: where a finished run's result is, or
    why the run is not finished (its progress, what its logs lack, or that its checkpoint is unreadable)."""
    try:
        state = read_state(run_dir, keyword)
    except OSError as exc:  # an unreadable checkpoint (``UnreadableFileError``): the run cannot be resumed as is
        return False, f"{run_dir}: {exc}"
    if state.finished:
        return True, state.result
    if state.checkpoint is not None:
        return False, f"{run_dir}: {state.describe()}"
    reason = parse_run(run_dir, keyword).problem
    return False, reason or f"{os.path.join(run_dir, RESULTS_NAME)} does not record a finished run"


def model_reference(model_dir, epoch=None):
    """What an evaluation of the model in ``model_dir`` at ``epoch`` (None: its best checkpoint) evaluates:
    the run id the folder records (results.json or its checkpoint), else the folder itself."""
    recorded = read_state(model_dir).identity
    where = {"run": run_identity.run_id(recorded)} if recorded else {"dir": os.path.realpath(model_dir)}
    return {**where, "epoch": "best" if epoch is None else int(epoch)}


def _result_text(result, keyword):
    if not result.ok:
        return None
    return f"{result.source}: {keyword} {result.metrics[keyword]:.2f}%"


@dataclass
class Decision:
    """What to do with a requested run in a folder (see the module docstring); ``note``: one line or ""."""

    action: str
    state: RunState
    note: str = ""


def decide(state, identity):
    """The ``Decision`` for running ``identity`` in the folder whose state is ``state``."""
    if not state.has_run:
        return Decision("fresh", state)
    if state.identity is None:
        what = "finished" if state.finished else "resumable"
        note = (f"Note: {state.run_dir} records no run identity (written before runs recorded one): "
                f"judged by its folder alone as {what}")
        return Decision("finished" if state.finished else "resume", state, note)
    if state.identity != identity:
        return Decision("conflict", state)
    return Decision("finished" if state.finished else "resume", state)


def conflict_message(decision, identity, remedy):
    """One line: the folder holds another experiment; both identities, how they differ, what to do."""
    state = decision.state
    recorded = run_identity.run_id(state.identity)
    diff = "; ".join(run_identity.differences(state.identity, identity))
    return (f"{state.run_dir} holds {state.describe()} of another experiment: it is run {recorded}, this command "
            f"asks for run {run_identity.run_id(identity)} ({diff}). It is never reused for another experiment: "
            f"{remedy}")
