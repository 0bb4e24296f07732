"""Shared fixtures: a tiny randomly initialised CLIP and its weights file.

Dataset fixtures in the exact upstream layouts live in ``tests/datagen.py``.
"""
import sys
import warnings

import pytest
import torch

from dpl.project import PROJECT_ROOT  # also makes dpl_datasets / dpl_trainers importable

# The entry points (train.py, parse_results.py) are scripts at the repo root: tests import them as modules.
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

# The tiny models are far too small for intra-op parallelism to pay off; with the 2 cores of CI shared
# between pytest and the train.py subprocesses some tests start, one thread is several times faster.
torch.set_num_threads(1)

# A CLIP small enough for CPU tests. Head counts equal width // 64 because clip.model.build_model
# re-infers them that way when a state dict is loaded back.
TINY_CLIP = dict(
    embed_dim=64,
    image_resolution=32,
    vision_layers=3,
    vision_width=128,
    vision_patch_size=8,
    context_length=77,
    vocab_size=49408,
    transformer_width=128,
    transformer_heads=2,
    transformer_layers=3,
)


def make_tiny_clip(seed=0):
    from clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(**TINY_CLIP).float().eval()
    return model


@pytest.fixture(scope="session")
def tiny_clip():
    return make_tiny_clip()


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory, tiny_clip):
    """A state-dict file of the tiny CLIP, usable as MODEL.BACKBONE.PATH."""
    path = tmp_path_factory.mktemp("weights") / "tiny_clip.pt"
    torch.save(tiny_clip.state_dict(), path)
    return path


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/*.json from this code (after an intended change to a method's numbers)")
