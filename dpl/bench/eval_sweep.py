"""``python -m dpl.bench --eval-sweep N``: a base-to-novel sweep's evaluations, image feature cache off vs on.

The sweep is 3 seeds x 3 methods whose image features are frozen CLIP's (``SWEEP_TRAINERS``), each
evaluated on the base and on the new test set: 18 evaluations, each the trainer's own ``test()`` over the
engine's loader of real JPEG files (``N`` images over ``--num-classes`` classes at the architecture's input
size, half of the classes base, half new), so the uncached path reads, decodes and transforms every image.
Arm "off" runs the 18 with ``TEST.IMAGE_FEATURE_CACHE False``; arm "on" starts from an empty temporary cache
folder (``DPL_FEATURE_CACHE``), so the first evaluation of each test set encodes and writes its features and
the others read them. Only ``test()`` is timed (building a trainer is the same in both arms). The prompts
are the configs' initial ones: an evaluation costs the same whatever the prompts learned. The two arms
must agree on every accuracy (``same_results``).
"""
import contextlib
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dpl.bench.models import bench_cfg, build_test_set_trainer, synthetic_classnames
from dpl.evaluation.feature_cache import CACHE_ENV

SWEEP_TRAINERS = ("ZeroshotCLIP", "CoOp", "KgCoOp")
SWEEP_SEEDS = (1, 2, 3)
HALVES = ("base", "new")
JPEG_QUALITY = 90


def write_test_images(folder, num_images, num_classes, resolution, seed=0):
    """``num_images`` JPEG files (``resolution`` px, a colour per class with noise), classes in turn;
    returns ``[(path, label)]``."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:resolution, 0:resolution]
    shading = (x + y)[..., None] * (0.5 / resolution)  # [R, R, 1] in [0, 1)
    colours = rng.uniform(0, 255, (num_classes, 3))
    items = []
    for index in range(num_images):
        label = index % num_classes
        pixels = colours[label] * (0.5 + shading) + rng.normal(0, 25, (resolution, resolution, 3))
        path = folder / f"class{label:03d}_{index:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=JPEG_QUALITY)
        items.append((str(path), label))
    return items


def sweep_test_sets(items, num_classes):
    """``{"base": (classnames, datums), "new": ...}``: the first half of the classes and the rest, each
    relabelled from 0 (as ``DATASET.SUBSAMPLE_CLASSES`` does)."""
    from dpl.data.datasets import Datum

    names = synthetic_classnames(num_classes)
    halves = {"base": range(0, num_classes // 2), "new": range(num_classes // 2, num_classes)}
    test_sets = {}
    for half, labels in halves.items():
        relabel = {label: new for new, label in enumerate(labels)}
        datums = [Datum(path, relabel[label], 0, names[label]) for path, label in items if label in relabel]
        test_sets[half] = ([names[label] for label in labels], datums)
    return test_sets


@contextlib.contextmanager
def _environment(name, value):
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _sweep_cfg(args, trainer, seed, weights_path, resolution, output_dir, cache_on):
    cfg = bench_cfg(trainer, args.arch, weights_path, resolution, args.device, output_dir)
    cfg.defrost()
    cfg.SEED = seed
    cfg.TEST.IMAGE_FEATURE_CACHE = cache_on
    cfg.DATALOADER.TEST.BATCH_SIZE = args.eval_batch_size
    cfg.DATALOADER.NUM_WORKERS = min(cfg.DATALOADER.NUM_WORKERS, os.cpu_count() or 1)  # the config's, at most the cores
    cfg.freeze()
    return cfg


def run_arm(args, test_sets, weights_path, resolution, scratch, cache_on, quiet):
    """``{"seconds", "evaluations": [{trainer, seed, half, seconds, accuracy, feature_cache}]}`` of one arm."""
    evaluations = []
    for seed in SWEEP_SEEDS:
        for trainer_name in SWEEP_TRAINERS:
            for half in HALVES:
                classnames, datums = test_sets[half]
                output_dir = Path(scratch) / f"{'on' if cache_on else 'off'}_{trainer_name}_{seed}_{half}"
                cfg = _sweep_cfg(args, trainer_name, seed, weights_path, resolution, output_dir, cache_on)
                with quiet():
                    trainer = build_test_set_trainer(cfg, classnames, datums)
                    start = time.perf_counter()
                    accuracy = trainer.test()
                    seconds = time.perf_counter() - start
                record = trainer._test_records["test"]
                evaluations.append({"trainer": trainer_name, "seed": seed, "half": half, "seconds": seconds,
                                    "accuracy": accuracy, "feature_cache": record.get("feature_cache")})
    return {"seconds": sum(e["seconds"] for e in evaluations), "evaluations": evaluations}


def eval_sweep_summary(args, scratch, weights_path, resolution, quiet):
    """Both arms on the same JPEG files; the numbers the report and ``--json`` hold."""
    items = write_test_images(Path(scratch) / "images", args.eval_sweep, args.num_classes, resolution, args.seed)
    test_sets = sweep_test_sets(items, args.num_classes)
    off = run_arm(args, test_sets, weights_path, resolution, scratch, cache_on=False, quiet=quiet)
    cache_dir = Path(scratch) / "feature_cache"  # empty: the sweep fills it
    with _environment(CACHE_ENV, str(cache_dir)):
        on = run_arm(args, test_sets, weights_path, resolution, scratch, cache_on=True, quiet=quiet)
    sources = [e["feature_cache"] for e in on["evaluations"]]
    return {
        "trainers": list(SWEEP_TRAINERS), "seeds": list(SWEEP_SEEDS), "halves": list(HALVES),
        "evaluations": len(off["evaluations"]), "test_images": {half: len(test_sets[half][1]) for half in HALVES},
        "num_classes": args.num_classes, "image_px": resolution, "image_format": f"JPEG q{JPEG_QUALITY}",
        "eval_batch_size": args.eval_batch_size,
        "off_seconds": off["seconds"], "on_seconds": on["seconds"], "speedup": off["seconds"] / on["seconds"],
        "on_misses": sources.count("miss"), "on_hits": sources.count("hit"),
        "same_results": [e["accuracy"] for e in off["evaluations"]] == [e["accuracy"] for e in on["evaluations"]],
        "off": off["evaluations"], "on": on["evaluations"],
    }


def eval_sweep_text(summary, meta):
    """The report: the command, date and load it ran under, then both arms and their ratio."""
    s = summary
    sizes = " and ".join(f"{s['test_images'][half]} {half}" for half in s["halves"])
    return "\n".join([
        f"{meta['command']}  ({meta['date']}, {meta['device']}, {meta['arch']}, {meta['host']})",
        f"torch threads: {meta['torch_threads']}; load average {meta['load_average_start']} -> "
        f"{meta['load_average_end']} on {meta['cpu_count']} cores",
        f"evaluation sweep: {len(s['seeds'])} seeds x {', '.join(s['trainers'])} x base/new = {s['evaluations']} "
        f"evaluations of {sizes} test images ({s['image_px']} px {s['image_format']}, {s['num_classes']} classes, "
        f"batch {s['eval_batch_size']})",
        f"image feature cache off: {s['off_seconds']:.1f} s",
        f"image feature cache on:  {s['on_seconds']:.1f} s ({s['on_misses']} misses, {s['on_hits']} hits, "
        "starting from an empty cache)",
        f"off / on: {s['speedup']:.2f}x; same accuracies in both arms: {'yes' if s['same_results'] else 'NO'}",
    ])
