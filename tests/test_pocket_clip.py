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
ZERO_SHOT_FLOOR = 15.0  # chance is 1/18 = 5.6% in each half


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
    tokens = clip.tokenize(["a photo of a red circle.", "a blue ring shape."]).long()
    with torch.no_grad():
        assert torch.allclose(pretrain.encode_captions(pocket_clip, tokens), pocket_clip.encode_text(tokens), atol=1e-5)


def test_zero_shot_accuracy_on_base_and_new_is_above_the_floor(pocket_clip):
    accuracy = pretrain.zero_shot_accuracy(pocket_clip, per_class=8, seed=777)
    assert accuracy["base"] > ZERO_SHOT_FLOOR, accuracy
    assert accuracy["new"] > ZERO_SHOT_FLOOR, accuracy
