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

Launchers (the plan, skip and resume stay the same):
    --launcher local --jobs 2 --devices 0,1   # N jobs at a time on this machine, one per device, each with
                                              # its own log under $OUTPUT/jobs/local/ and a status line
    --launcher slurm --partition gpu --time 4:00:00 --gpus-per-job 1 --wait
                                              # one SLURM job array per step through submitit (pip install
                                              # -e '.[cluster]'); evaluations wait for their training; a job
                                              # stopped by its time limit checkpoints and is requeued; logs
                                              # under $OUTPUT/jobs/slurm/; --wait shows a live table
Running the same command again launches only what is neither finished nor still queued or running.
"""
import argparse
import getpass
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent  # the method folders sit beside this file

try:
    from dpl.project import PROJECT_ROOT
    from dpl.protocols.methods import ProtocolError, available_methods
    from dpl.protocols.steps import DEFAULT_OUTPUT, DEFAULT_SOURCE
    from dpl.protocols.local_queue import LocalQueue, parse_devices
    from dpl.protocols.progress import Progress
    from dpl.protocols.slurm import SlurmError, SlurmLauncher, SlurmOptions, parse_sbatch_arg
    from dpl.protocols.torchrun import processes_requested
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
    launch = p.add_argument_group("launchers (default: one job after another, in this terminal)")
    launch.add_argument("--launcher", choices=["local", "slurm"],
                        help="local: a queue on this machine; slurm: job arrays through submitit")
    launch.add_argument("--jobs", type=positive_int, help="local: jobs at a time (default: one per device, else 1)")
    launch.add_argument("--devices", type=devices_arg,
                        help="local: GPUs to spread the jobs over, e.g. 0,1,2,3 (CUDA_VISIBLE_DEVICES), or cpu")
    launch.add_argument("--wait", action="store_true", help="slurm: watch the jobs until they end, then the table")
    launch.add_argument("--partition", default="", help="slurm: partition (default: the cluster's)")
    launch.add_argument("--time", type=minutes_arg, default=240,
                        help="slurm: time limit per job, minutes or [D-]HH:MM[:SS] (default 4:00:00)")
    launch.add_argument("--gpus-per-job", type=int, default=0,
                        help="slurm: GPUs per job (default 0); more than one trains each run on that many "
                             "torchrun processes (NPROC)")
    launch.add_argument("--cpus-per-job", type=positive_int, default=4,
                        help="slurm: CPUs per job, shared by its processes' OMP_NUM_THREADS (default 4)")
    launch.add_argument("--mem", default="", help="slurm: memory per job, e.g. 32G (default: the cluster's)")
    launch.add_argument("--array-parallelism", type=positive_int, default=64,
                        help="slurm: jobs of one array running at once (default 64)")
    launch.add_argument("--sbatch-arg", action="append", default=[], type=sbatch_arg, metavar="NAME=VALUE",
                        help="slurm: any other sbatch option, without dashes (repeatable): account=lab, qos=high")
    launch.add_argument("--poll", type=float, default=10.0, help="slurm --wait: seconds between looks (default 10)")
    return p


def positive_int(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def devices_arg(text):
    try:
        return parse_devices(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def sbatch_arg(text):
    try:
        return parse_sbatch_arg(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def minutes_arg(text):
    """A time limit in sbatch's formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) -> whole minutes (rounded up)."""
    days, dash, clock = text.partition("-") if "-" in text else ("0", "", text)
    parts = clock.split(":")
    if not days.isdigit() or not all(part.isdigit() for part in parts) or len(parts) > 3:
        raise argparse.ArgumentTypeError(f"--time {text}: expected minutes or sbatch's [D-]H:M:S, e.g. 4:00:00")
    values = list(map(int, parts))
    if dash:  # D-H, D-H:M, D-H:M:S
        hours, mins, secs = (values + [0, 0])[:3]
    elif len(values) == 3:  # H:M:S
        hours, mins, secs = values
    else:  # M, M:S
        hours, (mins, secs) = 0, (values + [0])[:2]
    seconds = ((int(days) * 24 + hours) * 60 + mins) * 60 + secs
    if seconds < 60:
        raise argparse.ArgumentTypeError(f"--time {text}: a job needs at least one minute")
    return -(-seconds // 60)


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
    if not os.path.isdir(root):  # nothing finished yet
        return
    print()
    subprocess.run([sys.executable, str(PROJECT_ROOT / "parse_results.py"), "--protocol", args.protocol, root,
                    "--format", args.format, "--source", args.source, "--datasets", *datasets])


def main(argv=None, scripts_dir=SCRIPTS):
    given = list(sys.argv[1:] if argv is None else argv)
    argv, opts = split_opts(given)
    methods = available_methods(scripts_dir)
    parser = build_parser(sorted(methods))
    args = parser.parse_args(argv)
    check_launcher_options(parser, args, argv)
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
        plan = [(job, *planner.job_state(job)) for job in jobs]
    except ScriptError as exc:
        raise SystemExit(f"error: {exc}") from None
    todo = print_plan(plan, planner, output)
    if args.dry_run:
        return 0
    if todo and not env.get("DATA"):
        raise SystemExit("error: DATA is not set: export DATA=/path/to/datasets")
    if todo and not os.path.isdir(env["DATA"]):
        raise SystemExit(f"error: DATA={env['DATA']} is not a directory: point it to the folder holding the datasets")
    if args.launcher is None:
        return run_in_terminal(args, planner, env, output, datasets, todo)
    blocked = [job for job, state, _ in plan if state in ("conflict", "error")]
    if blocked and not args.keep_going:
        print(f"error: {len(blocked)} job(s) cannot run (see the plan above); fix them, or pass --keep-going to "
              "launch the others", file=sys.stderr)
        return 1
    todo = [job for job in todo if job not in blocked]
    if args.launcher == "local":
        return launch_local(args, planner, env, output, datasets, todo, blocked)
    again = " ".join(["python", "scripts/run_protocol.py", *map(shlex.quote, argv), "--wait",
                      *(["--", *map(shlex.quote, opts)] if opts else [])])
    return launch_slurm(args, planner, env, output, datasets, todo, blocked, again)


def run_in_terminal(args, planner, env, output, datasets, todo):
    """The jobs one after another, their output in this terminal."""
    failed, stopped = run_queue(todo, planner, env, args.keep_going)
    if stopped is not None:
        return stopped
    if args.table:
        print_table(args, output, datasets)
    if failed:
        print(f"{len(failed)} job(s) failed: " + "; ".join(j.text() for j in failed), file=sys.stderr)
        return 1
    return 0


SLURM_ONLY = ("--wait", "--partition", "--time", "--gpus-per-job", "--cpus-per-job", "--mem", "--array-parallelism",
              "--sbatch-arg", "--poll")
LOCAL_ONLY = ("--jobs", "--devices")


def check_launcher_options(parser, args, argv):
    """An option of one launcher given to another (or to none) is a mistake, not silently ignored."""
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    for launcher, options in (("slurm", SLURM_ONLY), ("local", LOCAL_ONLY)):
        wrong = [o for o in options if o in given]
        if wrong and args.launcher != launcher:
            parser.error(f"{', '.join(wrong)}: only with --launcher {launcher}")
    try:
        processes = processes_requested(os.environ)
    except ProtocolError as exc:
        parser.error(str(exc))
    gpus = [d for d in (args.devices or []) if d != "cpu"]
    if args.launcher == "local" and gpus and processes > 1:
        parser.error(f"NPROC={os.environ['NPROC']} with --devices: the local launcher gives each job one GPU; "
                     "run a multi-GPU job with --launcher slurm --gpus-per-job N, or the scripts with NPROC alone")


def finish(args, output, datasets, progress, blocked):
    """The failures (with their logs' last lines), then the protocol table; the exit code."""
    for job in blocked:
        progress.add(job, "failed", "not launched: see the plan")
    lines = progress.failure_lines()
    if lines:
        print("\n".join(["", *lines]), file=sys.stderr)
    print_table(args, output, datasets)
    unfinished = progress.count("queued") + progress.count("running")
    if progress.failed():
        print(f"{len(progress.failed())} job(s) did not finish; run the same command again to retry them",
              file=sys.stderr)
        return 1
    if unfinished:
        print(f"{unfinished} job(s) not started; run the same command again to continue", file=sys.stderr)
        return 1
    return 0


def launch_local(args, planner, env, output, datasets, todo, blocked):
    jobs = args.jobs or (len(args.devices) if args.devices else 1)
    queue = LocalQueue(planner, env, str(output / "jobs" / "local"), jobs=jobs, devices=args.devices,
                       keep_going=args.keep_going)
    print(f"Running {len(todo)} job(s), {jobs} at a time (OMP_NUM_THREADS={queue.threads}"
          f"{', devices ' + ','.join(args.devices) if args.devices else ''})")
    progress, stopped = queue.run(todo)
    if stopped is not None:
        print(f"Stopped by {signal_name(stopped)}: each stopped run kept its last checkpoint; run the same command "
              "again to continue", file=sys.stderr)
        return stopped
    return finish(args, output, datasets, progress, blocked)


def launch_slurm(args, planner, env, output, datasets, todo, blocked, watch_command):
    options = SlurmOptions(partition=args.partition, time_min=args.time, gpus_per_job=args.gpus_per_job,
                           cpus_per_job=args.cpus_per_job, mem=args.mem, array_parallelism=args.array_parallelism,
                           sbatch_args=dict(args.sbatch_arg))
    folder = str(output / "jobs" / "slurm")
    try:
        launcher = SlurmLauncher(planner, env, folder, options, poll_seconds=args.poll)
        submissions = launcher.submit(todo)
    except SlurmError as exc:
        raise SystemExit(f"error: {exc}") from None
    if not submissions:
        print("Nothing to submit: every job of the plan is done")
        return finish(args, output, datasets, Progress([]), blocked)
    new = [s for s in submissions if s.new]
    print(f"Submitted {len(new)} job(s) to SLURM; {len(submissions) - len(new)} were queued or running already")
    for sub in submissions:
        print(f"  {sub.job_id:>12}{'' if sub.new else ' (queued before)'}  {sub.job.text()}")
    if not args.wait:
        print(f"Logs:  {folder}/<job id>_0_log.out|err\n"
              f"Watch: squeue -u {getpass.getuser()}   or the same command with --wait: {watch_command}\n"
              f"Table: {sys.executable} {PROJECT_ROOT / 'parse_results.py'} --protocol {args.protocol} "
              f"{layout.protocol_root(args.protocol, str(output), args.ratio)}")
        return 0
    try:
        progress = launcher.watch(submissions)
    except KeyboardInterrupt:
        return 130
    except SlurmError as exc:
        raise SystemExit(f"error: {exc}") from None
    return finish(args, output, datasets, progress, blocked)


def signal_name(exit_code):
    return signal.Signals(exit_code - 128).name


if __name__ == "__main__":
    sys.exit(main())
