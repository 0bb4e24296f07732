"""A whole protocol (datasets x seeds x methods) as a queue of script jobs: what ``scripts/run_protocol.py`` runs.

``jobs_for`` lists the ``scripts/<method>/*.sh`` calls of one method, each test right after the training it
evaluates. ``Planner`` asks the same code the scripts run (``dpl.protocols.steps`` / ``runner``) for each
job's runs and their state: ``done`` (every run holds its final result: not started), ``resume``, ``todo``,
``conflict`` (a folder of another experiment) or ``error`` (a mistake found while planning). ``run_queue``
runs the jobs one after another, each in its own session, passing Ctrl-C / SIGTERM on to the running job.
"""
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional

from dpl.engine import TRAINER_REGISTRY
from dpl.results.identity import default_config
from dpl.tools.train import user_error_exit

from .methods import ProtocolError
from .runner import PlanConfigError, plan_request, state_of
from .steps import STEPS, step_context

_STEP_CALL = re.compile(r"^([a-z_0-9]+) \"\$@\"$", re.M)


class ScriptError(Exception):
    """A script of ``scripts/<method>/`` that runs no protocol step: the scripts folder itself is broken."""


@dataclass(eq=False)
class Job:
    """One call of a method's script with its positional arguments."""

    method: object  # methods.Method
    script: str  # e.g. "base2new_train.sh"
    args: list
    dataset: str = ""  # the dataset its runs use (a table's column)
    after: Optional["Job"] = None  # the training job whose model this job evaluates (it must end first)

    @property
    def path(self):
        return os.path.join(self.method.folder, self.script)

    def command(self, opts):
        return ["bash", self.path, *map(str, self.args), *opts]

    def text(self):
        return " ".join(["bash", f"scripts/{self.method.name}/{self.script}", *map(str, self.args)])

    def step(self):
        """The protocol step the script runs (its last line, e.g. ``base2new_train "$@"``)."""
        with open(self.path, "r") as f:
            calls = _STEP_CALL.findall(f.read())
        if not calls or calls[-1] not in STEPS:
            raise ScriptError(f"scripts/{self.method.name}/{self.script} runs no protocol step")
        return calls[-1]


def jobs_for(protocol, method, datasets, seeds, shots, ratio, source):
    """The jobs of one method, each test right after the training it evaluates (its ``after``); a
    training-free method runs for the first seed only (its run stands for every seed in the tables)."""
    if method.training_free:
        seeds = seeds[:1]

    def pair(train_script, test_script, args):
        train = Job(method, train_script, args, args[0]) if method.has_script(train_script) else None
        test = Job(method, test_script, args, args[0], after=train) if method.has_script(test_script) else None
        return [job for job in (train, test) if job is not None]

    jobs = []
    if protocol == "base2new":
        for dataset in datasets:
            for seed in seeds:
                jobs += pair("base2new_train.sh", "base2new_test.sh", [dataset, seed])
    elif protocol in ("xd", "dg"):
        for seed in seeds:
            if method.has_script("xd_train.sh"):
                train = Job(method, "xd_train.sh", [seed], source)
                jobs.append(train)
            else:  # no training: the source column is an evaluation on the source dataset
                train = None
                jobs.append(Job(method, "xd_test.sh", [source, seed], source))
            jobs += [Job(method, "xd_test.sh", [d, seed], d, after=train) for d in datasets
                     if method.has_script("xd_test.sh")]
    elif protocol == "fewshot":
        if method.has_script("few_shot.sh"):
            jobs = [Job(method, "few_shot.sh", [d, k, s], d) for d in datasets for k in shots for s in seeds]
    elif protocol == "longtail":
        for dataset in datasets:
            for seed in seeds:
                jobs += pair("long_tail.sh", "long_tail_test.sh", [dataset, seed, ratio])
    return jobs


def trainer_node(key):
    """``NODE`` of a ``TRAINER.<NODE>.<KEY>`` option, else None."""
    parts = key.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "TRAINER" else None


def opts_for(trainer, opts):
    """The ``KEY VALUE`` options that apply to ``trainer``: keys of other trainers' nodes are left out
    (one sweep's ``TRAINER.DPL.IMPORTANCE`` must not stop the other methods with an unknown key)."""
    cls = TRAINER_REGISTRY.get(trainer) if trainer in TRAINER_REGISTRY.registered_names() else None
    nodes = cls.config_nodes() if cls is not None else None
    pairs = list(zip(opts[::2], opts[1::2]))
    kept = [(k, v) for k, v in pairs if nodes is None or trainer_node(k) is None or trainer_node(k) in nodes]
    return [item for pair in kept for item in pair]


def _job_word(words):
    """One state for a job from its runs' states (a job resumes when some of its runs are done)."""
    for state in ("conflict", "resume"):
        if state in words:
            return state
    if words == {"done"}:
        return "done"
    return "resume" if "done" in words else "todo"


class Planner:
    """The state of each job's runs, from the same code the scripts run (``dpl.protocols``)."""

    def __init__(self, env, opts):
        self.env, self.sweep_opts = env, opts
        self.defaults = default_config()  # also registers the trainers (for opts_for)

    def opts(self, job):
        return opts_for(job.method.trainer, self.sweep_opts)

    def job_state(self, job):
        """``(state, messages)``: ``done``, ``resume``, ``todo``, ``conflict`` or ``error``, and what is wrong."""
        context = step_context(job.method, f"{job.method.name}/{job.script}", self.env)
        load_epoch = self.env.get("LOADEP", "")
        try:
            requests = STEPS[job.step()](context, [str(a) for a in job.args] + self.opts(job))
            planned = [plan_request(r, job.method.trainer, self.env.get("DATA", ""), self.env.get("TAG", ""),
                                    self.defaults, load_epoch) for r in requests]
            states = [state_of(run, load_epoch) for run in planned]
        except (ProtocolError, PlanConfigError) as exc:
            return "error", [str(exc)]
        except Exception as exc:  # e.g. an unreadable checkpoint in a run folder: the plan goes on
            known = user_error_exit(exc)
            if known is None:
                raise
            return "error", [known[0]]
        messages = [message for word, _, message in states if word == "conflict"]
        return _job_word({word for word, _, _ in states}), messages


# What a queue passes on to its running jobs (which stop at their next step boundary) instead of stopping
# itself: a SIGHUP (the terminal closed) goes as SIGTERM, so that no job goes on alone, locking its folder.
FORWARDED_SIGNALS = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM, signal.SIGHUP: signal.SIGTERM}


class Forwarder:
    """While a job runs, the signals of ``forwarded`` (``{received: sent}``, ``FORWARDED_SIGNALS`` by
    default) go to it, not to us. ``signum`` is the first one sent, ``received`` the first one received."""

    def __init__(self, forwarded=None):
        self.forwarded = FORWARDED_SIGNALS if forwarded is None else forwarded
        self.proc = None
        self.signum = self.received = None

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._forward) for s in self.forwarded}
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False

    def _forward(self, signum, frame):
        self.received = self.received or signum
        self.signum = self.signum or self.forwarded[signum]
        self._send(self.forwarded[signum])

    def _send(self, signum):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def run(self, command, env, ignored=()):
        """Run ``command`` to its end; its exit code. ``ignored``: signals the job starts ignoring."""
        def ignore():
            for signum in ignored:
                signal.signal(signum, signal.SIG_IGN)

        # Its own session: a Ctrl-C in the terminal reaches the job once, through us.
        self.proc = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=ignore if ignored else None)
        if self.signum is not None:  # it came while the job was starting
            self._send(self.signum)
        try:
            return self.proc.wait()
        finally:
            self.proc = None


def run_queue(jobs, planner, env, keep_going=False):
    """Run ``jobs`` in order; ``(failed jobs, exit code of a stop by signal or None)``. A failed job stops
    the queue unless ``keep_going``; a signal stops it after the running job has stopped."""
    failed = []
    with Forwarder() as forwarder:
        for i, job in enumerate(jobs, start=1):
            if forwarder.signum is None:
                print(f"\n=== [{i}/{len(jobs)}] {job.text()}", flush=True)
                code = forwarder.run(job.command(planner.opts(job)), env)
            if forwarder.signum is not None:
                name = signal.Signals(forwarder.signum).name
                print(f"=== stopped by {name} at {job.text()} (its last checkpoint is kept); run the same command "
                      "again to continue", file=sys.stderr, flush=True)
                return failed, 128 + forwarder.signum
            if code != 0:
                failed.append(job)
                print(f"=== failed: {job.text()}", file=sys.stderr, flush=True)
                if not keep_going:
                    break
    return failed, None
