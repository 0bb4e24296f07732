"""``python -m dpl.bench``: training-step time, peak memory and evaluation throughput of every trainer.

Each trainer is built by its own code from its shipped config over synthetic classes and images, at a
chosen CLIP architecture (random weights by default, no download), and measured in a fresh spawned
process so that its peak memory is its own; the parent prints one table with ratios against
PromptSRC and CoOp of the same run and can write the numbers as JSON. Other modes replace the table:
``--data-parallel``, ``--patch-randaugment`` (``dpl.bench.transforms``) and ``--token-dropout``
(``dpl.bench.token_dropout``: batched token dropout vs its per-sample reference). It passes no judgement unless
asked: each ``--target`` adds a met / MISSED line for the ratios it names.
"""
import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

import torch

from dpl.bench.data_parallel import data_parallel_rows, data_parallel_text
from dpl.bench.eval_sweep import eval_sweep_summary, eval_sweep_text
from dpl.bench.measure import Task, cpu_peak_memory_supported, measure, measure_isolated
from dpl.bench.token_dropout import profiles_text, token_dropout_rows, token_dropout_text
from dpl.bench.transforms import patch_randaugment_rates, rates_text
from dpl.bench.models import ARCHITECTURES, RANDOM_ARCHITECTURES, TRAINER_CONFIGS, input_resolution, write_random_weights
from dpl.bench.report import (METRICS, TARGET_FORM, add_ratios, bench_command, eval_compare_summary, load_average,
                              machine_meta, parse_target, report_document, report_text, target_checks)
from dpl.utils.tools import write_json

EVAL_COMPARE_TRAINER = "CoOp"


def target_argument(text):
    """argparse type of ``--target``: a malformed value is one argparse error line naming it and the form."""
    try:
        return parse_target(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m dpl.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="ViT-B/16", choices=ARCHITECTURES,
                        help="CLIP architecture: random weights of a named shape, or 'pocket' (committed weights)")
    parser.add_argument("--trainers", default=",".join(TRAINER_CONFIGS),
                        help="comma-separated trainers (default: all of %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4, help="training batch size")
    parser.add_argument("--num-classes", type=int, default=10, help="number of classes")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per trainer")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps before them")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--eval-batch-size", type=int, default=100, help="evaluation batch size (upstream: 100)")
    parser.add_argument("--eval-batches", type=int, default=2, help="evaluation batches per trainer (0: none)")
    parser.add_argument("--eval-compare-classes", type=int, default=100,
                        help=f"classes for the once-vs-per-batch class-prompt encoding comparison "
                             f"({EVAL_COMPARE_TRAINER}; 0: skip)")
    parser.add_argument("--text-chunk", type=int, default=0,
                        help="also measure every trainer with MODEL.TEXT_CHUNK_SIZE set to this")
    parser.add_argument("--text-checkpoint", action="store_true",
                        help="also measure every trainer with MODEL.TEXT_CHECKPOINT True")
    parser.add_argument("--no-flops", action="store_true",
                        help="skip the extra untimed step that counts each trainer's FLOPs")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per measurement (0: torch's default); 1 gives steadier numbers on "
                             "cores shared with other work")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--in-process", action="store_true",
                        help="measure in this process (faster start; peak memory then carries over between trainers)")
    parser.add_argument("--target", type=target_argument, action="append", default=[], metavar=TARGET_FORM,
                        help="check a ratio, e.g. 'DropoutPrompt/PromptSRC<=1.15' (quote it: < is a shell "
                             "redirection): TRAINER's median step time, step CPU time, FLOPs and peak memory (or "
                             f"only METRIC: {', '.join(METRICS)}) divided by REFERENCE's, in the plain variant (the "
                             "table's 'x <reference>' ratios), each reported as met or MISSED; repeatable. Both "
                             "trainers must be measured. Without it the report has ratios only, no verdict")
    parser.add_argument("--data-parallel", type=int, default=0, metavar="N",
                        help="instead of the table: training samples/s of each trainer on 1 and on N processes "
                             "with the same global batch (--batch-size), as torchrun trains")
    parser.add_argument("--patch-randaugment", type=int, default=0, metavar="K",
                        help="instead of the table: images/s of patch RandAugment on K images, vectorised vs the "
                             "per-tile Pillow loop that defines it")
    parser.add_argument("--token-dropout", type=int, default=0, metavar="N",
                        help="instead of the table: ms per layer call of importance-weighted token dropout (MAG "
                             "attention, importance, draw, perturbation) at ViT-B/16 shapes, vision on --batch-size "
                             "images and text on --num-classes prompts, batched (TokenDropoutHook) vs a per-sample "
                             "reference loop, medians of N calls each (wall and process CPU time) and their ratios; "
                             "with --verbose also a profile of both")
    parser.add_argument("--eval-sweep", type=int, default=0, metavar="N",
                        help="instead of the table: seconds of the 18 evaluations of a 3-seed x 3-method "
                             "(ZeroshotCLIP, CoOp, KgCoOp) base-to-novel sweep over N JPEG test images (--num-classes, "
                             "half base, half new), with the image feature cache off and on (from an empty cache), "
                             "and their ratio")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    parser.add_argument("--verbose", action="store_true",
                        help="show the trainers' build logs (--token-dropout: profile both paths)")
    return parser


def check_args(parser, args):
    trainers = [name.strip() for name in args.trainers.split(",") if name.strip()]
    unknown = [name for name in trainers if name not in TRAINER_CONFIGS]
    if not trainers or unknown:
        parser.error(f"--trainers {args.trainers!r}: unknown {unknown}; choose from {list(TRAINER_CONFIGS)}")
    for flag in ("batch_size", "num_classes", "eval_batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    for flag in ("steps", "warmup", "eval_batches", "eval_compare_classes", "text_chunk", "threads"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag.replace('_', '-')} must be >= 0")
    for target in args.target:
        absent = [name for name in (target.trainer, target.reference) if name not in trainers]
        if absent:
            parser.error(f"--target {target.text!r}: {' and '.join(absent)} not among the measured trainers {trainers}")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here; use --device cpu")
    if args.patch_randaugment < 0:
        parser.error(f"--patch-randaugment {args.patch_randaugment}: give a number of images (>= 1)")
    if args.token_dropout < 0:
        parser.error(f"--token-dropout {args.token_dropout}: give a number of timed calls (>= 1)")
    if args.data_parallel == 1 or args.data_parallel < 0:
        parser.error(f"--data-parallel {args.data_parallel}: give the number of processes to compare with one (>= 2)")
    if args.data_parallel and args.batch_size % args.data_parallel:
        parser.error(f"--batch-size {args.batch_size} is the global batch and does not divide among "
                     f"--data-parallel {args.data_parallel} processes")
    if args.data_parallel and torch.device(args.device).type == "cuda" and torch.cuda.device_count() < args.data_parallel:
        parser.error(f"--data-parallel {args.data_parallel}: only {torch.cuda.device_count()} GPUs are visible")
    if args.eval_sweep < 0 or (args.eval_sweep and args.eval_sweep < args.num_classes):
        parser.error(f"--eval-sweep {args.eval_sweep}: give the number of test images, at least one per class "
                     f"(--num-classes {args.num_classes})")
    if args.eval_sweep and args.num_classes < 2:
        parser.error("--eval-sweep needs --num-classes >= 2 (half base, half new)")
    if args.json is not None and args.json.exists() and not args.overwrite:
        parser.error(f"--json {args.json} exists; choose another path or add --overwrite")
    return trainers


def plan_tasks(args, trainers, backbone_name, weights_path, resolution, output_dir):
    """(per-trainer tasks, eval-comparison task or None)."""
    common = dict(backbone_name=backbone_name, weights_path=str(weights_path), resolution=resolution,
                  device=args.device, output_dir=str(output_dir), batch_size=args.batch_size, steps=args.steps,
                  warmup=args.warmup, eval_batch_size=args.eval_batch_size, count_flops=not args.no_flops,
                  threads=args.threads, seed=args.seed, verbose=args.verbose)
    variants = [(0, False)]
    if args.text_chunk or args.text_checkpoint:
        variants.append((args.text_chunk, args.text_checkpoint))
    tasks = [Task(trainer=trainer, num_classes=args.num_classes, eval_batches=args.eval_batches,
                  text_chunk_size=chunk, text_checkpoint=checkpoint, **common)
             for chunk, checkpoint in variants for trainer in trainers]
    compare = None
    if args.eval_compare_classes and args.eval_batches:
        compare = Task(trainer=EVAL_COMPARE_TRAINER, num_classes=args.eval_compare_classes,
                       eval_batches=args.eval_batches, eval_per_batch_text=True,
                       **dict(common, steps=0, warmup=0))
    return tasks, compare


def run(args, trainers):
    run_one = measure if args.in_process else measure_isolated
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="dpl-bench-") as scratch:
        if args.arch in RANDOM_ARCHITECTURES:
            backbone_name, weights_path = args.arch, write_random_weights(args.arch, scratch, args.seed)
        else:
            backbone_name, weights_path = args.arch, ""
        resolution = input_resolution(args.arch, weights_path)
        tasks, compare_task = plan_tasks(args, trainers, backbone_name, weights_path, resolution,
                                         Path(scratch) / "output")
        results = []
        for task in tasks:
            print(f"measuring {task.trainer} ({task.num_classes} classes, text chunk {task.text_chunk_size}, "
                  f"checkpoint {task.text_checkpoint}) ...", file=sys.stderr, flush=True)
            results.append(run_one(task))
        compare = None
        if compare_task is not None:
            print(f"measuring evaluation at {compare_task.num_classes} classes ...", file=sys.stderr, flush=True)
            compare = eval_compare_summary(run_one(compare_task))
    meta = dict(
        machine_meta(bench_command(), load_start),
        arch=args.arch, weights="random" if args.arch in RANDOM_ARCHITECTURES else args.arch,
        device=args.device, batch_size=args.batch_size, num_classes=args.num_classes,
        steps=args.steps, warmup=args.warmup, eval_batch_size=args.eval_batch_size,
        eval_batches=args.eval_batches, isolated=not args.in_process,
        memory_kind="CUDA max allocated" if torch.device(args.device).type == "cuda" else (
            "peak RSS" if cpu_peak_memory_supported() else "unavailable (no /proc)"),
        torch_threads=results[0]["threads"],  # the measuring process's
    )
    rows = add_ratios(results)
    return rows, meta, compare, target_checks(rows, args.target)


def run_data_parallel(args, trainers):
    """``--data-parallel N``: the rows and meta of ``dpl.bench.data_parallel``."""
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="dpl-bench-") as scratch:
        weights_path = write_random_weights(args.arch, scratch, args.seed) if args.arch in RANDOM_ARCHITECTURES else ""
        tasks, _ = plan_tasks(args, trainers, args.arch, weights_path, input_resolution(args.arch, weights_path),
                              Path(scratch) / "output")
        by_trainer = {task.trainer: task for task in tasks}
        for trainer in trainers:
            print(f"measuring {trainer} on 1 and {args.data_parallel} processes ...", file=sys.stderr, flush=True)
        rows = data_parallel_rows(by_trainer.__getitem__, trainers, args.data_parallel)
    meta = dict(machine_meta(bench_command(), load_start), arch=args.arch, device=args.device,
                threads_per_process=args.threads or 1)
    return rows, meta


def run_token_dropout(args, argv):
    """``--token-dropout N``: print (and write) the batched-vs-reference token dropout timings."""
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = load_average()
    rows = token_dropout_rows(args.token_dropout, args.batch_size, args.num_classes, args.seed)
    meta = dict(machine_meta(bench_command(argv), load_start), load_average=load_start)
    print(token_dropout_text(rows, meta))
    if args.verbose:
        # the profiler adds a cost per operator: a few calls show where time goes
        print(profiles_text(args.batch_size, args.num_classes, calls=min(args.token_dropout, 5), seed=args.seed))
    if args.json is not None:
        write_json({"meta": meta, "token_dropout": rows}, args.json)
        print(f"wrote {args.json}")
def run_eval_sweep(args):
    """``--eval-sweep N``: the summary and meta of ``dpl.bench.eval_sweep``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = load_average()

    def quiet():
        return contextlib.nullcontext() if args.verbose else contextlib.redirect_stdout(io.StringIO())

    with tempfile.TemporaryDirectory(prefix="dpl-bench-") as scratch:
        weights_path = write_random_weights(args.arch, scratch, args.seed) if args.arch in RANDOM_ARCHITECTURES else ""
        print("measuring the evaluations of a sweep, image feature cache off, then on ...", file=sys.stderr, flush=True)
        summary = eval_sweep_summary(args, scratch, weights_path, input_resolution(args.arch, weights_path), quiet)
    meta = dict(machine_meta(bench_command(), load_start), arch=args.arch,
                weights="random" if args.arch in RANDOM_ARCHITECTURES else args.arch, device=args.device)
    return summary, meta


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    trainers = check_args(parser, args)
    if args.patch_randaugment:
        if args.threads:
            torch.set_num_threads(args.threads)
        rates = patch_randaugment_rates(args.patch_randaugment, args.seed)
        print(rates_text(rates, bench_command(argv)))
        if args.json is not None:
            write_json({"patch_randaugment": rates}, args.json)
            print(f"wrote {args.json}")
        return 0
    if args.token_dropout:
        run_token_dropout(args, argv)
        return 0
    if args.eval_sweep:
        summary, meta = run_eval_sweep(args)
        print(eval_sweep_text(summary, meta))
        if args.json is not None:
            write_json({"meta": meta, "eval_sweep": summary}, args.json)
            print(f"wrote {args.json}")
        return 0
    if args.data_parallel:
        rows, meta = run_data_parallel(args, trainers)
        print(data_parallel_text(rows, meta))
        if args.json is not None:
            write_json({"meta": meta, "data_parallel": rows}, args.json)
            print(f"wrote {args.json}")
        return 0
    rows, meta, compare, checks = run(args, trainers)
    print(report_text(rows, meta, compare, checks))
    if args.json is not None:
        write_json(report_document(rows, meta, compare, checks), args.json)
        print(f"wrote {args.json}")
    return 0
