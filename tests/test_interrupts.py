"""Interrupt-safe runs, through the protocol scripts as a user runs them.

A default-config run (the shipped CoOp config made tiny: one numbered checkpoint at the end) is
stopped at a fixed step by SIGINT, SIGTERM, SIGUSR2 or SIGKILL (``tests/fault_injection``) and rerun with the
same command: it ends with the weights and accuracy of an uninterrupted run, and loses at most one
epoch of work (SIGINT/SIGTERM: nothing, the run stops at a step boundary with a checkpoint there).
Two loader workers run throughout, so mid-epoch resume is exact with workers too. Ctrl-C given to
``run_protocol.py`` reaches the running job, which stops the same way.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datagen import make_dataset
from helpers import SCRIPTS, run_script, script_env, start_until_paused, tiny_config

FAULTS = Path(__file__).resolve().parent / "fault_injection"
EPOCHS = 3  # of 4 batches each
RUN = "base2new/train_base/dtd/shots_16/CoOp/vit_b16_ctxv1/seed1"

pytestmark = pytest.mark.slow  # every test runs the scripts (train.py processes with loader workers)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_clip_path):
    root = tmp_path_factory.mktemp("interrupts")
    make_dataset(root / "data", "dtd", n_classes=4, per_class=8)  # 2 base classes x 4 training images
    config = tiny_config(root / "configs", "CoOp", "vit_b16_ctxv1", tiny_clip_path, epochs=EPOCHS, batch_size=2,
                         workers=2)
    return root, config


def env_for(setup, output, **faults):
    root, config = setup
    return script_env(root / "data", output, CFG=config, PYTHONPATH=FAULTS, **faults)


def train(setup, output, *opts, **faults):
    return run_script("coop/base2new_train.sh", "dtd", 1, *opts, env=env_for(setup, output, **faults))


def final(output):
    run_dir = output / RUN
    weights = torch.load(run_dir / "prompt_learner" / f"model.pth.tar-{EPOCHS}", weights_only=True)["state_dict"]
    results = json.loads((run_dir / "results.json").read_text())
    return weights, (results["accuracy"], results["macro_f1"])


def assert_same_as(reference, output):
    expected_weights, expected_metrics = reference
    weights, metrics = final(output)
    assert weights.keys() == expected_weights.keys()
    for name in weights:
        assert torch.equal(weights[name], expected_weights[name]), name
    assert metrics == expected_metrics


def resumed_session(output):
    """The log of the rerun (after the banner of its appended session)."""
    return (output / RUN / "log.txt").read_text().split("Resumed session")[-1]


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    output = tmp_path_factory.mktemp("uninterrupted")
    proc = train(setup, output)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return final(output)


@pytest.mark.parametrize("name, code", [("SIGINT", 130), ("SIGTERM", 143), ("SIGUSR2", 140)])
def test_a_stop_signal_stops_at_the_step_and_the_same_command_continues_exactly(setup, reference, tmp_path, name,
                                                                               code):
    """SIGUSR2 is SLURM's warning before a time limit (``--signal``); the loader workers ignore it too."""
    output = tmp_path / "out"
    proc = train(setup, output, DPL_TEST_SIGNAL=f"{name}:2:3")
    last = output / RUN / "prompt_learner" / "model-last.pth.tar"
    assert proc.returncode == code, proc.stderr[-3000:]
    assert (f"Interrupted by {name}: its last checkpoint {last} is kept; run the same command again to continue"
            in proc.stderr)
    assert f"coop/base2new_train.sh: stopped by {name} (exit code {code}); run the same command again" in proc.stderr
    checkpoint = torch.load(last, weights_only=True)
    assert (checkpoint["epoch"], checkpoint["batch"]) == (1, 3)  # in epoch 2, after its 3rd batch: nothing lost
    assert not (output / RUN / ".run.lock").exists()

    proc = train(setup, output)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Resuming the unfinished run in {output / RUN} (last checkpoint in epoch 2, after batch 3)" in proc.stdout
    session = resumed_session(output)
    assert "Resuming in epoch 2 after its first 3 batches" in session
    assert "epoch [2/3] batch [3/4]" not in session and "epoch [2/3] batch [4/4]" in session  # no step done twice
    assert_same_as(reference, output)


# SIGKILL leaves the loader's workers to notice their parent is gone (seconds): these runs load in-process.
# That is how a run is carried out, not what it computes: the same folder, and the same weights as the
# reference run, whose two workers augmented the same images in the same way.
IN_PROCESS_LOADING = ("DATALOADER.NUM_WORKERS", 0)


def test_sigkill_loses_at_most_the_current_epoch(setup, reference, tmp_path):
    output = tmp_path / "out"
    proc = train(setup, output, *IN_PROCESS_LOADING, DPL_TEST_SIGNAL="SIGKILL:2:3")
    assert proc.returncode == -9
    proc = train(setup, output, *IN_PROCESS_LOADING)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(last checkpoint after epoch 1)" in proc.stdout
    session = resumed_session(output)
    assert "Taking over a stale run lock" in session and "Previous epoch: 1" in session
    assert_same_as(reference, output)


def test_iteration_checkpoints_bound_what_a_sigkill_loses(setup, reference, tmp_path):
    output = tmp_path / "out"
    every_two_steps = ("TRAIN.CHECKPOINT_ITERS", 2, *IN_PROCESS_LOADING)  # also how a run is carried out
    proc = train(setup, output, *every_two_steps, DPL_TEST_SIGNAL="SIGKILL:2:3")
    assert proc.returncode == -9
    proc = train(setup, output, *every_two_steps)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Resuming in epoch 2 after its first 2 batches" in resumed_session(output)
    assert_same_as(reference, output)


def test_ctrl_c_given_to_run_protocol_reaches_the_running_job(setup, reference, tmp_path):
    output = tmp_path / "out"
    paused = tmp_path / "paused"
    command = [sys.executable, str(SCRIPTS / "run_protocol.py"), "base2new", "--methods", "coop", "--datasets", "dtd",
               "--seeds", "1"]
    # its own session, as a terminal gives it: the Ctrl-C below reaches run_protocol.py only
    proc = start_until_paused(command, env_for(setup, output, DPL_TEST_PAUSE=f"2:3:{paused}"), paused)
    proc.send_signal(subprocess.signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "Interrupted by SIGINT: its last checkpoint" in err
    assert "=== stopped by SIGINT at bash scripts/coop/base2new_train.sh dtd 1" in err
    assert "=== [2/2]" not in out  # the queue stopped: the test job did not start

    proc = subprocess.run(command, env=env_for(setup, output), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[  resume] bash scripts/coop/base2new_train.sh dtd 1" in proc.stdout
    assert_same_as(reference, output)
    assert (output / "base2new/test_new/dtd/shots_16/CoOp/vit_b16_ctxv1/seed1/results.json").is_file()
