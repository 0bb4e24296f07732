"""Weights for a plugin's own (vendored) ``clip`` package: the file this project would load, offline.

Upstream trainers load CLIP with ``clip._download(clip._MODELS[MODEL.BACKBONE.NAME])``, which ignores
``MODEL.BACKBONE.PATH`` and downloads when the file is not in ``~/.cache/clip``. When a checkout's
``clip`` module is imported, ``adapt_vendored_clip`` adds this project's backbone names to its ``_MODELS``
(the pocket model as a ``file://`` URL) and replaces its ``_download`` with ``resolve_clip_weights``: the
run's ``MODEL.BACKBONE.PATH`` when set, else the checked cache file, exactly what our trainers load.

The pocket model is stored compactly (a sparse token embedding) that upstream ``build_model`` cannot copy;
plugins get a dense copy of the same weights, written once next to the weight cache.
"""
import functools
from pathlib import Path

import torch

from dpl.clip.package import MODEL_URLS
from dpl.clip.weights import (POCKET_NAME, POCKET_PATH, clip_cache_dir, read_clip_state_dict, resolve_clip_weights,
                              weights_sha256)
from dpl.utils.errors import UserError
from dpl.utils.tools import atomic_open


class RunWeights:
    """The run's ``MODEL.BACKBONE`` ``NAME`` and ``PATH`` in this process (set once its config is final)."""

    def __init__(self):
        self.name, self.path = "", ""

    def configure(self, cfg):
        self.name, self.path = cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.PATH


def backbone_urls():
    """``{backbone name: URL}`` of every backbone this project loads (the pocket model as a file URL)."""
    return {**MODEL_URLS, POCKET_NAME: POCKET_PATH.as_uri()}


def is_vendored_clip(module):
    return isinstance(getattr(module, "_MODELS", None), dict) and callable(getattr(module, "_download", None))


def adapt_vendored_clip(module, run_weights):
    """Point a vendored ``clip.clip`` module's ``_MODELS`` / ``_download`` at this project's weights."""
    for name, url in backbone_urls().items():
        module._MODELS.setdefault(name, url)
    module._download = functools.partial(download_for_plugin, module._MODELS, run_weights)


def download_for_plugin(models, run_weights, url, root=None, *args, **kwargs):
    """What a plugin's ``_download(url[, root])`` returns here: the path of the weights file our trainers would
    load, never a download when the file is in the cache. ``MODEL.BACKBONE.PATH`` stands for the run's backbone
    (``MODEL.BACKBONE.NAME``) only: another backbone a plugin loads (a teacher) comes from the cache. ``root``
    is ignored."""
    names = [name for name, known in models.items() if known == url]
    name = next((name for name in names if name in backbone_urls()), None)
    if run_weights.path and (name is None or name == run_weights.name):
        return str(dense_weights(resolve_clip_weights(run_weights.name, run_weights.path)))
    if name is None:
        raise UserError(f"A plugin asked its clip package for weights at {url}, which is no backbone this project "
                        "knows; set MODEL.BACKBONE.PATH to the weights file")
    return str(dense_weights(resolve_clip_weights(name)))


def dense_weights(path):
    """``path``, or for the compact pocket file a dense copy of it (``<clip cache>/pocket-<sha12>-dense.pt``)."""
    if Path(path).resolve() != POCKET_PATH.resolve():
        return path
    dense = clip_cache_dir() / f"{POCKET_NAME}-{weights_sha256(POCKET_NAME)[:12]}-dense.pt"
    if not dense.is_file():
        dense.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(dense, "wb") as f:
            torch.save(read_clip_state_dict(path), f)
    return dense
