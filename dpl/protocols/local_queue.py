"""``run_protocol.py --launcher local``: a sweep's jobs on this machine, ``--jobs N`` at a time.

Each job runs its ``scripts/<method>/`` script in its own session, with its output appended to its own
log file (``<OUTPUT>/jobs/local/<method>/<script>-<args>.log``, one header per attempt), on one device of
``--devices`` (through ``CUDA_VISIBLE_DEVICES``; ``cpu`` hides every GPU) and with
``OMP_NUM_THREADS`` = this machine's cores / N (unless the environment sets it), so that concurrent runs
do not oversubscribe the CPU. An evaluation starts once the training it evaluates has ended well; if
that training fails, the evaluation is ``cancelled``. A failed job stops the queue from starting new jobs
(the running ones finish) unless ``--keep-going``. Ctrl-C or SIGTERM reaches every running job, which
saves its last checkpoint at its next step boundary; the same command then continues.
"""
import datetime
import os
import signal
import subprocess
import time

from .progress import LiveView, Progress
from .sweep import FORWARDED_SIGNALS

POLL_SECONDS = 0.2
LOG_HEADER = "=== "  # the queue's lines in a job's log (an attempt's start and end)


def available_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parse_devices(text):
    """``--devices 0,1,3`` -> ["0", "1", "3"]; ``cpu`` -> ["cpu"]; a one-line error for anything else."""
    devices = [d.strip() for d in text.split(",") if d.strip()]
    for device in devices:
        if device != "cpu" and not device.isdigit():
            raise ValueError(f"--devices {text}: '{device}' is neither a GPU index (0, 1, ...) nor 'cpu'")
    if not devices:
        raise ValueError(f"--devices {text!r} names no device: give GPU indices (0,1,...) or cpu")
    return devices


def job_log_path(log_root, job):
    name = "-".join([os.path.splitext(job.script)[0], *map(str, job.args)])
    return os.path.join(log_root, job.method.name, f"{name}.log")


class LocalQueue:
    """Runs jobs concurrently; ``run(jobs)`` returns ``(progress, exit code of a stop by signal or None)``."""

    def __init__(self, planner, env, log_root, jobs=1, devices=None, keep_going=False, view=None):
        self.planner, self.env, self.log_root = planner, env, log_root
        self.slots = max(1, jobs)
        self.devices = list(devices or [])
        self.keep_going = keep_going
        self.view = view or LiveView()
        self.threads = env.get("OMP_NUM_THREADS") or str(max(1, available_cores() // self.slots))
        self.running = {}  # job -> (Popen, device, log file object)
        self.signum = None

    # ----- one job ---------------------------------------------------------------------------------

    def _device(self):
        if not self.devices:
            return None
        load = {device: 0 for device in self.devices}
        for _, device, _ in self.running.values():
            load[device] += 1
        return min(self.devices, key=lambda device: load[device])  # the least busy, in the given order

    def _job_env(self, device):
        env = dict(self.env, OMP_NUM_THREADS=self.threads, PYTHONUNBUFFERED="1")
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = "" if device == "cpu" else device
        return env

    def _start(self, job, progress):
        device = self._device()
        command = job.command(self.planner.opts(job))
        path = job_log_path(self.log_root, job)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        log = open(path, "a", buffering=1)
        where = f"device {device}, " if device is not None else ""
        log.write(f"{LOG_HEADER}started {_now()} ({where}OMP_NUM_THREADS={self.threads}): {' '.join(command)}\n")
        # Its own session: a Ctrl-C in the terminal reaches each job once, through us.
        proc = subprocess.Popen(command, env=self._job_env(device), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.running[job] = (proc, device, log)
        progress.set(job, "running")
        progress.logs[job] = path
        self.view.print(f"start   {job.text()}  ({where}log: {path})")

    def _finish(self, job, code, progress):
        _, _, log = self.running.pop(job)
        log.write(f"{LOG_HEADER}ended {_now()} with exit code {code}\n")
        log.close()
        if code == 0:
            progress.set(job, "done")
            self.view.print(f"done    {job.text()}")
        elif self.signum is not None:  # stopped by us: it continues on the next run of the sweep
            progress.set(job, "queued")
            self.view.print(f"stopped {job.text()} ({exit_text(code)}; its last checkpoint is kept)")
        else:
            progress.set(job, "failed", exit_text(code))
            self.view.print(f"FAILED  {job.text()} ({exit_text(code)}; log: {progress.logs[job]})")

    # ----- the queue -------------------------------------------------------------------------------

    def _ready(self, job, progress, todo):
        """True when ``job`` may start; cancels it when the training it evaluates failed."""
        after = job.after
        if after is None or after not in todo:
            return True
        if progress.status[after] in ("failed", "cancelled"):
            progress.set(job, "cancelled", f"its training {after.text()} did not finish")
            return False
        return progress.status[after] == "done"

    def _forward(self, signum, frame):
        self.signum = self.signum or FORWARDED_SIGNALS[signum]
        for proc, _, _ in self.running.values():
            if proc.poll() is None:
                proc.send_signal(FORWARDED_SIGNALS[signum])

    def run(self, jobs):
        todo = set(jobs)
        progress = Progress(jobs, error_skip=[LOG_HEADER])
        previous = {s: signal.signal(s, self._forward) for s in FORWARDED_SIGNALS}
        stop_starting = False
        try:
            while True:
                for job, (proc, _, _) in list(self.running.items()):
                    code = proc.poll()
                    if code is not None:
                        self._finish(job, code, progress)
                        stop_starting |= code != 0 and not self.keep_going
                stop_starting |= self.signum is not None
                if not stop_starting:
                    for job in jobs:
                        if len(self.running) >= self.slots:
                            break
                        if progress.status[job] == "queued" and self._ready(job, progress, todo):
                            self._start(job, progress)
                self.view.show(f"[local] {progress.line()}")
                if not self.running:
                    break
                time.sleep(POLL_SECONDS)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return progress, (128 + self.signum if self.signum is not None else None)


def exit_text(code):
    """``exit code 1``, or ``killed by SIGKILL`` for a process a signal ended (a negative return code)."""
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


def _now():
    return datetime.datetime.now().isoformat(timespec="milliseconds")
