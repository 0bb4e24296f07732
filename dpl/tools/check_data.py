"""Check a CoOp-style ``DATA`` folder: ``python -m dpl.tools.check_data --root DATA [dataset ...]``.

For each dataset (config stems such as ``dtd`` or class names such as ``DescribableTextures``; all 15
CoOp benchmark datasets when none is named) it reports the dataset folder, the image folder, the split
file, the other files the loader reads, the image counts per split against the published counts, the
listed images that are missing, and what to do next. Exit status: 0 when everything needed is
there, 1 when something is missing (with ``--strict``, also when a count differs from the published
one), 2 on bad arguments.
"""
import argparse
import io
import os
import sys
from contextlib import redirect_stdout
from dataclasses import dataclass, field

from dpl.config import get_cfg_default
from dpl.data.datasets import COOP_DATASETS_DOC, DATASET_REGISTRY, BenchmarkDataset, find_missing_files
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


@dataclass
class Report:
    name: str
    lines: list = field(default_factory=list)
    problems: list = field(default_factory=list)  # something needed is missing
    warnings: list = field(default_factory=list)  # e.g. counts that differ from the published ones

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
    return steps


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dpl.tools.check_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="the DATA folder (DATASET.ROOT)")
    parser.add_argument("datasets", nargs="*", help="config stems (dtd, oxford_pets, ...) or class names; default: the 15 CoOp datasets")
    parser.add_argument("--strict", action="store_true", help="also fail when counts differ from the published ones")
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
        status = "MISSING PARTS" if report.problems else ("WARNING" if report.warnings else "OK")
        print(f"== {report.name}: {status}")
        print("\n".join(report.lines))
        for warning in report.warnings:
            print(f"  warning: {warning}")
        for step in next_steps(report, classes[name]):
            print(f"  next: {step}")
        if report.problems or (args.strict and report.warnings):
            failed.append(name)
    print(f"\n{len(failed)} dataset(s) need attention: {', '.join(failed)}" if failed else "\nAll checked datasets are complete.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
