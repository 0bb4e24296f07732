"""Exact resume after SIGKILL: a real ``train.py`` process is killed mid-run and restarted with the
same command; it must end with the same learnable weights and accuracy as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from datagen import make_dataset
from dpl.project import PROJECT_ROOT
from dpl.utils import close_logger

import train  # the repo root is on sys.path: tests/conftest.py

MAX_EPOCH = 3

# A reference run in-process, then a train.py process killed and restarted: seconds, not milliseconds.
pytestmark = pytest.mark.slow


def argv(data_root, weights, output_dir):
    return [
        "--root", str(data_root), "--seed", "3", "--trainer", "CoOp", "--output-dir", str(output_dir),
        "--dataset-config-file", str(PROJECT_ROOT / "configs/datasets/dtd.yaml"),
        "--config-file", str(PROJECT_ROOT / "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml"),
        "MODEL.BACKBONE.PATH", str(weights), "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "2", "DATALOADER.TEST.BATCH_SIZE", "8", "TRAIN.PRINT_FREQ", "1",
        "USE_CUDA", "False", "OPTIM.MAX_EPOCH", str(MAX_EPOCH), "OPTIM.LR", "0.05", "TRAIN.CHECKPOINT_FREQ", "1",
        "TRAIN.DETERMINISTIC", "True",
    ]


def final_state(output_dir):
    checkpoint = torch.load(
        output_dir / "prompt_learner" / f"model.pth.tar-{MAX_EPOCH}", map_location="cpu", weights_only=True
    )
    results = json.loads((output_dir / "results.json").read_text())
    return checkpoint["state_dict"], results


def start(data_root, weights, output_dir):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "train.py"), *argv(data_root, weights, output_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )


def kill_when_logged(proc, log_path, marker, timeout=300):
    """SIGKILL ``proc`` as soon as ``marker`` appears in its log; returns the log text at that point."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if log_path.exists() and marker in log_path.read_text():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return log_path.read_text()
        time.sleep(0.02)
    raise AssertionError(f"train.py ended or timed out before logging {marker!r}: {proc.stderr.read().decode()[-2000:]}")


@pytest.fixture
def determinism_restored(monkeypatch):
    """``TRAIN.DETERMINISTIC`` switches process-wide settings on (torch's deterministic algorithms, cuDNN's
    flags, ``CUBLAS_WORKSPACE_CONFIG``) in the in-process run: the tests after this one must not inherit them."""
    cudnn = torch.backends.cudnn
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             cudnn.benchmark, cudnn.deterministic)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # put back (or removed) after the test
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    cudnn.benchmark, cudnn.deterministic = saved[2], saved[3]


def test_sigkilled_run_resumes_to_the_same_result(tmp_path, tiny_clip_path, determinism_restored):
    data_root = tmp_path / "data"
    make_dataset(data_root, "dtd", n_classes=3, per_class=6)

    reference = tmp_path / "reference"
    try:
        assert train.cli(argv(data_root, tiny_clip_path, reference)) == 0
    finally:
        close_logger()
    assert torch.are_deterministic_algorithms_enabled()  # what determinism_restored must undo

    killed = tmp_path / "killed"
    proc = start(data_root, tiny_clip_path, killed)
    log_at_kill = kill_when_logged(proc, killed / "log.txt", f"epoch [2/{MAX_EPOCH}] batch [2/")
    assert "Finish training" not in log_at_kill
    assert (killed / ".run.lock").exists()  # left behind by the killed process

    proc = start(data_root, tiny_clip_path, killed)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-2000:]
    log = (killed / "log.txt").read_text()
    assert "Taking over a stale run lock" in log and "Found checkpoint at" in log
    assert "Previous epoch: 1" in log  # epoch 1 was checkpointed, epoch 2 was cut short

    expected_weights, expected_results = final_state(reference)
    weights, results = final_state(killed)
    assert expected_weights.keys() == weights.keys()
    for name in weights:
        assert torch.equal(weights[name], expected_weights[name]), name
    assert (results["accuracy"], results["macro_f1"]) == (expected_results["accuracy"], expected_results["macro_f1"])
    assert not (killed / ".run.lock").exists()
