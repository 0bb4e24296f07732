"""Materialise the pocket dataset as an upstream-like image folder with a CoOp split file.

Layout under ``DATASET.ROOT``::

    pocket/images/<colour>_shape_on_<background>/<class folder>_<nnnn>.png
    pocket/split_zhou_Pocket.json      CoOp's split schema, paths relative to images/
    pocket/GENERATOR                   version and seed of the generator that drew the images

The dataset's scenes are "photographed under warm light": a fixed colour cast (``LIGHT_GAIN``) that the
pocket CLIP never saw in pretraining. It plays the part of the domain gap between CLIP's web data and a
benchmark: zero-shot accuracy drops (93 -> ~78 % per half), and learning from a few shots can win it back.

The folder is written once, into a temporary sibling that is renamed into place, so a crash or a
concurrent first use never leaves a half-written dataset. Images are drawn from a fixed seed: the
dataset is the same everywhere, and ``SEED`` varies only the few-shot draw, as for real datasets.
"""
import os
import shutil
import tempfile

import torch
from PIL import Image

from dpl.pocket.shapes import class_names, generate
from dpl.utils.tools import write_json

DATASET_DIR = "pocket"
IMAGE_SUBDIR = "images"
SPLIT_FILE = "split_zhou_Pocket.json"
MARKER_FILE = "GENERATOR"
# Bump when the generator's output changes, so an old cache is detected instead of silently reused.
GENERATOR_VERSION = "pocket-colours-2"
DATASET_SEED = 20251208
IMAGE_SIZE = 64
# Per-channel gain (R, G, B) of the warm light every dataset image is seen under.
LIGHT_GAIN = (1.25, 1.0, 0.75)
# Per class: 24 train (16-shot draws), 6 val (min(16, 4)-shot draws), 20 test (360 base + 360 new images).
SPLIT_COUNTS = {"train": 24, "val": 6, "test": 20}


def marker_text():
    counts = ",".join(f"{k}={v}" for k, v in SPLIT_COUNTS.items())
    return f"{GENERATOR_VERSION} seed={DATASET_SEED} size={IMAGE_SIZE} light={LIGHT_GAIN} {counts}\n"


def ensure_pocket_dataset(root):
    """Return ``<root>/pocket``, generating it first if it does not exist.

    An existing folder drawn by another generator version is an error (never overwritten).
    """
    root = os.path.abspath(os.path.expanduser(root))
    dataset_dir = os.path.join(root, DATASET_DIR)
    if not os.path.isdir(dataset_dir):
        _generate_atomically(root, dataset_dir)
    _check_marker(dataset_dir)
    return dataset_dir


def _check_marker(dataset_dir):
    marker = os.path.join(dataset_dir, MARKER_FILE)
    found = open(marker).read() if os.path.isfile(marker) else "(no marker file)"
    if found != marker_text():
        raise RuntimeError(
            f"{dataset_dir} was not written by this pocket generator (found {found.strip()!r}, expected "
            f"{marker_text().strip()!r}); move or delete that folder and it is generated again on first use"
        )


def _generate_atomically(root, dataset_dir):
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{DATASET_DIR}.", suffix=".tmp", dir=root)
    try:
        write_pocket_dataset(staging)
        try:
            os.rename(staging, dataset_dir)
        except OSError:
            if not os.path.isdir(dataset_dir):  # not a lost race with a concurrent first use
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def under_light(images, gain=LIGHT_GAIN):
    """uint8 [B, 3, H, W] scenes as seen under a light of per-channel ``gain``."""
    lit = images.float() * torch.tensor(gain)[None, :, None, None]
    return lit.clamp(0, 255).round().to(torch.uint8)


def write_pocket_dataset(dataset_dir):
    """Draw every image of the dataset into ``dataset_dir`` and write the split file and marker."""
    per_class = sum(SPLIT_COUNTS.values())
    split = {key: [] for key in SPLIT_COUNTS}
    print(f"Generating the pocket dataset ({len(class_names())} classes x {per_class} images) in {dataset_dir}")
    for label, name in enumerate(class_names()):
        folder = name.replace(" ", "_")
        os.makedirs(os.path.join(dataset_dir, IMAGE_SUBDIR, folder))
        # One draw per class (seeded by the class), so a class's images do not depend on the class count.
        images = generate(torch.full((per_class,), label), seed=DATASET_SEED + label, size=IMAGE_SIZE)
        pixels = under_light(images).permute(0, 2, 3, 1).numpy()  # [n, H, W, 3] for PIL
        start = 0
        for key, count in SPLIT_COUNTS.items():
            for index in range(start, start + count):
                relative = f"{folder}/{folder}_{index:04d}.png"
                Image.fromarray(pixels[index]).save(os.path.join(dataset_dir, IMAGE_SUBDIR, relative))
                split[key].append([relative, label, name])
            start += count
    write_json(split, os.path.join(dataset_dir, SPLIT_FILE))
    with open(os.path.join(dataset_dir, MARKER_FILE), "w") as f:
        f.write(marker_text())
