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
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent  # the method folders sit beside this file

try:
    from dpl.project import PROJECT_ROOT
    from dpl.protocols.methods import available_methods
    from dpl.protocols.steps import DEFAULT_OUTPUT, DEFAULT_SOURCE
    from dpl.protocols.sweep import Planner, ScriptError, jobs_for, run_queue
    from dpl.results import layout
except ModuleNotFoundError as exc:
    sys.exit(f"error: {sys.executable} cannot import {exc.name}: run this with the project's interpreter, e.g. "
             f"{SCRIPTS.parent}/.venv/bin/python scripts/run_protocol.py ... (`make test` creates .venv)")


def build_parser(method_names):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("protocol", choices=sorted(layout.PROTOCOL_DATASETS))
    p.add_argument("--methods", nargs="+", default=["dpl"], choices=method_names,
                   help="script folders of scripts/ (default: dpl)")
    p.add_argument("--datasets", nargs="+", help="datasets (xd/dg: targets); default: the protocol's standard set")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4, 8, 16], help="few-shot: shots per class")
    p.add_argument("--ratio", default="10", help="long-tail: imbalance ratio (default 10)")
    p.add_argument("--source", default=DEFAULT_SOURCE, help="xd/dg: source dataset (default imagenet)")
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


def sweep_env(args):
    """The scripts' environment: this one, with SOURCE and TAG from the options."""
    env = dict(os.environ)
    if args.source != DEFAULT_SOURCE:
        env["SOURCE"] = args.source
    if args.tag:
        env["TAG"] = args.tag
    return env


def print_plan(plan, planner, output):
    todo = [job for job, state, _ in plan if state != "done"]
    print(f"Plan: {len(plan)} jobs, {len(plan) - len(todo)} done, {len(todo)} to run (output: {output})")
    for job, state, messages in plan:
        job_opts = planner.opts(job)
        print(f"  [{state:>8}] {job.text()}{' ' + ' '.join(job_opts) if job_opts and state != 'done' else ''}")
        for message in messages:
            print(f"             {message}")
    return todo


def print_table(args, output, datasets):
    root = layout.protocol_root(args.protocol, str(output), args.ratio)
    print()
    subprocess.run([sys.executable, str(PROJECT_ROOT / "parse_results.py"), "--protocol", args.protocol, root,
                    "--format", args.format, "--source", args.source, "--datasets", *datasets])


def main(argv=None, scripts_dir=SCRIPTS):
    argv, opts = split_opts(list(sys.argv[1:] if argv is None else argv))
    methods = available_methods(scripts_dir)
    args = build_parser(sorted(methods)).parse_args(argv)
    if len(opts) % 2:
        raise SystemExit(f"error: the arguments after -- must be KEY VALUE pairs (got: {' '.join(opts)})")
    env = sweep_env(args)
    output = Path(env.get("OUTPUT") or DEFAULT_OUTPUT)
    datasets = args.datasets or list(layout.PROTOCOL_DATASETS[args.protocol])
    jobs = [j for m in args.methods
            for j in jobs_for(args.protocol, methods[m], datasets, args.seeds, args.shots, args.ratio, args.source)]
    if not jobs:
        raise SystemExit(f"error: none of {', '.join(args.methods)} has scripts for the {args.protocol} protocol")
    planner = Planner(env, opts)
    try:
        todo = print_plan([(job, *planner.job_state(job)) for job in jobs], planner, output)
    except ScriptError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.dry_run:
        return 0
    if todo and not env.get("DATA"):
        raise SystemExit("error: DATA is not set: export DATA=/path/to/datasets")
    failed, stopped = run_queue(todo, planner, env, args.keep_going)
    if stopped is not None:
        return stopped
    if args.table:
        print_table(args, output, datasets)
    if failed:
        print(f"{len(failed)} job(s) failed: " + "; ".join(j.text() for j in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
