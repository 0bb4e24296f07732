"""Run lock and output-dir policy (TRAIN.IF_EXISTS)."""
import json
import os
import socket
import subprocess
import sys

import pytest

from dpl.config import get_cfg_default
from dpl.engine import OutputDirExistsError, RunLock, RunLockError, output_dir_action
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


def test_if_exists_policies(tmp_path):
    out = tmp_path / "run"
    for policy in ("resume", "skip", "error"):
        assert output_dir_action(cfg_for(out, policy)) == "fresh"
    (out / "prompt_learner").mkdir(parents=True)
    (out / "prompt_learner" / "checkpoint").write_text("model.pth.tar-1\n")  # an interrupted run
    assert output_dir_action(cfg_for(out, "resume")) == "resume"
    assert output_dir_action(cfg_for(out, "skip")) == "resume"  # unfinished: skip only skips finished runs
    with pytest.raises(OutputDirExistsError, match="checkpoints of an earlier run.*TRAIN.IF_EXISTS"):
        output_dir_action(cfg_for(out, "error"))
    (out / "results.json").write_text(json.dumps({"finished": True}))
    assert output_dir_action(cfg_for(out, "skip")) == "skip"
    assert output_dir_action(cfg_for(out, "resume")) == "resume"
    with pytest.raises(OutputDirExistsError, match="a finished run"):
        output_dir_action(cfg_for(out, "error"))
    (out / "results.json").write_text("{ half written")
    assert output_dir_action(cfg_for(out, "skip")) == "resume"
    with pytest.raises(ValueError, match=r"do you mean \[skip\]"):
        output_dir_action(cfg_for(out, "skp"))
