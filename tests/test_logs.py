"""Log compatibility: Dassl's lines as upstream parsers read them; log.txt appended on resume."""
import os
import re
import sys
import traceback

import numpy as np
import pytest
import torch

from dpl.config import get_cfg_default
from dpl.evaluation import Classification, build_evaluator, macro_f1_score
from dpl.metrics import compute_accuracy
from dpl.utils import close_logger, setup_logger
from dpl.utils.meters import AverageMeter, MetricMeter

# The regex of CoOp's parse_test_res.py (keyword "accuracy") and the progress line of Dassl 0.6.3.
ACCURACY_RE = re.compile(r"\* accuracy: ([\.\deE+-]+)%")
PROGRESS_RE = re.compile(
    r"^epoch \[\d+/\d+\] batch \[\d+/\d+\] time \d+\.\d{3} \(\d+\.\d{3}\) data \d+\.\d{3} \(\d+\.\d{3}\) "
    r"(\w+ -?\d+\.\d{4} \(-?\d+\.\d{4}\) )+lr \d\.\d{4}e[+-]\d{2} eta \d+:\d{2}:\d{2}$"
)


@pytest.fixture
def logger_cleanup():
    yield
    close_logger()


def evaluator_with(y_true, y_pred, num_classes, per_class=False, lab2cname=None):
    cfg = get_cfg_default()
    cfg.TEST.PER_CLASS_RESULT = per_class
    evaluator = build_evaluator(cfg, lab2cname=lab2cname)
    logits = torch.nn.functional.one_hot(torch.tensor(y_pred), num_classes).float()
    half = len(y_true) // 2  # two batches
    evaluator.process(logits[:half], torch.tensor(y_true[:half]))
    evaluator.process(logits[half:], torch.tensor(y_true[half:]))
    return evaluator


def test_result_block_is_dassls_and_parsable(capsys):
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 10, 2500)
    y_pred = np.where(rng.random(2500) < 0.818, y_true, (y_true + 1) % 10)
    results = evaluator_with(y_true.tolist(), y_pred.tolist(), 10).evaluate()
    out = capsys.readouterr().out.splitlines()
    correct = int((y_true == y_pred).sum())
    assert out[out.index("=> result") + 1 :][:5] == [
        "* total: 2,500",
        f"* correct: {correct:,}",
        f"* accuracy: {100 * correct / 2500:.1f}%",
        f"* error: {100 - 100 * correct / 2500:.1f}%",
        f"* macro_f1: {results['macro_f1']:.1f}%",
    ]
    parsed = [float(m.group(1)) for line in out if (m := ACCURACY_RE.search(line))]
    assert parsed == [round(100 * correct / 2500, 1)]
    assert list(results)[:3] == ["accuracy", "error_rate", "macro_f1"]


def test_macro_f1_matches_the_definition():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 3, 3]  # label 3 never occurs in y_true: excluded from the average
    # per label: 0 -> P 1, R 2/3 -> 0.8; 1 -> P 1/2, R 1/2 -> 0.5; 2 -> 0
    assert macro_f1_score(y_true, y_pred) == pytest.approx((0.8 + 0.5 + 0.0) / 3)
    assert macro_f1_score([1, 1], [1, 1]) == 1.0


def test_per_class_result(capsys):
    names = {0: "cat", 1: "dog"}
    evaluator = evaluator_with([0, 0, 0, 1], [0, 0, 1, 1], 2, per_class=True, lab2cname=names)
    results = evaluator.evaluate()
    out = capsys.readouterr().out
    assert "=> per-class result" in out
    assert "* class: 0 (cat)\ttotal: 3\tcorrect: 2\tacc: 66.7%" in out
    assert "* average: 83.3%" in out
    assert results["perclass_accuracy"] == pytest.approx((200 / 3 + 100) / 2)
    assert results["per_class"][1] == {"label": 1, "classname": "dog", "total": 1, "correct": 1, "accuracy": 100.0}


def test_compute_accuracy_topk_percent():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    target = torch.tensor([1, 1, 2, 1])
    top1, top2 = compute_accuracy(logits, target, topk=(1, 2))
    assert top1.item() == pytest.approx(50.0) and top2.item() == pytest.approx(100.0)
    assert compute_accuracy((logits, None), target)[0].item() == pytest.approx(50.0)


def test_progress_line_format():
    from dpl.engine import TrainerX

    trainer = TrainerX.__new__(TrainerX)  # only the attributes progress_line reads
    trainer._optims = {"m": torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.9823e-3)}
    trainer._models = {"m": None}
    trainer.epoch, trainer.max_epoch, trainer.batch_idx, trainer.num_batches = 2, 10, 19, 50
    batch_time, data_time, losses = AverageMeter(), AverageMeter(), MetricMeter()
    batch_time.update(0.123)
    data_time.update(0.001)
    losses.update({"loss": 1.2345, "acc": 50.0})
    line = trainer.progress_line(batch_time, data_time, losses)
    assert PROGRESS_RE.match(line), line
    assert line.startswith("epoch [3/10] batch [20/50] time 0.123 (0.123) data 0.001 (0.001) loss 1.2345 (1.2345)")
    assert line.endswith("lr 1.9823e-03 eta 0:00:46")  # (30 + 7 * 50) = 380 batches left * 0.123 s = 46.7 s


def test_logger_tees_stdout_and_stderr_and_appends_on_resume(tmp_path, logger_cleanup):
    original_stdout, original_stderr = sys.stdout, sys.stderr
    path = setup_logger(str(tmp_path))
    print("first session line")
    print("a warning line", file=sys.stderr)
    close_logger()
    assert sys.stdout is original_stdout and sys.stderr is original_stderr

    setup_logger(str(tmp_path))
    print("second session line")
    close_logger()
    assert os.listdir(tmp_path) == ["log.txt"]  # never log.txt-<timestamp>
    text = open(path).read()
    assert text.index("first session line") < text.index("Resumed session") < text.index("second session line")
    assert "a warning line" in text
    assert text.count("Resumed session") == 1


def test_logger_accepts_a_file_name(tmp_path, logger_cleanup):
    path = setup_logger(str(tmp_path / "sub" / "run.log"))
    print("hello")
    close_logger()
    assert path.endswith("run.log") and open(path).read() == "hello\n"


def test_tracebacks_reach_the_log(tmp_path, logger_cleanup):
    setup_logger(str(tmp_path))
    try:
        raise ValueError("something broke")
    except ValueError:
        traceback.print_exc()  # what an uncaught exception prints, on sys.stderr
    close_logger()
    text = (tmp_path / "log.txt").read_text()
    assert "Traceback (most recent call last)" in text and "ValueError: something broke" in text


def test_empty_evaluator_is_a_clear_error():
    evaluator = Classification(get_cfg_default())
    with pytest.raises(RuntimeError, match="no predictions"):
        evaluator.evaluate()
