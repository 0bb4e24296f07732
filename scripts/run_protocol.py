#!/usr/bin/env python
"""Run a whole protocol (datasets x seeds x methods) with the scripts under scripts/<method>/, then its table.

    export DATA=/path/to/datasets
    python scripts/run_protocol.py base2new --methods dpl promptsrc zsclip --dry-run   # the plan only
    python scripts/run_protocol.py base2new --methods dpl promptsrc zsclip --table     # run, then the table
    python scripts/run_protocol.py fewshot --methods coop --datasets dtd --shots 1 4 16 -- OPTIM.MAX_EPOCH 5

Arguments after ``--`` are KEY VALUE pairs passed to every script (and from there to train.py), except
that a key of a trainer's own node (``TRAINER.DPL.IMPORTANCE``) goes only to the methods whose trainer
reads that node (the plan says so). When they change the experiment, every run lands in its own
``<cfg>@<KEY=value,...>`` folder (or ``<cfg>@<TAG>`` with ``--tag``) and shows as its own row of the table. Jobs run one after another in
the order of the plan (each test right after its training). The plan asks the same code the scripts
run (``dpl.protocols``) for each run's folder and compares the run identity recorded there: a job
whose runs hold their final result is ``done`` and not started, an unfinished one is resumed by its
script, and a folder of another experiment is a ``conflict`` (never reused). Methods are the folders
of ``scripts/`` with a ``method.sh``. Zero-shot CLIP (``zsclip``) is deterministic and runs for the
first seed only. Environment: DATA, OUTPUT, CFG, LOADEP as for the scripts.

Ctrl-C (or SIGTERM) is passed to the running job, which finishes its current step, saves its last
checkpoint and stops; the queue stops after it. Running the same command again continues.
"""
import argparse
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
ZERO_SHOT = "zsclip"
_STEP_CALL = re.compile(r"^([a-z_0-9]+) \"\$@\"$", re.M)

try:
    from dpl.protocols import methods as protocol_methods
    from dpl.protocols.cli import step_context
    from dpl.protocols.methods import ProtocolError
    from dpl.engine import TRAINER_REGISTRY
    from dpl.protocols.runner import PlanConfigError, plan_request, state_of
    from dpl.protocols.steps import STEPS
    from dpl.results import layout
    from dpl.results.identity import default_config
    from dpl.tools.train import user_error_exit
except ModuleNotFoundError as exc:
    sys.exit(f"error: {sys.executable} cannot import {exc.name}: run this with the project's interpreter, e.g. "
             f"{REPO}/.venv/bin/python scripts/run_protocol.py ... (`make test` creates .venv)")


@dataclass
class Job:
    method: str
    script: str
    args: list

    def command(self, opts):
        return ["bash", str(SCRIPTS / self.method / self.script), *map(str, self.args), *opts]

    def text(self):
        return " ".join(["bash", f"scripts/{self.method}/{self.script}", *map(str, self.args)])

    def step(self):
        """The protocol step the script runs (its last line, e.g. ``base2new_train "$@"``)."""
        calls = _STEP_CALL.findall((SCRIPTS / self.method / self.script).read_text())
        if not calls or calls[-1] not in STEPS:
            raise SystemExit(f"error: scripts/{self.method}/{self.script} runs no protocol step")
        return calls[-1]


def jobs_for(protocol, method, datasets, seeds, shots, ratio, source):
    """The jobs of one method, each test right after the training it evaluates."""
    if method.name == ZERO_SHOT:
        seeds = seeds[:1]
    name, jobs = method.name, []
    if protocol == "base2new":
        for dataset in datasets:
            for seed in seeds:
                jobs += [Job(name, s, [dataset, seed]) for s in ("base2new_train.sh", "base2new_test.sh")
                         if method.has_script(s)]
    elif protocol in ("xd", "dg"):
        for seed in seeds:
            if method.has_script("xd_train.sh"):
                jobs.append(Job(name, "xd_train.sh", [seed]))
            else:  # no training: the source column is an evaluation on the source dataset
                jobs.append(Job(name, "xd_test.sh", [source, seed]))
            jobs += [Job(name, "xd_test.sh", [d, seed]) for d in datasets if method.has_script("xd_test.sh")]
    elif protocol == "fewshot":
        if method.has_script("few_shot.sh"):
            jobs = [Job(name, "few_shot.sh", [d, k, s]) for d in datasets for k in shots for s in seeds]
    elif protocol == "longtail":
        for dataset in datasets:
            for seed in seeds:
                jobs += [Job(name, s, [dataset, seed, ratio]) for s in ("long_tail.sh", "long_tail_test.sh")
                         if method.has_script(s)]
    return jobs


def trainer_node(key):
    """``NODE`` of a ``TRAINER.<NODE>.<KEY>`` option, else None."""
    parts = key.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "TRAINER" else None


def opts_for(trainer, opts):
    """The ``KEY VALUE`` options that apply to ``trainer``: keys of other trainers' nodes are left out."""
    cls = TRAINER_REGISTRY.get(trainer) if trainer in TRAINER_REGISTRY.registered_names() else None
    nodes = cls.config_nodes() if cls is not None else None
    pairs = list(zip(opts[::2], opts[1::2]))
    kept = [(k, v) for k, v in pairs if nodes is None or trainer_node(k) is None or trainer_node(k) in nodes]
    return [item for pair in kept for item in pair]


class Planner:
    """The state of each job's runs, from the same code the scripts run (``dpl.protocols``)."""

    def __init__(self, methods, env, opts):
        self.methods, self.env, self.sweep_opts = methods, env, opts
        self.defaults = default_config()  # also registers the trainers (for opts_for)

    def opts(self, job):
        return opts_for(self.methods[job.method].trainer, self.sweep_opts)

    def job_state(self, job):
        """``(state, messages)``: done / resume / todo / conflict / error, and what is wrong."""
        method = self.methods[job.method]
        context = step_context(method, f"{job.method}/{job.script}", self.env)
        load_epoch = self.env.get("LOADEP", "")
        try:
            requests = STEPS[job.step()](context, [str(a) for a in job.args] + self.opts(job))
            planned = [plan_request(r, method.trainer, self.env.get("DATA", ""), self.env.get("TAG", ""),
                                    self.defaults, load_epoch) for r in requests]
            states = [state_of(run, load_epoch) for run in planned]
        except (ProtocolError, PlanConfigError) as exc:
            return "error", [str(exc)]
        except Exception as exc:  # e.g. an unreadable checkpoint in a run folder: the plan goes on
            known = user_error_exit(exc)
            if known is None:
                raise
            return "error", [known[0]]
        words = {word for word, _, _ in states}
        messages = [message for word, _, message in states if word == "conflict"]
        for state in ("conflict", "resume"):
            if state in words:
                return state, messages
        if words == {"done"}:
            return "done", messages
        return ("resume" if "done" in words else "todo"), messages


class Forwarder:
    """While a job runs, SIGINT/SIGTERM go to it (it stops at its next step boundary), not to us; a
    SIGHUP (the terminal closed) goes to it as SIGTERM, so that it does not go on alone, locking its folder."""

    FORWARDED = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM, signal.SIGHUP: signal.SIGTERM}

    def __init__(self):
        self.proc = None
        self.signum = None

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._forward) for s in self.FORWARDED}
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False

    def _forward(self, signum, frame):
        self.signum = self.signum or self.FORWARDED[signum]
        self._send(self.FORWARDED[signum])

    def _send(self, signum):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def run(self, command, env):
        # Its own session: a Ctrl-C in the terminal reaches the job once, through us.
        self.proc = subprocess.Popen(command, env=env, start_new_session=True)
        if self.signum is not None:  # it came while the job was starting
            self._send(self.signum)
        try:
            return self.proc.wait()
        finally:
            self.proc = None


def build_parser(method_names):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("protocol", choices=sorted(layout.PROTOCOL_DATASETS))
    p.add_argument("--methods", nargs="+", default=["dpl"], choices=method_names,
                   help="script folders of scripts/ (default: dpl)")
    p.add_argument("--datasets", nargs="+", help="datasets (xd/dg: targets); default: the protocol's standard set")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4, 8, 16], help="few-shot: shots per class")
    p.add_argument("--ratio", default="10", help="long-tail: imbalance ratio (default 10)")
    p.add_argument("--source", default="imagenet", help="xd/dg: source dataset (default imagenet)")
    p.add_argument("--tag", default="", help="name of this sweep's variant: its runs go to <cfg>@<tag> folders")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--keep-going", action="store_true", help="continue after a failed job (default: stop)")
    p.add_argument("--table", action="store_true", help="print the protocol table at the end")
    p.add_argument("--format", default="text", choices=["text", "markdown", "csv", "json"], help="table format")
    return p


def split_opts(argv):
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def print_table(args, output, datasets):
    root = layout.protocol_root(args.protocol, str(output), args.ratio)
    print()
    subprocess.run([sys.executable, str(REPO / "parse_results.py"), "--protocol", args.protocol, root,
                    "--format", args.format, "--source", args.source, "--datasets", *datasets])


def main(argv=None):
    argv, opts = split_opts(list(sys.argv[1:] if argv is None else argv))
    methods = protocol_methods.available_methods(SCRIPTS)
    args = build_parser(sorted(methods)).parse_args(argv)
    if len(opts) % 2:
        raise SystemExit(f"error: the arguments after -- must be KEY VALUE pairs (got: {' '.join(opts)})")
    env = dict(os.environ)
    if args.source != "imagenet":
        env["SOURCE"] = args.source
    if args.tag:
        env["TAG"] = args.tag
    output = Path(env.get("OUTPUT") or REPO / "output")
    datasets = args.datasets or list(layout.PROTOCOL_DATASETS[args.protocol])
    jobs = [j for m in args.methods
            for j in jobs_for(args.protocol, methods[m], datasets, args.seeds, args.shots, args.ratio, args.source)]
    if not jobs:
        raise SystemExit(f"error: none of {', '.join(args.methods)} has scripts for the {args.protocol} protocol")

    planner = Planner(methods, env, opts)
    plan = [(job, *planner.job_state(job)) for job in jobs]
    todo = [job for job, state, _ in plan if state != "done"]
    print(f"Plan: {len(plan)} jobs, {len(plan) - len(todo)} done, {len(todo)} to run (output: {output})")
    for job, state, messages in plan:
        job_opts = planner.opts(job)
        print(f"  [{state:>8}] {job.text()}{' ' + ' '.join(job_opts) if job_opts and state != 'done' else ''}")
        for message in messages:
            print(f"             {message}")
    if args.dry_run:
        return 0
    if todo and not env.get("DATA"):
        raise SystemExit("error: DATA is not set: export DATA=/path/to/datasets")

    failed = []
    with Forwarder() as forwarder:
        for i, job in enumerate(todo, start=1):
            if forwarder.signum is None:
                print(f"\n=== [{i}/{len(todo)}] {job.text()}", flush=True)
                code = forwarder.run(job.command(planner.opts(job)), env)
            if forwarder.signum is not None:
                name = signal.Signals(forwarder.signum).name
                print(f"=== stopped by {name} at {job.text()} (its last checkpoint is kept); run the same command "
                      "again to continue", file=sys.stderr, flush=True)
                return 128 + forwarder.signum
            if code != 0:
                failed.append(job)
                print(f"=== failed: {job.text()}", file=sys.stderr, flush=True)
                if not args.keep_going:
                    break
    if args.table:
        print_table(args, output, datasets)
    if failed:
        print(f"{len(failed)} job(s) failed: " + "; ".join(j.text() for j in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
