"""Long-tail runs report many/medium/few-shot accuracy (results.json ``group_accuracy``, log lines,
``group`` on per-class rows), end to end through train.py and parse_results.py.

Fixture: synthetic DTD, 10 classes x 12 images -> base classes 0-4 with 6 training images each; with
``DATASET.IMBALANCE_RATIO 10`` the profile keeps 6, 4, 2, 2, 1 of them. On the log scale between 6 and
1 (``t = log(6/n) / log(6)``: 0, 0.23, 0.61, 0.61, 1) that is many, many, medium, medium, few.
"""
import json
import re

import numpy as np
import pytest

import dpl.tools.train as TRAIN
from helpers import run_train, train_opts

import parse_results  # noqa: E402  (the repo root is on sys.path: tests/conftest.py)
from dpl.results import runs  # noqa: E402

EXPECTED_GROUPS = {0: "many", 1: "many", 2: "medium", 3: "medium", 4: "few"}
LONG_TAIL = ("DATASET.SUBSAMPLE_CLASSES", "base", "DATASET.IMBALANCE_RATIO", "10.0")
CONFIG = "CoOp/vit_b16_ep50_ctxv1.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_clip_path):
    """One epoch of CoOp on the long-tailed base classes, per-class results off (the groups must not need them)."""
    tmp_path = tmp_path_factory.mktemp("long_tail")
    with pytest.MonkeyPatch.context() as mp:  # torch's collect_env runs `pip list`; not under test here
        mp.setattr(TRAIN, "collect_env_info", lambda: "(not collected)")
        code, out, log = run_train(tmp_path, tiny_clip_path, "CoOp", CONFIG, train_opts(1, "0.01"), LONG_TAIL,
                                   ("TEST.PER_CLASS_RESULT", "False"), n_classes=10, per_class=12)
    assert code == 0, log[-3000:]
    return tmp_path, out, log


def eval_only(tmp_path, weights, model_dir, out, *opts, monkeypatch):
    monkeypatch.setattr(TRAIN, "collect_env_info", lambda: "(not collected)")
    code, test_out, log = run_train(tmp_path, weights, "CoOp", CONFIG, "--eval-only", "--model-dir", str(model_dir),
                                    "--load-epoch", "1", opts, out=out, n_classes=10, per_class=12)
    assert code == 0, log[-3000:]
    return json.loads((test_out / "results.json").read_text()), log


def test_training_run_reports_group_accuracy_in_results_and_log(trained):
    _, out, log = trained
    assert "Generated imbalance ratio: 6.00 (requested 10)" in log
    results = json.loads((out / "results.json").read_text())
    groups = results["group_accuracy"]
    assert list(groups) == ["many", "medium", "few"]
    assert all(0.0 <= v <= 100.0 for v in groups.values())
    assert results["tests"]["test"]["group_accuracy"] == groups and results["finished"] is True
    assert "per_class" not in results  # TEST.PER_CLASS_RESULT stayed off
    final_block = log[log.rindex("Evaluate on the *test* set"):]
    for name in groups:
        printed = re.search(rf"^\* {name}-shot accuracy: ([\d.]+)%$", final_block, re.M)
        assert printed and float(printed.group(1)) == pytest.approx(groups[name], abs=0.05), name


def test_group_accuracy_is_the_mean_per_class_accuracy_of_each_group(trained, tiny_clip_path, monkeypatch):
    """Eval-only of the same checkpoint with per-class rows: rows carry the expected groups, and each
    group's accuracy is the mean of its rows' accuracies (the training run's numbers, same predictions)."""
    tmp_path, out, _ = trained
    results, _ = eval_only(tmp_path, tiny_clip_path, out, "per_class", *LONG_TAIL, "TEST.PER_CLASS_RESULT", "True",
                           monkeypatch=monkeypatch)
    rows = results["per_class"]
    assert {row["label"]: row["group"] for row in rows} == EXPECTED_GROUPS
    expected = {g: float(np.mean([r["accuracy"] for r in rows if r["group"] == g])) for g in ("many", "medium", "few")}
    assert results["group_accuracy"] == pytest.approx(expected)
    trained_groups = json.loads((out / "results.json").read_text())["group_accuracy"]
    assert results["group_accuracy"] == pytest.approx(trained_groups)
    value, parsed = runs.read_results_json(str(tmp_path / "per_class" / "results.json"), "accuracy")
    assert value == pytest.approx(results["accuracy"]) and parsed == pytest.approx(expected)


@pytest.mark.parametrize("opts", [
    ("DATASET.SUBSAMPLE_CLASSES", "base"),  # balanced run
    ("DATASET.SUBSAMPLE_CLASSES", "new"),  # the long-tail test script's new-class evaluation (no ratio)
])
def test_balanced_runs_have_no_groups(trained, tiny_clip_path, monkeypatch, opts):
    tmp_path, out, _ = trained
    results, log = eval_only(tmp_path, tiny_clip_path, out, f"balanced_{opts[1]}", *opts, monkeypatch=monkeypatch)
    assert "group_accuracy" not in results and "-shot accuracy:" not in log


def test_parse_results_longtail_table_shows_the_groups(trained, tmp_path, capsys):
    """The protocol table (output/long_tail/imb10 layout) reads the groups of the train_base run."""
    _, out, _ = trained
    run_dir = tmp_path / "imb10/train_base/dtd/shots_16/CoOp/vit_b16_ep50_ctxv1/seed1"
    run_dir.mkdir(parents=True)
    run_dir.joinpath("results.json").write_text((out / "results.json").read_text())
    groups = json.loads((out / "results.json").read_text())["group_accuracy"]
    capsys.readouterr()
    assert parse_results.main([str(tmp_path / "imb10"), "--protocol", "longtail", "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    cells = {cell["column"]: cell.get("mean") for cell in row["cells"]}
    assert {g: cells[g.capitalize()] for g in groups} == pytest.approx(groups)
