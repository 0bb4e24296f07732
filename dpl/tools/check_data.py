"""Check a CoOp-style ``DATA`` folder: ``python -m dpl.tools.check_data --root DATA [dataset ...] [--verify-images]``.

For each dataset (config stems such as ``dtd`` or class names such as ``DescribableTextures``; all 15
CoOp benchmark datasets when none is named) it reports the dataset folder, the image folder, the split
file, the other files the loader reads, the image counts per split against the published counts, the
listed images that are missing, and what to do next. Exit status: 0 when everything needed is
there, 1 when something is missing (with ``--strict``, also when a count differs from the published
one), 2 on bad arguments.

``--verify-images`` also decodes every image of each dataset whose split could be read (each path once
over train/val/test, in ``--workers`` threads, with a progress bar on a terminal), as training would, and
lists the ones that cannot be read (a truncated or damaged file, or not an image) under the dataset:
those count as a problem (exit status 1). It reads the whole dataset, so it takes a while on large ones.
"""
import argparse
import io
import os
import sys
from contextlib import redirect_stdout
from dataclasses import dataclass, field

from dpl.config import get_cfg_default
from dpl.data.datasets import COOP_DATASETS_DOC, DATASET_REGISTRY, BenchmarkDataset, find_missing_files
from dpl.data.image_check import find_unreadable_images
from dpl.project import import_project_modules

# Checked when no dataset is named: the 15 CoOp benchmark datasets (other registered loaders by name).
COOP_BENCHMARK_STEMS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                        "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101", "imagenetv2", "imagenet_sketch",
                        "imagenet_a", "imagenet_r")

# Dataset-specific advice beyond CoOp's DATASETS.md.
EXTRA_ADVICE = {
    "StanfordCars": "The official Stanford Cars links are dead; a copy with car_devkit.tgz is described in "
                    "https://github.com/pytorch/vision/issues/7545.",
    "ImageNet": "images/val must hold one folder per wnid (sort a flat val folder with the usual valprep.sh).",
    "FGVCAircraft": "fgvc_aircraft/ is the data/ folder of fgvc-aircraft-2013b, renamed.",
}

# --verify-images lists this many unreadable images per dataset, then a count of the rest.
MAX_UNREADABLE_LISTED = 50


@dataclass
class Report:
    name: str
    lines: list = field(default_factory=list)
    problems: list = field(default_factory=list)  # something needed is missing
    warnings: list = field(default_factory=list)  # e.g. counts that differ from the published ones
    image_paths: list = field(default_factory=list)  # each listed image once, when the split could be read
    unreadable: list = field(default_factory=list)  # (path, reason) found by --verify-images

    def item(self, label, path, ok, note=""):
        self.lines.append(f"  {label:<12} {'found  ' if ok else 'MISSING'}  {path}{'  ' + note if note else ''}")
        if not ok and not note.startswith("(optional"):
            self.problems.append(f"{label} {path} is missing")


def benchmark_classes():
    """Registered benchmark loaders with published counts, by class name."""
    import_project_modules()
    classes = {name: DATASET_REGISTRY.get(name) for name in DATASET_REGISTRY.registered_names()}
    return {name: cls for name, cls in classes.items() if isinstance(cls, type) and issubclass(cls, BenchmarkDataset)}


def resolve(names, classes):
    """Class names for the requested stems / class names (the 15 benchmark datasets when empty)."""
    by_stem = {cls.stem: name for name, cls in classes.items() if cls.stem}
    names = names or COOP_BENCHMARK_STEMS
    resolved = []
    for requested in names:
        name = requested if requested in classes else by_stem.get(requested)
        if name is None:
            known = sorted(by_stem) + sorted(classes)
            raise ValueError(f"unknown dataset {requested!r}; known: {', '.join(known)}")
        resolved.append(name)
    return resolved


def _loader(cls, root):
    """A loader with its paths set up but nothing read (construction would raise on the first problem)."""
    loader = cls.__new__(cls)
    loader.init_paths(root)
    return loader


def check_dataset(cls, root):
    loader = _loader(cls, root)
    report = Report(f"{cls.__name__} ({cls.stem or cls.__name__})")
    report.item("folder", loader.dataset_dir, os.path.isdir(loader.dataset_dir))
    if report.problems:
        return report
    report.item("images", loader.image_dir, os.path.isdir(loader.image_dir))
    if loader.split_path:
        report.item("split file", loader.split_path, os.path.isfile(loader.split_path))
    for rel in cls.data_files:
        path = os.path.join(loader.dataset_dir, rel)
        report.item("data", path, os.path.exists(path))
    split_missing = loader.split_path and not os.path.isfile(loader.split_path)
    for rel in cls.source_files:
        path = os.path.join(loader.dataset_dir, rel)
        needed = split_missing
        report.item("source", path, os.path.exists(path), "" if needed else "(optional: only to regenerate the split)")
    if not report.problems:
        _check_counts(loader, report)
    return report


def _check_counts(loader, report):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = loader.root
    cfg.DATASET.NAME = type(loader).__name__
    try:
        with redirect_stdout(io.StringIO()):
            train, val, test = loader.full_splits(cfg)
    except (OSError, ValueError, KeyError) as err:
        report.problems.append(f"cannot read the split: {err}")
        return
    splits = {"train": train, "val": val or [], "test": test}
    if type(loader).test_only:
        splits = {"test": test}
    report.image_paths = list(dict.fromkeys(item.impath for items in splits.values() for item in items))
    expected = type(loader).expected_counts
    for split_name, items in splits.items():
        missing = find_missing_files([item.impath for item in items])
        want = expected.get(split_name)
        note = "expected unknown" if want is None else ("as published" if want == len(items) else f"published: {want}")
        if want is not None and want != len(items):
            report.warnings.append(f"{split_name} has {len(items)} images, the published split has {want}")
        report.lines.append(f"  {split_name:<12} {len(items):>8} images ({note})"
                            + (f", {len(missing)} MISSING, e.g. {missing[0]}" if missing else ""))
        if missing:
            report.problems.append(f"{len(missing)} {split_name} images listed in the split are missing")
    labels = {item.label for items in splits.values() for item in items}
    want_classes = type(loader).expected_num_classes
    report.lines.append(f"  {'classes':<12} {len(labels):>8}" + (f" (published: {want_classes})" if want_classes else ""))
    if want_classes and len(labels) != want_classes:
        report.warnings.append(f"{len(labels)} classes, the published dataset has {want_classes}")


def verify_images(report, cls, num_workers=None):
    """Decode the dataset's present images; list the unreadable ones in ``report`` (missing ones are listed already)."""
    if not report.image_paths:
        return
    missing = set(find_missing_files(report.image_paths))
    present = [path for path in report.image_paths if path not in missing]
    report.unreadable = find_unreadable_images(present, num_workers=num_workers, progress=True,
                                               desc=f"Reading {cls.__name__} images")
    verified = f"  {'verified':<12} {len(present):>8} images" + (f" ({len(missing)} missing skipped)" if missing else "")
    if not report.unreadable:
        report.lines.append(f"{verified}, all readable")
        return
    report.lines.append(f"{verified}, {len(report.unreadable)} UNREADABLE:")
    report.lines.extend(f"    {path} ({reason})" for path, reason in report.unreadable[:MAX_UNREADABLE_LISTED])
    if len(report.unreadable) > MAX_UNREADABLE_LISTED:
        report.lines.append(f"    ... and {len(report.unreadable) - MAX_UNREADABLE_LISTED} more")


def status_word(report):
    if report.problems:
        return "MISSING PARTS"
    if report.unreadable:
        return "UNREADABLE IMAGES"
    return "WARNING" if report.warnings else "OK"


def next_steps(report, cls):
    steps = []
    if report.problems:
        steps.append(f"get the missing parts as described in CoOp's DATASETS.md ({COOP_DATASETS_DOC})")
        if cls.split_file and any("split file" in p for p in report.problems):
            steps.append(f"put {cls.split_file} in the dataset folder (or set DATASET.REGENERATE_SPLIT True for a "
                         "new random split, not comparable with published results)")
        if cls.__name__ in EXTRA_ADVICE:
            steps.append(EXTRA_ADVICE[cls.__name__])
    elif report.warnings:
        steps.append("counts differ from the published ones: check that the folder holds the complete dataset "
                     "and the split file from CoOp's DATASETS.md")
    if report.unreadable:
        steps.append(f"replace the unreadable images from the original dataset archive ({COOP_DATASETS_DOC})")
    return steps


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dpl.tools.check_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="the DATA folder (DATASET.ROOT)")
    parser.add_argument("datasets", nargs="*", help="config stems (dtd, oxford_pets, ...) or class names; default: the 15 CoOp datasets")
    parser.add_argument("--strict", action="store_true", help="also fail when counts differ from the published ones")
    parser.add_argument("--verify-images", action="store_true",
                        help="also decode every image and list those that cannot be read (slow on large datasets)")
    parser.add_argument("--workers", type=positive_int, default=None, metavar="N",
                        help="threads for --verify-images (default: the CPU count, at most 16)")
    args = parser.parse_args(argv)
    root = os.path.abspath(os.path.expanduser(args.root))
    if not os.path.isdir(root):
        print(f"check_data: DATA folder {root} does not exist")
        return 1
    classes = benchmark_classes()
    failed = []
    try:
        names = resolve(args.datasets, classes)
    except ValueError as err:
        parser.error(str(err))
    for name in names:
        report = check_dataset(classes[name], root)
        if args.verify_images:
            verify_images(report, classes[name], args.workers)
        print(f"== {report.name}: {status_word(report)}")
        print("\n".join(report.lines))
        for warning in report.warnings:
            print(f"  warning: {warning}")
        for step in next_steps(report, classes[name]):
            print(f"  next: {step}")
        if report.problems or report.unreadable or (args.strict and report.warnings):
            failed.append(name)
    complete = "complete, all images readable" if args.verify_images else "complete"
    print(f"\n{len(failed)} dataset(s) need attention: {', '.join(failed)}" if failed else f"\nAll checked datasets are {complete}.")
    return 1 if failed else 0


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


if __name__ == "__main__":
    sys.exit(main())
