"""``run_protocol.py --launcher local|slurm``: the local queue, the SLURM job arrays and what both show.

Unit tests run the local queue on small bash scripts that stand for a method's scripts (they record
when they ran, on which device, with how many threads) and check how the SLURM launcher groups jobs
into arrays and dependencies without a cluster. The end-to-end test runs a pocket base-to-novel sweep
with two jobs at a time and compares its table with the sequential run's. The real SLURM cluster's
test is ``tests/test_slurm_launcher.py``.
"""
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest

from dpl.protocols.local_queue import LocalQueue, available_cores, exit_text, parse_devices
from dpl.protocols.methods import Method
from dpl.protocols.progress import LiveView, Progress, tail_lines
from dpl.protocols.slurm import JobRecord, ScriptCall, SlurmError, SlurmLauncher, SlurmOptions, Submission
from dpl.protocols.sweep import Job, jobs_for
from helpers import pocket_sweep_opts, run_protocol, script_env


class FakePlanner:
    """What the launchers ask a planner: the trailing options of a job (none here)."""

    def opts(self, job):
        return []

    def job_state(self, job):
        return "todo", []


def fake_method(tmp_path, name="m", **scripts):
    """A ``scripts/<name>/`` folder whose scripts are the given bash bodies."""
    folder = tmp_path / name
    folder.mkdir()
    for script, body in scripts.items():
        (folder / f"{script}.sh").write_text(body)
    return Method(name, str(folder), "CoOp")


def recorder(tmp_path, seconds=0.0, fail=False):
    """A script body that records its start, end, device and threads in ``<tmp>/<args>.rec``."""
    record = f'{tmp_path}/"$1-$2".rec'
    return (f'echo "start $(date +%s.%N) dev=${{CUDA_VISIBLE_DEVICES-unset}} omp=$OMP_NUM_THREADS" > {record}\n'
            f"sleep {seconds}\n"
            + ('echo "Error: the dataset is missing" >&2\nexit 3\n' if fail else "")
            + f'echo "end $(date +%s.%N)" >> {record}\n')


def read_record(tmp_path, name):
    lines = (tmp_path / f"{name}.rec").read_text().split("\n")
    start = lines[0].split()
    end = float(lines[1].split()[1]) if len(lines) > 1 and lines[1] else None
    return float(start[1]), end, start[2], start[3]


def quiet_view():
    return LiveView(stream=open(os.devnull, "w"))


def local_queue(tmp_path, env=None, **options):
    env = dict(env or {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"})
    return LocalQueue(FakePlanner(), env, str(tmp_path / "logs"), view=quiet_view(), **options)


# ----- the local queue -------------------------------------------------------------------------------

def test_local_queue_runs_jobs_at_once_one_per_device_with_a_share_of_the_cores(tmp_path):
    method = fake_method(tmp_path, train=recorder(tmp_path, seconds=1.0))
    jobs = [Job(method, "train.sh", ["d", seed], "d") for seed in (1, 2)]
    progress, stopped = local_queue(tmp_path, jobs=2, devices=["0", "1"]).run(jobs)
    assert stopped is None and [progress.status[job] for job in jobs] == ["done", "done"]
    (start1, end1, dev1, omp1), (start2, end2, dev2, omp2) = (read_record(tmp_path, f"d-{s}") for s in (1, 2))
    assert start1 < end2 and start2 < end1  # they overlapped
    assert {dev1, dev2} == {"dev=0", "dev=1"}
    assert omp1 == omp2 == f"omp={max(1, available_cores() // 2)}"
    log = tmp_path / "logs" / "m" / "train-d-1.log"
    assert progress.logs[jobs[0]] == str(log) and "=== started" in log.read_text()


def test_local_queue_keeps_an_explicit_thread_count_and_cpu_hides_the_gpus(tmp_path):
    method = fake_method(tmp_path, train=recorder(tmp_path))
    job = Job(method, "train.sh", ["d", 1], "d")
    local_queue(tmp_path, env=dict(os.environ, OMP_NUM_THREADS="3"), devices=["cpu"]).run([job])
    assert read_record(tmp_path, "d-1")[2:] == ("dev=", "omp=3")


def test_an_evaluation_waits_for_its_training_and_is_cancelled_when_it_fails(tmp_path):
    method = fake_method(tmp_path, train=recorder(tmp_path, seconds=0.5), test=recorder(tmp_path),
                         bad=recorder(tmp_path, fail=True))
    train = Job(method, "train.sh", ["d", 1], "d")
    test = Job(method, "test.sh", ["d", 2], "d", after=train)
    bad = Job(method, "bad.sh", ["e", 1], "e")
    orphan = Job(method, "test.sh", ["e", 2], "e", after=bad)
    progress, _ = local_queue(tmp_path, jobs=3, keep_going=True).run([train, test, bad, orphan])
    assert [progress.status[j] for j in (train, test, bad, orphan)] == ["done", "done", "failed", "cancelled"]
    assert read_record(tmp_path, "d-2")[0] >= read_record(tmp_path, "d-1")[1]  # the test started after training
    assert not (tmp_path / "e-2.rec").exists()
    lines = progress.failure_lines()
    assert lines[0] == f"failed: {bad.text()} (exit code 3)"
    assert lines[1] == f"    log: {tmp_path / 'logs' / 'm' / 'bad-e-1.log'}"
    assert lines[2] == "    | Error: the dataset is missing"  # the job's last lines, not the queue's
    assert lines[3] == f"cancelled: {orphan.text()} (its training {bad.text()} did not finish)"


def test_after_a_failure_the_queue_starts_nothing_new_unless_told_to_keep_going(tmp_path):
    method = fake_method(tmp_path, bad=recorder(tmp_path, fail=True), train=recorder(tmp_path))
    jobs = [Job(method, "bad.sh", ["e", 1], "e"), Job(method, "train.sh", ["d", 1], "d")]
    progress, _ = local_queue(tmp_path, jobs=1).run(jobs)
    assert [progress.status[j] for j in jobs] == ["failed", "queued"]
    assert not (tmp_path / "d-1.rec").exists()


def test_ctrl_c_reaches_every_running_job_and_the_queue_stops(tmp_path):
    body = (f'trap \'echo stopped > {tmp_path}/"$1-$2".sig; exit 130\' INT\n'
            f'echo up > {tmp_path}/"$1-$2".up\nsleep 30 & wait\n')
    method = fake_method(tmp_path, train=body)
    jobs = [Job(method, "train.sh", ["d", seed], "d") for seed in (1, 2, 3)]

    def interrupt():
        for _ in range(100):
            if all((tmp_path / f"d-{s}.up").exists() for s in (1, 2)):
                break
            threading.Event().wait(0.1)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    progress, stopped = local_queue(tmp_path, jobs=2).run(jobs)
    assert stopped == 130
    assert (tmp_path / "d-1.sig").exists() and (tmp_path / "d-2.sig").exists() and not (tmp_path / "d-3.up").exists()
    assert [progress.status[j] for j in jobs] == ["queued"] * 3  # the same command continues them


def test_a_job_ended_by_a_signal_says_which():
    assert (exit_text(-9), exit_text(-2), exit_text(1)) == ("killed by SIGKILL", "killed by SIGINT", "exit code 1")


def test_device_lists_are_checked():
    assert parse_devices("0, 2,cpu") == ["0", "2", "cpu"]
    with pytest.raises(ValueError, match="'gpu0' is neither a GPU index"):
        parse_devices("gpu0")


# ----- what a sweep shows ----------------------------------------------------------------------------

def test_the_progress_table_counts_each_status_per_method_and_dataset(tmp_path):
    a, b = fake_method(tmp_path, "a"), fake_method(tmp_path, "b")
    jobs = [Job(a, "x.sh", ["dtd", 1], "dtd"), Job(a, "x.sh", ["dtd", 2], "dtd"), Job(b, "x.sh", ["eurosat", 1], "eurosat")]
    progress = Progress(jobs)
    progress.set(jobs[0], "done")
    progress.set(jobs[1], "running")
    rows = [line.split() for line in progress.table().splitlines()[2:]]
    assert rows == [["a", "dtd", "1", "1"], ["b", "eurosat", "1"], ["total", "1", "1", "1", "0"]]
    assert progress.line() == "1 queued, 1 running, 1 done"


def test_tail_lines_reads_only_the_end_of_a_big_log(tmp_path):
    log = tmp_path / "log"
    log.write_text("x\n" * 200_000 + "submitit INFO noise\nError: last\n\n")
    assert tail_lines(log, n=2, skip=("submitit ",)) == ["x", "Error: last"]
    assert tail_lines(tmp_path / "missing") == []


# ----- SLURM: arrays and dependencies, without a cluster ---------------------------------------------

def method_with(tmp_path, name, *scripts):
    return fake_method(tmp_path, name, **{os.path.splitext(s)[0]: "" for s in scripts})


def launcher():
    """A ``SlurmLauncher`` without its cluster checks (only its grouping is used)."""
    return SlurmLauncher.__new__(SlurmLauncher)


def dependencies(arrays):
    """Each array's jobs (as texts) and dependency, with job ids assigned as sbatch would (array i: "<i>_k")."""
    submissions, shown = {}, []
    for number, (group, dependency) in enumerate(arrays, start=10):
        text = dependency(submissions)
        for k, job in enumerate(group):
            submissions[job] = Submission(job, f"{number}_{k}" if len(group) > 1 else str(number), "", True)
        shown.append(([j.text().split("scripts/")[1] for j in group], text))
    return shown


def test_base_to_novel_evaluations_wait_element_by_element_for_their_training_array(tmp_path):
    method = method_with(tmp_path, "dpl", "base2new_train.sh", "base2new_test.sh")
    jobs = jobs_for("base2new", method, ["dtd", "eurosat"], [1, 2], [], "10", "imagenet")
    shown = dependencies(launcher()._arrays(jobs, {}))
    assert shown == [
        (["dpl/base2new_train.sh dtd 1", "dpl/base2new_train.sh dtd 2", "dpl/base2new_train.sh eurosat 1",
          "dpl/base2new_train.sh eurosat 2"], ""),
        (["dpl/base2new_test.sh dtd 1", "dpl/base2new_test.sh dtd 2", "dpl/base2new_test.sh eurosat 1",
          "dpl/base2new_test.sh eurosat 2"], "aftercorr:10"),
    ]


def test_cross_dataset_evaluations_form_one_array_per_target(tmp_path):
    method = method_with(tmp_path, "dpl", "xd_train.sh", "xd_test.sh")
    jobs = jobs_for("xd", method, ["dtd", "eurosat"], [1, 2], [], "10", "imagenet")
    shown = dependencies(launcher()._arrays(jobs, {}))
    assert shown == [
        (["dpl/xd_train.sh 1", "dpl/xd_train.sh 2"], ""),
        (["dpl/xd_test.sh dtd 1", "dpl/xd_test.sh dtd 2"], "aftercorr:10"),
        (["dpl/xd_test.sh eurosat 1", "dpl/xd_test.sh eurosat 2"], "aftercorr:10"),
    ]


def test_evaluations_of_one_training_job_or_of_an_earlier_submission_wait_with_afterok(tmp_path):
    method = method_with(tmp_path, "dpl", "base2new_train.sh", "base2new_test.sh")
    train, test = jobs_for("base2new", method, ["dtd"], [1], [], "10", "imagenet")
    assert dependencies(launcher()._arrays([train, test], {})) == [
        (["dpl/base2new_train.sh dtd 1"], ""), (["dpl/base2new_test.sh dtd 1"], "afterok:10")]
    earlier = {train: Submission(train, "7_3", "", new=False)}  # queued by an earlier command
    arrays = launcher()._arrays([test], earlier)
    assert [(len(group), dependency(earlier)) for group, dependency in arrays] == [(1, "afterok:7_3")]


def test_sbatch_settings_cancel_orphans_and_requeue(tmp_path):
    params = SlurmOptions(partition="gpu", time_min=30, gpus_per_job=1, mem="32G",
                          sbatch_args={"account": "lab", "kill-on-invalid-dep": "no"}).parameters()
    assert params["partition"] == "gpu" and params["time"] == 30 and params["gpus_per_node"] == 1
    assert params["mem"] == "32G" and params["cpus_per_task"] == 4
    assert params["additional_parameters"] == {"kill-on-invalid-dep": "no", "requeue": True, "account": "lab"}
    assert SlurmOptions().parameters()["additional_parameters"]["kill-on-invalid-dep"] == "yes"


def test_a_job_with_several_gpus_trains_its_run_on_one_torchrun_process_per_gpu(tmp_path):
    method = method_with(tmp_path, "dpl", "base2new_train.sh", "base2new_test.sh")
    train, _ = jobs_for("base2new", method, ["dtd"], [1], [], "10", "imagenet")
    env = {"DATA": "/data", "OUTPUT": "/out"}

    def job_env(env, options):
        slurm = launcher()
        slurm.env, slurm.options, slurm.planner = env, options, SimpleNamespace(opts=lambda job: [])
        return slurm._call(train).env

    assert _pick(job_env(env, SlurmOptions(gpus_per_job=4, cpus_per_job=16))) == ("4", "4")  # CPUs shared
    assert _pick(job_env(env, SlurmOptions(gpus_per_job=1))) == (None, "4")
    assert _pick(job_env({**env, "NPROC": "2"}, SlurmOptions(cpus_per_job=8))) == ("2", "4")  # CPU nodes


def _pick(env):
    return env.get("NPROC"), env.get("OMP_NUM_THREADS")


@pytest.mark.slow
def test_the_local_launcher_refuses_several_processes_per_job_on_single_gpus(tmp_path):
    env = script_env(tmp_path, tmp_path / "out", NPROC=2)
    proc = run_protocol("base2new", "--datasets", "dtd", "--launcher", "local", "--devices", "0,1", env=env)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (
        "run_protocol.py: error: NPROC=2 with --devices: the local launcher gives each job one GPU; run a "
        "multi-GPU job with --launcher slurm --gpus-per-job N, or the scripts with NPROC alone")


def test_a_damaged_job_record_is_named_not_ignored(tmp_path):
    record = JobRecord(str(tmp_path))
    record.add([("k1", "bash scripts/a.sh", "5_0"), ("k2", "bash scripts/b.sh", "6")])
    record.add([("k1", "bash scripts/a.sh", "9_1")])
    assert record.read() == {"k1": "9_1", "k2": "6"}
    with open(record.path, "a") as f:
        f.write("not json\n")
    with pytest.raises(SlurmError, match=r"submitted\.jsonl, line 4, is not a job record: move the file away"):
        record.read()


def test_a_signalled_job_waits_for_its_script_to_stop_and_requeues_the_same_call(tmp_path):
    """submitit calls ``checkpoint`` from its SIGUSR2 handler, interrupting ``__call__``'s wait for the script."""
    script = tmp_path / "job.sh"
    script.write_text(f"trap 'echo checkpointed > {tmp_path}/ckpt; exit 140' USR2\ntouch {tmp_path}/up\n"
                      "sleep 30 & wait\n")
    call = ScriptCall(["bash", str(script)], {"TAG": "x"}, "bash job.sh")
    requeued = []

    class Requeued(BaseException):
        pass

    def handler(signum, frame):  # what submitit's handler does: checkpoint, then leave
        requeued.append(call.checkpoint())
        raise Requeued

    def signal_when_up():
        while not (tmp_path / "up").exists():
            threading.Event().wait(0.05)
        os.kill(os.getpid(), signal.SIGUSR2)

    previous = signal.signal(signal.SIGUSR2, handler)
    try:
        threading.Thread(target=signal_when_up, daemon=True).start()
        with pytest.raises(Requeued):
            call()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert (tmp_path / "ckpt").read_text() == "checkpointed\n"
    again = requeued[0].function
    assert isinstance(again, ScriptCall) and again is not call
    assert (again.command, again.env, again.text) == (call.command, call.env, call.text)
    assert pickle.loads(pickle.dumps(again)).command == call.command  # no process handle travels with it


def test_a_failed_script_leaves_its_job_with_its_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "from dpl.protocols.slurm import ScriptCall; "
                           "ScriptCall(['bash', '-c', 'echo Error: no data >&2; exit 3'], {}, 'bash x.sh')()"],
                          capture_output=True, text=True)
    assert proc.returncode == 3
    assert proc.stderr.splitlines()[-2:] == ["Error: no data", "bash x.sh: exit code 3"]


# ----- run_protocol.py's options ---------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("argv, message", [
    (["--jobs", "2"], "--jobs: only with --launcher local"),
    (["--launcher", "local", "--wait"], "--wait: only with --launcher slurm"),
    (["--launcher", "slurm", "--time", "2:xx"], "--time 2:xx: expected minutes or sbatch's [D-]H:M:S"),
    (["--launcher", "local", "--devices", "a100"], "'a100' is neither a GPU index"),
    (["--launcher", "slurm", "--sbatch-arg", "=3"], "expected NAME=VALUE"),
])
def test_launcher_options_are_checked_in_one_line(tmp_path, argv, message):
    proc = run_protocol("base2new", "--datasets", "dtd", *argv, env=script_env(tmp_path, tmp_path / "out"))
    assert proc.returncode == 2 and message in proc.stderr.splitlines()[-1]


@pytest.mark.slow
def test_the_slurm_launcher_says_what_is_missing(tmp_path):
    env = script_env(tmp_path, tmp_path / "out", PATH=os.path.dirname(sys.executable) + ":/usr/bin/nonexistent")
    proc = run_protocol("base2new", "--datasets", "dtd", "--seeds", "1", "--launcher", "slurm",
                        "--", *pocket_sweep_opts(), env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --launcher slurm: no `sbatch` on PATH; run this on a SLURM login node (or start a local "
        "cluster: sudo bash scripts/local_slurm.sh start)")


# ----- end to end: two runs at a time give the sequential table -------------------------------------

def table_rows(stdout):
    """The rows of the protocol table printed at the end."""
    return [line for line in stdout.split("Base-to-novel")[-1].splitlines() if line.startswith("pocket")]


@pytest.mark.slow
def test_two_local_jobs_at_once_give_the_table_of_a_sequential_run(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    sweep = ["base2new", "--methods", "coop", "--datasets", "pocket", "--seeds", "1", "2", "--tag", "quick"]
    sequential = run_protocol(*sweep, "--table", "--", *pocket_sweep_opts(),
                              env=script_env(data, tmp_path / "sequential"))
    assert sequential.returncode == 0, sequential.stderr[-3000:]
    output = tmp_path / "queued"
    queued = run_protocol(*sweep, "--launcher", "local", "--jobs", "2", "--", *pocket_sweep_opts(),
                          env=script_env(data, output))
    assert queued.returncode == 0, queued.stderr[-3000:]
    assert "Running 4 job(s), 2 at a time" in queued.stdout
    assert table_rows(queued.stdout) == table_rows(sequential.stdout) and table_rows(queued.stdout)
    logs = output / "jobs" / "local" / "coop"
    times = {}
    for seed in (1, 2):
        text = (logs / f"base2new_train-pocket-{seed}.log").read_text()
        times[seed] = [re.search(rf"=== {word} (\S+)", text).group(1) for word in ("started", "ended")]
    assert times[1][0] < times[2][1] and times[2][0] < times[1][1]  # the two trainings overlapped
    again = run_protocol(*sweep, "--launcher", "local", "--jobs", "2", "--", *pocket_sweep_opts(),
                         env=script_env(data, output))
    assert "Plan: 4 jobs, 4 done, 0 to run" in again.stdout and "start " not in again.stdout
    assert table_rows(again.stdout) == table_rows(sequential.stdout)
