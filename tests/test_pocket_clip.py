"""The committed pocket CLIP: checksum, loading as MODEL.BACKBONE.NAME ``pocket``, zero-shot floors."""
import hashlib

import pytest
import torch

from dpl.clip import load_clip
from dpl.clip.package import clip
from dpl.pocket import pretrain
from dpl.project import PROJECT_ROOT

ASSETS = PROJECT_ROOT / "dpl" / "clip" / "assets"
# Measured at commit time on 20 fresh scenes per class: base 33.6%, new 29.4% (README in ASSETS).
# The floors leave room for the sampling noise of the 8-per-class subset used here (144 images per half).
ZERO_SHOT_FLOOR = 75.0  # chance is 1/18 = 5.6% in each half; measured 93.3 (base) and 93.9 (new) on 20 per class


@pytest.fixture(scope="module")
def pocket_clip():
    return load_clip("pocket")


def test_committed_weights_match_their_checksum():
    recorded = (ASSETS / "pocket_clip.sha256").read_text().split()
    assert recorded[1] == "pocket_clip.pt"
    assert hashlib.sha256((ASSETS / "pocket_clip.pt").read_bytes()).hexdigest() == recorded[0]
    assert (ASSETS / "pocket_clip.pt").stat().st_size < 5 * 2**20  # "a few MB at most"


def test_pocket_loads_by_name_as_the_pretraining_architecture(pocket_clip):
    assert pocket_clip.visual.input_resolution == 224  # upstream INPUT.SIZE (224, 224) configs run unchanged
    assert pocket_clip.token_embedding.weight.shape == (49408, pretrain.POCKET_CLIP_CONFIG["transformer_width"])
    assert pocket_clip.token_embedding.weight.dtype == torch.float32
    assert len(pocket_clip.visual.transformer.resblocks) == len(pocket_clip.transformer.resblocks)
    assert not any(p.requires_grad for p in pocket_clip.parameters())


def test_prefix_text_encoding_of_pretraining_equals_encode_text(pocket_clip):
    tokens = clip.tokenize(["a photo of a red shape on white.", "a blue shape on cyan in a small image."]).long()
    with torch.no_grad():
        assert torch.allclose(pretrain.encode_captions(pocket_clip, tokens), pocket_clip.encode_text(tokens), atol=1e-5)


@pytest.mark.slow  # a pocket evaluation of 288 generated scenes
def test_zero_shot_accuracy_on_base_and_new_is_above_the_floor(pocket_clip):
    accuracy = pretrain.zero_shot_accuracy(pocket_clip, per_class=8, seed=777)
    assert accuracy["base"] > ZERO_SHOT_FLOOR, accuracy
    assert accuracy["new"] > ZERO_SHOT_FLOOR, accuracy


def _crop_grids(n, scale, seed=0):
    return pretrain.random_resized_crop_grid(n, 16, scale, (3 / 4, 4 / 3), torch.Generator().manual_seed(seed))


def test_full_scale_square_crops_are_the_image_or_its_mirror():
    grid = pretrain.random_resized_crop_grid(64, 16, (1.0, 1.0), (1.0, 1.0), torch.Generator().manual_seed(0))
    identity = torch.nn.functional.affine_grid(torch.eye(2, 3)[None], (1, 3, 16, 16), align_corners=False)[0]
    mirror = identity * torch.tensor([-1.0, 1.0])
    is_identity = (grid - identity).abs().amax((1, 2, 3)) < 1e-6
    is_mirror = (grid - mirror).abs().amax((1, 2, 3)) < 1e-6
    assert bool((is_identity | is_mirror).all())
    assert 16 < int(is_mirror.sum()) < 48  # flips happen about half of the time


def test_crops_stay_inside_the_image_and_cover_the_requested_area():
    grid = _crop_grids(500, (0.5, 1.0))  # [n, 16, 16, 2] in [-1, 1] image coordinates
    assert grid.abs().max() <= 1.0
    # Pixel-centre grids span (1 - 1/16) of each crop side: rescale to the crop's full extent.
    extent = (grid.amax((1, 2)) - grid.amin((1, 2))) / 2 / (1 - 1 / 16)  # [n, 2] side fractions
    area = extent.prod(1)
    assert area.min() > 0.5 * 0.7 and area.max() <= 1.0 + 1e-5  # sides clamped at 1 can only shrink the area
    assert area.mean() > 0.65  # U(0.5, 1) mean 0.75, less a little for clamped sides


def test_augmented_views_are_normalised_224_crops_without_a_python_loop_over_images():
    images = pretrain.render_pool(2, seed=3)[0]  # [72, 3, 64, 64] uint8
    views = pretrain.augmented_clip_input(images, torch.Generator().manual_seed(0))
    assert views.shape == (72, 3, 224, 224) and views.dtype == torch.float32
    full = pretrain.augmented_clip_input(images, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    reference = pretrain.to_clip_input(images)  # bicubic full view: bilinear differs only at edges
    unflipped = (full - reference).abs().mean((1, 2, 3)) < (full - reference.flip(-1)).abs().mean((1, 2, 3))
    matched = torch.where(unflipped[:, None, None, None], reference, reference.flip(-1))
    assert (full - matched).abs().mean() < 0.05
