"""``run_protocol.py --launcher slurm`` on a real SLURM cluster (``scripts/local_slurm.sh start``; CI starts it).

A pocket base-to-novel sweep (two methods x two seeds, training and evaluation) is submitted with
``--wait`` and ends with its table; the same command then submits nothing. A training job is then
signalled as its time limit would (SIGUSR2, what ``--signal`` sends): it checkpoints, submitit requeues
it, and the requeued job resumes and ends with exactly the weights of the uninterrupted run. A training
that fails gets its evaluation cancelled, and the summary shows the failure's log and last lines.
Without a cluster (no root, no packages) every test is skipped with one line saying why.
"""
import json
import re
import shutil
import subprocess
import time

import pytest
import torch

from helpers import pocket_sweep_opts, run_protocol, script_env

pytestmark = pytest.mark.slow

EPOCHS = 4
SWEEP = ["base2new", "--datasets", "pocket", "--seeds", "1", "2", "--tag", "slurm"]
SLURM = ["--launcher", "slurm", "--cpus-per-job", "1", "--time", "10", "--poll", "1"]
COOP_RUN = "base2new/train_base/pocket/shots_16/CoOp/vit_b16_ctxv1@slurm/seed1"
COOP_EVALUATION = "base2new/test_new/pocket/shots_16/CoOp/vit_b16_ctxv1@slurm/seed1"


def slurm_unavailable():
    """Why the tests cannot run here (one line), or ""."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "no SLURM on this machine: start a local one with `sudo bash scripts/local_slurm.sh start`"
    try:
        import submitit  # noqa: F401
    except ModuleNotFoundError:
        return "submitit is not installed: pip install -e '.[cluster]'"
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if proc.returncode or not re.search(r"^(idle|mix|alloc)", proc.stdout, re.M):
        return "SLURM has no node up: `sudo bash scripts/local_slurm.sh start`"
    return ""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    reason = slurm_unavailable()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("slurm") / "data"
    folder.mkdir()
    return folder


def sweep(data, output, *args, methods=("dpl", "coop"), seeds=("1", "2")):
    argv = [*SWEEP[:3], "--seeds", *seeds, *SWEEP[6:], "--methods", *methods, *SLURM, *args,
            "--", *pocket_sweep_opts(EPOCHS)]
    return run_protocol(*argv, env=script_env(data, output))


def table_rows(stdout):
    return [line for line in stdout.split("Base-to-novel")[-1].splitlines() if line.startswith("pocket")]


def final(output, run=COOP_RUN):
    weights = torch.load(output / run / "prompt_learner" / f"model.pth.tar-{EPOCHS}", weights_only=True)
    results = json.loads((output / run / "results.json").read_text())
    return weights["state_dict"], (results["accuracy"], results["macro_f1"])


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The sweep, uninterrupted: its output folder and the stdout of its --wait command."""
    output = tmp_path_factory.mktemp("reference") / "out"
    proc = sweep(data, output, "--wait")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return output, proc.stdout


def test_a_sweep_on_slurm_ends_with_its_table_and_a_second_command_submits_nothing(data, reference):
    output, stdout = reference
    assert "Submitted 8 job(s) to SLURM; 0 were queued or running already" in stdout
    table = stdout.split("Base-to-novel")[0].split("\n[")[-1]  # the last view of the live table
    assert re.search(r"^total\s+0\s+0\s+8\s+0$", table, re.M), table
    rows = table_rows(stdout)
    assert len(rows) == 1 and rows[0].count("±") == 4  # two methods x Base/New, each over two seeds
    record = output / "jobs" / "slurm" / "submitted.jsonl"
    lines = record.read_text().splitlines()
    assert len(lines) == 8

    again = sweep(data, output, "--wait")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Plan: 8 jobs, 8 done, 0 to run" in again.stdout
    assert "Nothing to submit: every job of the plan is done" in again.stdout
    assert table_rows(again.stdout) == rows
    assert record.read_text().splitlines() == lines


def wait_for(predicate, seconds, what):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_job_signalled_before_its_time_limit_is_requeued_and_resumes_to_the_same_weights(data, reference,
                                                                                           tmp_path):
    output = tmp_path / "out"
    submitted = sweep(data, output, methods=["coop"], seeds=["1"])
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = re.search(r"^\s+(\d+)  bash scripts/coop/base2new_train.sh pocket 1$", submitted.stdout, re.M).group(1)
    log = output / COOP_RUN / "log.txt"
    wait_for(lambda: log.exists() and f"epoch [2/{EPOCHS}]" in log.read_text(), 300, "the second epoch")
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)  # what SLURM sends before the time limit

    watched = sweep(data, output, "--wait", methods=["coop"], seeds=["1"])  # no new job: it watches the requeue
    assert watched.returncode == 0, watched.stdout[-3000:] + watched.stderr[-3000:]
    assert "Submitted 0 job(s) to SLURM; 2 were queued or running already" in watched.stdout
    assert f"{job_id} (queued before)  bash scripts/coop/base2new_train.sh pocket 1" in watched.stdout
    job_log = (output / "jobs" / "slurm" / f"{job_id}_0_log.out").read_text()
    assert f"Requeued job {job_id}" in job_log
    session = log.read_text().split("Resumed session")
    assert len(session) == 2 and "Resuming in epoch" in session[1]

    expected_weights, expected_metrics = final(reference[0])
    weights, metrics = final(output)
    assert weights.keys() == expected_weights.keys()
    for name in weights:
        assert torch.equal(weights[name], expected_weights[name]), name
    assert metrics == expected_metrics
    assert final_evaluation(output) == final_evaluation(reference[0])


def final_evaluation(output):
    results = json.loads((output / COOP_EVALUATION / "results.json").read_text())
    return results["accuracy"], results["macro_f1"]


def test_a_failed_training_cancels_its_evaluation_and_the_summary_shows_why(data, tmp_path):
    output = tmp_path / "out"
    proc = run_protocol("base2new", "--methods", "coop", "--datasets", "dtd", "--seeds", "1", *SLURM, "--wait",
                        "--", *pocket_sweep_opts(EPOCHS), env=script_env(data, output))  # DATA has no dtd/
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    train = lines.index("failed: bash scripts/coop/base2new_train.sh dtd 1 (SLURM: FAILED)")
    assert re.fullmatch(rf"    log: {output}/jobs/slurm/\d+_0_log\.err", lines[train + 1])
    tail = [line for line in lines[train + 2:] if line.startswith("    | ")]
    assert any("dtd" in line for line in tail) and not any("submitit" in line for line in tail)
    assert "cancelled: bash scripts/coop/base2new_test.sh dtd 1 (SLURM: CANCELLED)" in lines
    assert "2 job(s) did not finish; run the same command again to retry them" in lines
