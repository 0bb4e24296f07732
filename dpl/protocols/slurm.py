"""``run_protocol.py --launcher slurm``: a sweep's jobs as SLURM job arrays, through submitit.

Each step of a method (``scripts/<method>/<script>``) is one job array. An evaluation array whose
elements evaluate, in order, the elements of a training array just submitted waits for them element by
element (``aftercorr``); where they do not line up (cross-dataset: ten evaluations per training run) the
evaluations form one array per target dataset, which then line up, or, failing that, one job each
(``afterok``). ``--kill-on-invalid-dep=yes``: an evaluation whose training failed is cancelled, not left
pending. Jobs are idempotent: a job runs the method's script, which skips a finished run and resumes an
unfinished one from its checkpoint (the run identity decides).

Time limits and preemption: SLURM sends SIGUSR2 ``signal_delay_s`` before the limit (submitit's
``--signal``). It reaches every process of the job: ``train.py`` stops at its next step boundary with its
checkpoint written, and submitit calls ``ScriptCall.checkpoint``, which waits for that and requeues the
job; the requeued job resumes the run where it stopped.

Every submitted job is recorded (``<OUTPUT>/jobs/slurm/submitted.jsonl``), with the submitit logs beside
it, so that running the same command again submits only the jobs that are neither finished nor still
queued or running, and ``--wait`` can watch a sweep submitted earlier. Without an accounting database
(``sacct``) job states come from ``squeue`` while SLURM remembers a job, then from the run folders.
"""
import datetime
import getpass
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict

from dpl.plugins import PLUGIN_ENV

from .cli import SCRIPT_ENVIRONMENT
from .progress import LiveView, Progress
from .torchrun import NPROC, processes_requested

# What a job needs from the sweep's environment besides its command (the rest is inherited through sbatch).
JOB_ENVIRONMENT = ("DATA", "OUTPUT", *SCRIPT_ENVIRONMENT, "PYTHON", PLUGIN_ENV, NPROC, "OMP_NUM_THREADS")
ACTIVE = {"PENDING": "queued", "CONFIGURING": "queued", "REQUEUED": "queued", "REQUEUE_HOLD": "queued",
          "REQUEUE_FED": "queued", "RESV_DEL_HOLD": "queued", "SUSPENDED": "queued", "STOPPED": "queued",
          "PREEMPTED": "queued", "RESIZING": "running", "RUNNING": "running", "COMPLETING": "running",
          "SIGNALING": "running", "STAGE_OUT": "running"}
ENDED = {"COMPLETED": "done", "CANCELLED": "cancelled", "FAILED": "failed", "TIMEOUT": "failed",
         "OUT_OF_MEMORY": "failed", "NODE_FAIL": "failed", "BOOT_FAIL": "failed", "DEADLINE": "failed",
         "REVOKED": "cancelled", "SPECIAL_EXIT": "failed"}
RECORD = "submitted.jsonl"
LAUNCHER_LOG_PREFIXES = ("submitit ", "srun: ")  # submitit's and srun's lines in a job's log (not the job's error)
CHECKPOINT_WAIT_SECONDS = 60  # how long a signalled job may take to write its checkpoint before it is requeued


class SlurmError(Exception):
    """SLURM or submitit is missing or refused a submission: one line for the user."""


@dataclass
class SlurmOptions:
    """The sbatch settings of every job of the sweep (``--partition``, ``--time``, ...)."""

    partition: str = ""
    time_min: int = 240
    gpus_per_job: int = 0
    cpus_per_job: int = 4
    mem: str = ""  # e.g. 32G
    array_parallelism: int = 64
    signal_delay_s: int = 90
    sbatch_args: Dict[str, str] = field(default_factory=dict)  # free-form: --sbatch-arg account=my_lab

    def parameters(self):
        """submitit's ``SlurmExecutor.update_parameters`` keywords."""
        extra = {"kill-on-invalid-dep": "yes", "requeue": True}
        extra.update(self.sbatch_args)
        params = dict(time=self.time_min, cpus_per_task=self.cpus_per_job, array_parallelism=self.array_parallelism,
                      signal_delay_s=self.signal_delay_s, additional_parameters=extra)
        if self.partition:
            params["partition"] = self.partition
        if self.gpus_per_job:
            params["gpus_per_node"] = self.gpus_per_job
        if self.mem:
            params["mem"] = self.mem
        return params


def parse_sbatch_arg(text):
    """``--sbatch-arg account=lab`` -> ("account", "lab"); ``--sbatch-arg exclusive`` -> ("exclusive", True)."""
    key, sep, value = text.partition("=")
    key = key.strip().lstrip("-")
    if not key:
        raise ValueError(f"--sbatch-arg {text!r}: expected NAME=VALUE (an sbatch option without its dashes)")
    return key, (value if sep else True)


class ScriptCall:
    """What a SLURM job runs (pickled by submitit): one script of ``scripts/<method>/``, in a subprocess."""

    def __init__(self, command, env, text):
        self.command, self.env, self.text = list(command), dict(env), text
        self._proc = None

    def __getstate__(self):
        return {"command": self.command, "env": self.env, "text": self.text}

    def __setstate__(self, state):
        self.__init__(**state)

    def __call__(self):
        self._proc = subprocess.Popen(self.command, env={**os.environ, **self.env})
        code = _wait(self._proc)
        self._proc = None
        if code:
            # Leaving with the script's exit code (no exception) keeps the log's last lines the script's.
            print(f"{self.text}: exit code {code}", file=sys.stderr, flush=True)
            sys.exit(code)
        return 0

    def checkpoint(self):
        """Called by submitit on SIGUSR2 (the time limit is near, or the job is preempted): the script got the
        signal too and is writing its checkpoint; wait for it, then requeue the same call."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGUSR2)  # a repeated stop request changes nothing for train.py
            _wait(proc, timeout=CHECKPOINT_WAIT_SECONDS)
        import submitit  # an optional extra (`.[cluster]`): imported where a SLURM job needs it

        return submitit.helpers.DelayedSubmission(ScriptCall(self.command, self.env, self.text))


def _wait(proc, timeout=None):
    """``proc``'s exit code (None after ``timeout`` seconds). Polls instead of ``Popen.wait``: ``checkpoint``
    runs in a signal handler that interrupts this very wait, and a blocking wait holds a lock the handler's
    own wait would then never get."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while proc.poll() is None:
        if deadline is not None and time.monotonic() > deadline:
            return None
        time.sleep(0.2)
    return proc.returncode


# ----- the record of submitted jobs ------------------------------------------------------------------

def job_key(command, env):
    """What makes two submissions the same job: its command and the environment that changes its runs."""
    return json.dumps([command[1:], {k: env.get(k, "") for k in JOB_ENVIRONMENT if k != "OMP_NUM_THREADS"}])


class JobRecord:
    """``submitted.jsonl``: one line per submitted job (key, job text, SLURM job id, time)."""

    def __init__(self, folder):
        self.path = os.path.join(folder, RECORD)

    def read(self):
        """key -> the last job id submitted for it."""
        ids = {}
        try:
            with open(self.path, "r") as f:
                for number, line in enumerate(f, start=1):
                    try:
                        entry = json.loads(line)
                        ids[entry["key"]] = entry["job_id"]
                    except (ValueError, KeyError, TypeError):
                        raise SlurmError(f"{self.path}, line {number}, is not a job record: move the file "
                                         "away (its jobs are then no longer recognised as this sweep's)") from None
        except FileNotFoundError:
            pass
        return ids

    def add(self, entries):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        with open(self.path, "a") as f:  # appended in one write: concurrent sweeps do not interleave lines
            f.write("".join(json.dumps({"key": k, "job": text, "job_id": jid, "submitted": stamp}) + "\n"
                            for k, text, jid in entries))


# ----- SLURM's view of the jobs ----------------------------------------------------------------------

def require_slurm():
    try:
        import submitit  # noqa: F401
    except ModuleNotFoundError:
        raise SlurmError("--launcher slurm needs submitit: pip install -e '.[cluster]' in this checkout") from None
    for tool in ("sbatch", "squeue"):
        if shutil.which(tool) is None:
            raise SlurmError(f"--launcher slurm: no `{tool}` on PATH; run this on a SLURM login node "
                             "(or start a local cluster: sudo bash scripts/local_slurm.sh start)")


def squeue_states():
    """Job id ("123" or "123_4") -> SLURM state, for the jobs SLURM still remembers (this user's)."""
    proc = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-u", getpass.getuser(), "-o", "%i|%T"],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SlurmError(f"squeue failed: {proc.stderr.strip() or proc.stdout.strip()}")
    states = {}
    for line in proc.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        states[job_id] = state.split()[0] if state else ""
    return states


def submitit_log(folder, job_id, stream="err"):
    """The file submitit writes a job's stderr (or stdout) to."""
    return os.path.join(folder, f"{job_id}_0_log.{stream}")


# ----- submission ------------------------------------------------------------------------------------

@dataclass
class Submission:
    """A job of the sweep as SLURM knows it."""

    job: object
    job_id: str
    key: str
    new: bool  # submitted by this command (not found queued from an earlier one)


class SlurmLauncher:
    """Submits a sweep's jobs as arrays, skips those queued or running already, and watches them."""

    def __init__(self, planner, env, folder, options, view=None, poll_seconds=5.0):
        require_slurm()
        self.planner, self.env, self.folder, self.options = planner, env, folder, options
        self.view = view or LiveView()
        self.poll_seconds = poll_seconds
        self.record = JobRecord(folder)

    def _command(self, job):
        return job.command(self.planner.opts(job))

    def _call(self, job):
        env = {k: self.env[k] for k in JOB_ENVIRONMENT if self.env.get(k)}
        if self.options.gpus_per_job > 1:  # one run on several GPUs: a torchrun process per GPU
            env.setdefault(NPROC, str(self.options.gpus_per_job))
        processes = processes_requested(env)
        env.setdefault("OMP_NUM_THREADS", str(max(1, self.options.cpus_per_job // processes)))
        env["PYTHONUNBUFFERED"] = "1"
        return ScriptCall(self._command(job), env, job.text())

    def _executor(self, name, dependency=""):
        import submitit  # an optional extra (`.[cluster]`): imported where a SLURM job needs it

        executor = submitit.SlurmExecutor(folder=self.folder, python=sys.executable)
        params = self.options.parameters()
        if dependency:
            params["dependency"] = dependency
        executor.update_parameters(job_name=name, **params)
        return executor

    def _submit(self, jobs, dependency=""):
        """Submits ``jobs`` as one array (or one job); their SLURM ids, in order."""
        first = jobs[0]
        name = f"dpl-{first.method.name}-{os.path.splitext(first.script)[0]}"
        executor = self._executor(name, dependency)
        calls = [self._call(job) for job in jobs]
        try:
            submitted = executor.submit_array(calls) if len(calls) > 1 else [executor.submit(calls[0])]
        except Exception as exc:  # submitit raises on any sbatch failure
            raise SlurmError(f"sbatch refused {name}: {str(exc).strip().splitlines()[-1]}") from None
        return [s.job_id for s in submitted]

    def submit(self, jobs):
        """Submits ``jobs`` (planned as not done) except those queued or running already."""
        os.makedirs(self.folder, exist_ok=True)
        recorded, states = self.record.read(), squeue_states()
        keys = {job: job_key(self._command(job), self.env) for job in jobs}
        submissions, to_submit = {}, []
        for job in jobs:
            job_id = recorded.get(keys[job])
            if job_id is not None and states.get(job_id) in ACTIVE:
                submissions[job] = Submission(job, job_id, keys[job], new=False)
            else:
                to_submit.append(job)
        for group, dependency in self._arrays(to_submit, submissions):
            ids = self._submit(group, dependency(submissions))
            entries = []
            for job, job_id in zip(group, ids):
                submissions[job] = Submission(job, job_id, keys[job], new=True)
                entries.append((keys[job], job.text(), job_id))
            self.record.add(entries)
        return [submissions[job] for job in jobs]

    def _arrays(self, jobs, submissions):
        """``(jobs of one array, dependency function)`` in submission order: trainings first, then
        evaluations. The dependency is computed once the trainings have their ids."""
        pending = set(jobs)
        independent = _groups([job for job in jobs if job.after is None or job.after not in pending])
        evaluations = [job for job in jobs if job.after is not None and job.after in pending]
        arrays = [(group, lambda subs: "") for group in independent]
        for group in _groups(evaluations):
            arrays += _evaluation_arrays(group, independent)
        # An evaluation whose training is still queued from an earlier command waits for that job.
        for i, (group, dependency) in enumerate(arrays):
            waiting = [job for job in group if job.after is not None and job.after in submissions]
            if waiting:
                arrays[i] = (group, lambda subs, group=group: _afterok(group, subs))
        return arrays

    # ----- watching --------------------------------------------------------------------------------

    def update(self, progress, submissions):
        """Sets each job's status from SLURM (or, once SLURM forgot it, from its run folders)."""
        states = squeue_states()
        for sub in submissions:
            state = states.get(sub.job_id)
            progress.logs[sub.job] = submitit_log(self.folder, sub.job_id)
            if state in ACTIVE:
                progress.set(sub.job, ACTIVE[state])
            elif state in ENDED:
                progress.set(sub.job, ENDED[state], "" if ENDED[state] == "done" else f"SLURM: {state}")
            elif progress.status[sub.job] in ("queued", "running"):
                done = self.planner.job_state(sub.job)[0] == "done"
                progress.set(sub.job, "done" if done else "failed", "" if done else "ended unfinished")

    def watch(self, submissions):
        """Shows the table until every job has ended; returns the ``Progress``. Ctrl-C stops watching only."""
        progress = Progress([sub.job for sub in submissions], error_skip=LAUNCHER_LOG_PREFIXES)
        try:
            while True:
                self.update(progress, submissions)
                self.view.show(progress.table())
                if not progress.active():
                    return progress
                time.sleep(self.poll_seconds)
        except KeyboardInterrupt:
            self.view.print("Stopped watching; the jobs go on in SLURM: run the same command to watch them again")
            raise


def _groups(jobs):
    """Jobs grouped by (method, script), in order of first appearance."""
    groups = {}
    for job in jobs:
        groups.setdefault((job.method.name, job.script), []).append(job)
    return list(groups.values())


def _evaluation_arrays(group, trainings):
    """Evaluation arrays that wait element by element for a training array (``aftercorr``), else one job
    each (``afterok``)."""
    owner = {job: array for array in trainings for job in array}

    def aligned(evaluations):
        array = owner.get(evaluations[0].after)
        return array is not None and [job.after for job in evaluations] == array

    if aligned(group):
        return [(group, lambda subs, g=group: _aftercorr(g, subs))]
    per_dataset = {}
    for job in group:
        per_dataset.setdefault(job.dataset, []).append(job)
    if all(aligned(part) for part in per_dataset.values()):
        return [(part, lambda subs, p=part: _aftercorr(p, subs)) for part in per_dataset.values()]
    return [([job], lambda subs, j=job: _afterok([j], subs)) for job in group]


def _aftercorr(evaluations, submissions):
    """Element i of this array starts after element i of its training array ended well (a one-job
    training is no array: plain ``afterok``)."""
    training_id = submissions[evaluations[0].after].job_id
    if "_" not in training_id:
        return f"afterok:{training_id}"
    return f"aftercorr:{training_id.split('_')[0]}"


def _afterok(evaluations, submissions):
    ids = sorted({submissions[job.after].job_id for job in evaluations if job.after in submissions})
    return ",".join(f"afterok:{job_id}" for job_id in ids)
