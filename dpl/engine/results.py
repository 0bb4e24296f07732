"""``results.json``: the machine-readable result of a run, written atomically beside ``log.txt``.

Schema (``schema_version`` 1). Top-level keys describe the most recent ``test()`` call, which at the
end of a run is its final test:

==================  =================================================================================
key                 meaning
==================  =================================================================================
schema_version      1
finished            True when written by the final test (after training, or an eval-only run);
                    ``TRAIN.IF_EXISTS skip`` skips runs whose results.json says so
split               ``"test"`` or ``"val"``
accuracy            top-1 accuracy in percent
error_rate          100 - accuracy
macro_f1            macro F1 in percent (over the labels present in the split)
num_samples         number of evaluated images
num_correct         number of correct top-1 predictions
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
environment         ``{"python", "torch", "cuda", "device", "platform", "host"}``
timings             ``{"train_seconds", "test_seconds", "written_at"}``; train_seconds counts the
                    training of this process only (a resumed run reports the resumed part)
==================  =================================================================================
"""
import datetime
import os
import platform
import socket
import subprocess
import sys

import torch

import dpl
from dpl.project import PROJECT_ROOT

from .runtime import RESULTS_NAME

SCHEMA_VERSION = 1
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


def environment(device):
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "platform": platform.platform(),
        "host": socket.gethostname(),
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


def test_record(split, metrics, num_samples, num_correct, epoch, finished, test_seconds):
    """What one ``test()`` call produced."""
    record = {"split": split, "finished": finished, "epoch": epoch}
    record.update({k: metrics[k] for k in METRIC_KEYS if k in metrics})
    record.update({"num_samples": num_samples, "num_correct": num_correct, "test_seconds": test_seconds})
    return record


def build_results(cfg, tests, latest_split, device, code, train_seconds):
    """The results.json document; ``tests`` maps split -> ``test_record``."""
    latest = tests[latest_split]
    doc = {"schema_version": SCHEMA_VERSION}
    doc.update({k: v for k, v in latest.items() if k != "test_seconds"})
    doc.update(run_description(cfg))
    doc["tests"] = tests
    doc["config"] = cfg_to_dict(cfg)
    doc["code"] = code
    doc["environment"] = environment(device)
    doc["timings"] = {
        "train_seconds": train_seconds,
        "test_seconds": latest["test_seconds"],
        "written_at": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    return doc


def results_path(output_dir):
    return os.path.join(output_dir, RESULTS_NAME)
