"""``python -m dpl.bench --patch-randaugment K``: images/s of patch RandAugment, vectorised vs the per-tile loop.

Both run on the same ``K`` synthetic 224 x 224 images with the same draws (2 ops per 16 x 16 tile at
magnitude 7, the official DroPLe student view); the per-tile loop is ``reference_patch_randaugment``
(Pillow, one tile at a time), which defines the result.
"""
import time

import numpy as np
import torch
from PIL import Image

from dpl.data.transforms.patch_randaugment import PatchRandAugment, draw_ops, reference_patch_randaugment

SIZE, PATCH, NUM_OPS, MAGNITUDE = 224, 16, 2, 7


def synthetic_images(count, seed=0):
    """Gradients with noise: every tile has a spread of values (no operation is a no-op)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    base = np.stack([x, y, (x + y) % SIZE], -1) * (255 / SIZE)
    return [Image.fromarray(np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8))
            for _ in range(count)]


def patch_randaugment_rates(count, seed=0):
    """``{"images", "vectorised_images_per_second", "per_tile_images_per_second", "speedup"}``."""
    images = synthetic_images(count, seed)
    generator = torch.Generator().manual_seed(seed)
    tiles = (SIZE // PATCH) ** 2
    draws = [draw_ops(tiles, NUM_OPS, generator) for _ in images]
    transform = PatchRandAugment(NUM_OPS, MAGNITUDE, PATCH)
    start = time.perf_counter()
    for image, ops in zip(images, draws):
        transform(image, ops)
    vectorised = time.perf_counter() - start
    start = time.perf_counter()
    for image, ops in zip(images, draws):
        reference_patch_randaugment(image, ops, MAGNITUDE, PATCH)
    per_tile = time.perf_counter() - start
    return {"images": count, "vectorised_images_per_second": count / vectorised,
            "per_tile_images_per_second": count / per_tile, "speedup": per_tile / vectorised}


def rates_text(rates, command):
    return (f"{command}\npatch RandAugment ({SIZE}x{SIZE}, {PATCH}x{PATCH} tiles, {NUM_OPS} ops at magnitude "
            f"{MAGNITUDE}, {rates['images']} images, {torch.get_num_threads()} threads): vectorised "
            f"{rates['vectorised_images_per_second']:.1f} images/s, per-tile loop (Pillow) "
            f"{rates['per_tile_images_per_second']:.1f} images/s, {rates['speedup']:.1f}x")
