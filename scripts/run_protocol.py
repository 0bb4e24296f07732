#!/usr/bin/env python
"""Run a whole protocol (datasets x seeds x methods) with the scripts under scripts/<method>/, then its table.

    export DATA=/path/to/datasets
    python scripts/run_protocol.py base2new --methods dpl promptsrc zsclip --dry-run   # the plan only
    python scripts/run_protocol.py base2new --methods dpl promptsrc zsclip --table     # run, then the table
    python scripts/run_protocol.py fewshot --methods coop --datasets dtd --shots 1 4 16 -- OPTIM.MAX_EPOCH 5

Arguments after ``--`` are KEY VALUE pairs passed to every script (and from there to train.py).
Jobs run one after another in the order of the plan (each test right after its training); a job whose
run folder holds its final result is marked ``done`` and not started; an unfinished one is resumed by
its script. The run folders come from the scripts themselves (``DPL_PLAN=1``), so the layout is
defined in one place (scripts/_common.sh). Environment: DATA, OUTPUT, PYTHON, CFG, LOADEP as for the
scripts. Zero-shot CLIP (``zsclip``) is deterministic and runs for the first seed only.
"""
import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(REPO))
import parse_results  # noqa: E402

METHODS = ("dpl", "coop", "kgcoop", "promptsrc", "ivlp", "zsclip")
ZERO_SHOT = "zsclip"
DEFAULT_DATASETS = {
    "base2new": parse_results.BASE2NEW_DATASETS,
    "fewshot": parse_results.BASE2NEW_DATASETS,
    "longtail": parse_results.BASE2NEW_DATASETS[1:],  # the official long-tail code covers the 10 non-ImageNet sets
    "xd": parse_results.XD_TARGETS,
    "dg": parse_results.DG_TARGETS,
}


@dataclass
class Job:
    method: str
    script: str
    args: list

    def command(self, opts):
        return ["bash", str(SCRIPTS / self.method / self.script), *map(str, self.args), *opts]

    def text(self):
        return " ".join(["bash", f"scripts/{self.method}/{self.script}", *map(str, self.args)])


def has_script(method, script):
    return (SCRIPTS / method / script).is_file()


def jobs_for(protocol, method, datasets, seeds, shots, ratio, source):
    """The jobs of one method, each test right after the training it evaluates."""
    if method == ZERO_SHOT:
        seeds = seeds[:1]
    jobs = []
    if protocol == "base2new":
        for dataset in datasets:
            for seed in seeds:
                jobs += [Job(method, s, [dataset, seed]) for s in ("base2new_train.sh", "base2new_test.sh")
                         if has_script(method, s)]
    elif protocol in ("xd", "dg"):
        for seed in seeds:
            if has_script(method, "xd_train.sh"):
                jobs.append(Job(method, "xd_train.sh", [seed]))
            else:  # no training: the source column is an evaluation on the source dataset
                jobs.append(Job(method, "xd_test.sh", [source, seed]))
            jobs += [Job(method, "xd_test.sh", [d, seed]) for d in datasets if has_script(method, "xd_test.sh")]
    elif protocol == "fewshot":
        if has_script(method, "few_shot.sh"):
            jobs = [Job(method, "few_shot.sh", [d, k, s]) for d in datasets for k in shots for s in seeds]
    elif protocol == "longtail":
        for dataset in datasets:
            for seed in seeds:
                jobs += [Job(method, s, [dataset, seed, ratio]) for s in ("long_tail.sh", "long_tail_test.sh")
                         if has_script(method, s)]
    return jobs


def planned_runs(job, env):
    """[(kind, run_dir)] the job's script would write, asked from the script itself (DPL_PLAN=1)."""
    proc = subprocess.run(job.command([]), env={**env, "DPL_PLAN": "1"}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: {job.text()}: {proc.stderr.strip() or 'failed in plan mode'}")
    return [tuple(line.split(" ", 1)) for line in proc.stdout.splitlines() if line.strip()]


def run_state(run_dir):
    if parse_results.parse_run(run_dir).ok:
        return "done"
    return "resume" if os.path.isdir(run_dir) else "todo"


def job_state(runs):
    states = {run_state(d) for _, d in runs}
    return "done" if states == {"done"} else ("resume" if "resume" in states or "done" in states else "todo")


def table_root(protocol, output, ratio):
    return {
        "base2new": output / "base2new",
        "xd": output,
        "dg": output,
        "fewshot": output / "few_shot",
        "longtail": output / "long_tail" / f"imb{float(ratio):g}",  # as scripts/_common.sh names it
    }[protocol]


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("protocol", choices=sorted(DEFAULT_DATASETS))
    p.add_argument("--methods", nargs="+", default=["dpl"], choices=METHODS, help="script folders (default: dpl)")
    p.add_argument("--datasets", nargs="+", help="datasets (xd/dg: targets); default: the protocol's standard set")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4, 8, 16], help="few-shot: shots per class")
    p.add_argument("--ratio", default="10", help="long-tail: imbalance ratio (default 10)")
    p.add_argument("--source", default="imagenet", help="xd/dg: source dataset (default imagenet)")
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


def main(argv=None):
    argv, opts = split_opts(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    if len(opts) % 2:
        raise SystemExit(f"error: the arguments after -- must be KEY VALUE pairs (got: {' '.join(opts)})")
    env = dict(os.environ)
    if args.source != "imagenet":
        env["SOURCE"] = args.source
    output = Path(env.get("OUTPUT") or REPO / "output")
    datasets = args.datasets or list(DEFAULT_DATASETS[args.protocol])
    jobs = [j for m in args.methods
            for j in jobs_for(args.protocol, m, datasets, args.seeds, args.shots, args.ratio, args.source)]
    if not jobs:
        raise SystemExit(f"error: none of {', '.join(args.methods)} has scripts for the {args.protocol} protocol")

    plan = [(job, job_state(planned_runs(job, env))) for job in jobs]
    todo = [job for job, state in plan if state != "done"]
    print(f"Plan: {len(plan)} jobs, {len(plan) - len(todo)} done, {len(todo)} to run (output: {output})")
    for job, state in plan:
        print(f"  [{state:>6}] {job.text()}{' ' + ' '.join(opts) if opts and state != 'done' else ''}")
    if args.dry_run:
        return 0
    if todo and not env.get("DATA"):
        raise SystemExit("error: DATA is not set: export DATA=/path/to/datasets")

    failed = []
    for i, job in enumerate(todo, start=1):
        print(f"\n=== [{i}/{len(todo)}] {job.text()}", flush=True)
        if subprocess.run(job.command(opts), env=env).returncode != 0:
            failed.append(job)
            print(f"=== failed: {job.text()}", file=sys.stderr, flush=True)
            if not args.keep_going:
                break
    if args.table:
        root = table_root(args.protocol, output, args.ratio)
        print()
        parse_results.main(["--protocol", args.protocol, str(root), "--format", args.format,
                            "--source", args.source, "--datasets", *datasets])
    if failed:
        print(f"{len(failed)} job(s) failed: " + "; ".join(j.text() for j in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
