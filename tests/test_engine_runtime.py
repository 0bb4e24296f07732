"""Run lock and output-dir policy (TRAIN.IF_EXISTS)."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from dpl.config import get_cfg_default
from dpl.engine import OutputDirExistsError, RunConflictError, RunLock, RunLockError, output_dir_action
from dpl.engine.runtime import LOCK_NAME


def write_lock(directory, pid, host):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, LOCK_NAME), "w") as f:
        json.dump({"pid": pid, "host": host, "started": "2026-01-01T00:00:00"}, f)


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_is_created_reentrant_and_released(tmp_path):
    lock = RunLock(str(tmp_path))
    assert lock.acquire() is None and lock.owned
    owner = json.loads((tmp_path / LOCK_NAME).read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    inner = RunLock(str(tmp_path))  # the trainer inside train.py takes it again
    assert inner.acquire() is None and not inner.owned
    inner.release()
    assert (tmp_path / LOCK_NAME).exists()  # only the creator removes it
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_live_lock_refuses_a_second_run(tmp_path):
    write_lock(tmp_path, os.getppid(), socket.gethostname())  # a live process on this host
    with pytest.raises(RunLockError, match=f"Another run \\(pid {os.getppid()}.*choose another --output-dir"):
        RunLock(str(tmp_path)).acquire()
    write_lock(tmp_path, 1234, "some-other-host")
    with pytest.raises(RunLockError, match=f"locked by pid 1234 on host some-other-host.*delete .*{LOCK_NAME}"):
        RunLock(str(tmp_path)).acquire()


def test_stale_lock_is_taken_over_with_a_note(tmp_path):
    pid = dead_pid()
    write_lock(tmp_path, pid, socket.gethostname())
    lock = RunLock(str(tmp_path))
    note = lock.acquire()
    assert note.startswith("Taking over a stale run lock") and f"pid {pid}" in note
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def cfg_for(output_dir, policy):
    cfg = get_cfg_default()
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.TRAIN.IF_EXISTS = policy
    return cfg


IDENTITY = {"version": 1, "config": {"SEED": 1}, "weights": None}
OTHER = {"version": 1, "config": {"SEED": 2}, "weights": None}


def checkpoint(out, identity, epoch=1):
    (out / "prompt_learner").mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": epoch, "run_identity": identity}, out / "prompt_learner" / f"model.pth.tar-{epoch}")
    (out / "prompt_learner" / "checkpoint").write_text(f"model.pth.tar-{epoch}\n")


def action(out, policy, identity=IDENTITY):
    return output_dir_action(cfg_for(out, policy), identity)[0]


def test_if_exists_policies(tmp_path):
    out = tmp_path / "run"
    for policy in ("resume", "skip", "error"):
        assert action(out, policy) == "fresh"
    (out / "prompt_learner").mkdir(parents=True)
    (out / "prompt_learner" / "checkpoint").write_text("model.pth.tar-1\n")  # files deleted: nothing to resume
    assert action(out, "resume") == "fresh"
    checkpoint(out, IDENTITY)  # an interrupted run of this experiment
    assert action(out, "resume") == "resume"
    assert action(out, "skip") == "resume"  # unfinished: skip only skips finished runs
    with pytest.raises(OutputDirExistsError, match="checkpoints of an earlier run.*TRAIN.IF_EXISTS"):
        action(out, "error")
    (out / "results.json").write_text(json.dumps({"finished": True, "run_id": "x", "identity": IDENTITY}))
    assert action(out, "skip") == "skip"
    assert action(out, "resume") == "resume"
    with pytest.raises(OutputDirExistsError, match="a finished run"):
        action(out, "error")
    (out / "results.json").write_text("{ half written")
    assert action(out, "skip") == "resume"
    with pytest.raises(ValueError, match=r"do you mean \[skip\]"):
        action(out, "skp")


def test_a_folder_of_another_experiment_is_never_reused_whatever_the_policy(tmp_path):
    out = tmp_path / "run"
    checkpoint(out, IDENTITY)
    for policy in ("resume", "skip", "error"):
        with pytest.raises(RunConflictError, match=r"holds an unfinished run \(last checkpoint after epoch 1\) of "
                                                   r"another experiment: .*\(SEED 1 -> 2\)"):
            action(out, policy, OTHER)
    (out / "results.json").write_text(json.dumps({"finished": True, "accuracy": 50.0, "identity": IDENTITY}))
    with pytest.raises(RunConflictError, match=r"holds a finished run \(results.json: accuracy 50.00%\)"):
        action(out, "skip", OTHER)


def test_folders_without_identity_are_judged_by_their_contents_with_a_note(tmp_path):
    out = tmp_path / "run"
    checkpoint(out, None)
    kind, decision = output_dir_action(cfg_for(out, "resume"), IDENTITY)
    assert kind == "resume" and "records no run identity" in decision.note
    (out / "results.json").write_text(json.dumps({"split": "test", "finished": True, "accuracy": 50.0}))
    assert action(out, "skip") == "skip"
