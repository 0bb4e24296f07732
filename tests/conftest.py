"""Shared fixtures: a tiny randomly initialised CLIP and its weights file.

Helpers that test files share live in ``tests/helpers.py``; dataset fixtures in the exact upstream
layouts in ``tests/datagen.py``.
"""
import atexit
import os
import shutil
import sys
import tempfile
import warnings

import pytest
import torch

from dpl.project import PROJECT_ROOT  # also makes dpl_datasets / dpl_trainers importable

# The entry points (train.py, parse_results.py) are scripts at the repo root: tests import them as modules.
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

# The image feature cache (dpl.evaluation.feature_cache) of every run the tests start, subprocesses included
# (they inherit the variable): a folder of this session, never the user's ~/.cache.
_FEATURE_CACHE = tempfile.mkdtemp(prefix="dpl-test-feature-cache-")
os.environ["DPL_FEATURE_CACHE"] = _FEATURE_CACHE
atexit.register(shutil.rmtree, _FEATURE_CACHE, ignore_errors=True)

# The tiny models are far too small for intra-op parallelism to pay off; with the 2 cores of CI shared
# between pytest and the train.py subprocesses some tests start, one thread is several times faster.
torch.set_num_threads(1)

# helpers.py holds the shared checks of the trainer tests: let pytest explain their failed asserts too.
pytest.register_assert_rewrite("helpers")
from helpers import make_tiny_clip  # noqa: E402  (after the assert-rewrite registration)


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
