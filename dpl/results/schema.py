"""``results.json``: the machine-readable result of a run, written atomically beside ``log.txt``.

One writer (``build_results``, called by the engine's ``test()``) and one reader (``read_results`` /
``final_test_record``); whether a run is finished is ``dpl.results.runs.read_state``'s to say.
Schema (``schema_version`` 2; version 1 files, written before runs recorded their identity, are read
too). Top-level keys describe the most recent ``test()`` call, which at the end
of a run is its final test:

==================  =================================================================================
key                 meaning
==================  =================================================================================
schema_version      2
run_id              the run's short identity hash (``dpl.results.identity``); the same experiment
                    always has the same id
identity            what defines the experiment: ``{"version", "config", "weights"[, "model"]
                    [, "sources"]}`` (``dpl.results.identity``)
finished            True when written by the final test (after training, or an eval-only run);
                    ``TRAIN.IF_EXISTS skip`` skips runs whose results.json says so
split               ``"test"`` or ``"val"``
accuracy            top-1 accuracy in percent
error_rate          100 - accuracy
macro_f1            macro F1 in percent (over the labels present in the split)
num_samples         number of evaluated images
num_correct         number of correct top-1 predictions
feature_cache       trainers whose image features are frozen CLIP's (ZeroshotCLIP, CoOp, KgCoOp,
                    CoCoOp): ``"hit"`` (read from the feature cache, no image opened), ``"miss"``
                    (images encoded, then cached) or ``"off"``; absent for other trainers and older files
per_class           present when ``TEST.PER_CLASS_RESULT``: list of ``{label, classname, total,
                    correct, accuracy}``; ``perclass_accuracy`` is their mean; in long-tail runs each
                    row also has its ``group``
group_accuracy      long-tail runs (``DATASET.IMBALANCE_RATIO != 1``) testing the training classes:
                    ``{"many", "medium", "few"}`` mean per-class accuracy in percent of each group
                    (null for a group without a tested class); groups: ``long_tail_groups(train_x)``
trainer             ``TRAINER.NAME``
dataset             ``DATASET.NAME``
subsample_classes   ``DATASET.SUBSAMPLE_CLASSES`` (all / base / new)
num_shots           ``DATASET.NUM_SHOTS``
seed                ``SEED``
config_name         ``CONFIG_NAME`` (train.py: stem of ``--config-file``; ``""`` when none)
backbone            ``MODEL.BACKBONE.NAME``
epoch               epochs of training behind the evaluated weights (checkpoint epoch for eval-only)
max_epoch           ``OPTIM.MAX_EPOCH``
output_dir          ``OUTPUT_DIR``
tests               every split tested by this process, keyed by split: the metric keys above plus
                    ``epoch``, ``finished`` and ``test_seconds``
config              the resolved config as a nested dict
code                ``{"dpl_version", "git_commit", "git_dirty"}`` (git fields None outside a checkout)
weights             the CLIP weights actually loaded: ``{"path", "sha256", "architecture",
                    "official_name"}`` (``official_name``: the OpenAI model whose published
                    checksum the file has, else null)
command             ``{"argv", "cwd"}``: the command line of the process that wrote the file
environment         ``{"python", "torch", "cuda", "device", "platform", "host", "processes"}``;
                    ``processes``: how many (torchrun) processes ran the run data-parallel
timings             ``{"train_seconds", "test_seconds", "written_at"}``; train_seconds counts the
                    training of this process only (a resumed run reports the resumed part)
==================  =================================================================================
"""
import datetime
import json
import os
import platform
import socket
import subprocess
import sys

import dpl
from dpl.project import PROJECT_ROOT

RESULTS_NAME = "results.json"
SCHEMA_VERSION = 2
LONG_TAIL_GROUPS = ("many", "medium", "few")  # long-tail class groups, head to tail (``group_accuracy`` keys)
METRIC_KEYS = ("accuracy", "error_rate", "macro_f1", "perclass_accuracy", "per_class", "group_accuracy")


def cfg_to_dict(cfg):
    """A yacs ``CfgNode`` as plain nested dicts (tuples become lists, as JSON stores them)."""
    if isinstance(cfg, dict):
        return {k: cfg_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [cfg_to_dict(v) for v in cfg]
    return cfg


def code_version():
    """dpl's version and, inside a git checkout, the commit and whether the tree has local edits."""
    info = {"dpl_version": dpl.__version__, "git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            status = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10,
            )
            info["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def command_line():
    """The command line of this process and where it ran."""
    return {"argv": list(sys.argv), "cwd": os.getcwd()}


def environment(device, processes=1):
    import torch  # only the writer needs torch; readers (parse_results) do not

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "processes": processes,
    }


def run_description(cfg):
    """The keys that identify a run (trainer, dataset, protocol, seed, config name, ...)."""
    return {
        "trainer": cfg.TRAINER.NAME,
        "dataset": cfg.DATASET.NAME,
        "subsample_classes": cfg.DATASET.SUBSAMPLE_CLASSES,
        "num_shots": cfg.DATASET.NUM_SHOTS,
        "seed": cfg.SEED,
        "config_name": cfg.get("CONFIG_NAME", ""),
        "backbone": cfg.MODEL.BACKBONE.NAME,
        "max_epoch": cfg.OPTIM.MAX_EPOCH,
        "output_dir": cfg.OUTPUT_DIR,
    }


def test_record(split, metrics, num_samples, num_correct, epoch, finished, test_seconds, details=None):
    """What one ``test()`` call produced; ``details``: keys the trainer adds (``feature_cache``)."""
    record = {"split": split, "finished": finished, "epoch": epoch}
    record.update({k: metrics[k] for k in METRIC_KEYS if k in metrics})
    record.update({"num_samples": num_samples, "num_correct": num_correct, "test_seconds": test_seconds})
    record.update(details or {})
    return record


def build_results(cfg, tests, latest_split, device, provenance, train_seconds, processes=1):
    """The results.json document; ``tests`` maps split -> ``test_record``.

    ``provenance``: ``{"run_id", "identity", "code", "weights", "command"}`` of the run.
    """
    latest = tests[latest_split]
    doc = {"schema_version": SCHEMA_VERSION, "run_id": provenance["run_id"]}
    doc.update({k: v for k, v in latest.items() if k != "test_seconds"})
    doc.update(run_description(cfg))
    doc["tests"] = tests
    doc["identity"] = provenance["identity"]
    doc["config"] = cfg_to_dict(cfg)
    for key in ("code", "weights", "command"):
        doc[key] = provenance[key]
    doc["environment"] = environment(device, processes)
    doc["timings"] = {
        "train_seconds": train_seconds,
        "test_seconds": latest["test_seconds"],
        "written_at": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    return doc


def results_path(output_dir):
    return os.path.join(output_dir, RESULTS_NAME)


# ----- reading ---------------------------------------------------------------------------------------

def read_results(path):
    """The results.json document at ``path``, or None when it is missing, unreadable or not an object
    (e.g. truncated by a full disk or half-written by another tool)."""
    try:
        with open(path, "r") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def final_test_record(doc):
    """The record of the final test on the *test* split, or None (a mid-training test, a val split).

    Version 2 keeps every split tested under ``tests``; the top level is the latest test. Files
    without ``finished`` (written by other tools) are accepted.
    """
    record = (doc.get("tests") or {}).get("test") or doc
    if record.get("split", "test") != "test" or record.get("finished") is False:
        return None
    return record


def recorded_identity(doc):
    """``(run_id, identity)`` a results.json records, or ``(None, None)`` for files written before
    runs recorded their identity."""
    identity = doc.get("identity") if doc else None
    if not isinstance(identity, dict):
        return None, None
    return doc.get("run_id"), identity
