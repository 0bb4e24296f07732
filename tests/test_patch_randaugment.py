"""Patch RandAugment (``INPUT.TRANSFORMS: ["patch_randaugment"]``): the vectorised transform against its
definition, Pillow applied tile by tile (within one intensity level per pixel; it is exact here)."""
import numpy as np
import pytest
import torch
from PIL import Image

from dpl.config import get_cfg_default
from dpl.data.transforms import build_transform
from dpl.data.transforms.patch_randaugment import (OPS, PatchRandAugment, draw_ops, enhance_factor,
                                                   reference_patch_randaugment)
from dpl.utils.errors import InvalidInputError


def image(seed, size=(224, 224)):
    """Gradients, noise, a flat tile, a saturated tile and a two-level tile: every operation's edge cases."""
    rng = np.random.default_rng(seed)
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    pixels = np.stack([x * 255 / w, y * 255 / h, (x * 3 + y) % 256], -1) + rng.normal(0, 30, (h, w, 3))
    pixels[:16, :16] = 120
    pixels[16:32, :16] = 255
    pixels[32:48, :16] = np.where(rng.random((16, 16, 1)) < 0.5, 10, 240)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def max_difference(a, b):
    return int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max())


@pytest.mark.parametrize("op", OPS)
def test_each_operation_on_every_tile_is_pillows_on_that_tile(op):
    img = image(0)
    ops = torch.full((196, 1), OPS.index(op))
    out = PatchRandAugment(num_ops=1, magnitude=7)(img, ops)
    assert max_difference(out, reference_patch_randaugment(img, ops, magnitude=7)) <= 1
    if op != "Identity":
        assert max_difference(out, img) > 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_two_drawn_operations_per_tile_are_pillows_tile_by_tile(seed):
    img = image(seed)
    ops = draw_ops(196, 2, torch.Generator().manual_seed(seed))
    assert ops.shape == (196, 2) and set(ops.unique().tolist()) <= set(range(len(OPS)))
    for magnitude in (7, 10, 0):
        out = PatchRandAugment(num_ops=2, magnitude=magnitude)(img, ops)
        assert max_difference(out, reference_patch_randaugment(img, ops, magnitude=magnitude)) <= 1


def test_magnitude_seven_blends_by_1_36_and_pixels_beyond_whole_tiles_are_kept():
    assert enhance_factor(7) == pytest.approx(1.36)
    img = image(4, size=(230, 235))  # 14 x 14 whole tiles; a 6-pixel and an 11-pixel strip outside them
    ops = torch.full((196, 1), OPS.index("Brightness"))
    out = np.asarray(PatchRandAugment(num_ops=1)(img, ops))
    original = np.asarray(img)
    assert np.array_equal(out[224:], original[224:]) and np.array_equal(out[:, 224:], original[:, 224:])
    expected = np.clip(np.floor(original[:224, :224].astype(np.float32) * np.float32(1.36)), 0, 255)
    assert np.array_equal(out[:224, :224], expected.astype(np.uint8))


def test_the_draw_comes_from_torchs_generator_so_a_seeded_sample_is_augmented_the_same_way():
    img, transform = image(5), PatchRandAugment()
    torch.manual_seed(7)
    first = np.asarray(transform(img))
    torch.manual_seed(7)
    assert np.array_equal(np.asarray(transform(img)), first)
    assert not np.array_equal(np.asarray(transform(img)), first)


def test_build_transform_places_it_on_the_pil_image_and_checks_its_keys(capsys):
    cfg = get_cfg_default()
    cfg.INPUT.TRANSFORMS = ["center_crop", "patch_randaugment", "normalize"]
    tfm = build_transform(cfg, is_train=True)
    assert "+ patch randaugment (n=2, m=7, every 16x16 patch on its own)" in capsys.readouterr().out
    assert any(isinstance(step, PatchRandAugment) for step in tfm.transforms)
    assert tfm(image(6)).shape == (3, 224, 224)
    cfg.INPUT.PATCH_RANDAUGMENT_M = 12
    with pytest.raises(InvalidInputError, match=r"INPUT.PATCH_RANDAUGMENT_M is 12: use a value 0..10"):
        build_transform(cfg, is_train=True)
