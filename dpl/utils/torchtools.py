"""Checkpoint files (Dassl's ``dassl.utils.torchtools`` surface) and RNG state capture.

Layout (kept from Dassl): ``<dir>/<model name>/model.pth.tar-<epoch>`` (1-based epoch) or
``<dir>/<model name>/model-best.pth.tar``, plus ``<dir>/<model name>/checkpoint``, a one-line text
file naming the latest file (read by resume). Ours adds ``model-last.pth.tar``: the latest state
between numbered checkpoints (see ``dpl.engine.trainer``). Every file is written atomically: a crash mid-write
leaves the previous file intact.
"""
import contextlib
import os
import pickle
import random
import shutil
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn

from .errors import UnreadableFileError
from .tools import atomic_open, mkdir_if_missing

# The file names and the pointer file are part of the output layout (one definition, no torch needed).
from dpl.results.layout import (  # noqa: F401  (Dassl's names, re-exported)
    BEST_NAME,
    CHECKPOINT_POINTER,
    LAST_NAME,
    checkpoint_name,
    latest_checkpoint_path,
)


def tolist_if_not(x):
    """``x`` as a list (a single item becomes ``[x]``)."""
    return x if isinstance(x, list) else [x]


def _strip_module_prefix(state_dict):
    return OrderedDict((k[7:] if k.startswith("module.") else k, v) for k, v in state_dict.items())


def save_checkpoint(state, save_dir, is_best=False, remove_module_from_keys=True, model_name=""):
    """Write ``state`` to ``save_dir/<model_name or model.pth.tar-<epoch>>`` atomically.

    Also (atomically) points ``save_dir/checkpoint`` at it, and copies it to ``model-best.pth.tar``
    when ``is_best``. Returns the path written.
    """
    mkdir_if_missing(save_dir)
    if remove_module_from_keys and "state_dict" in state:
        state = dict(state, state_dict=_strip_module_prefix(state["state_dict"]))
    fname = model_name or checkpoint_name(state["epoch"])
    fpath = os.path.join(save_dir, fname)
    with atomic_open(fpath, "wb") as f:
        torch.save(state, f)
    print(f"Checkpoint saved to {fpath}")
    with atomic_open(os.path.join(save_dir, CHECKPOINT_POINTER), "w") as f:
        f.write(f"{fname}\n")
    if is_best:
        best_fpath = os.path.join(save_dir, BEST_NAME)
        with open(fpath, "rb") as src, atomic_open(best_fpath, "wb") as dst:
            shutil.copyfileobj(src, dst)
        print(f'Best checkpoint saved to "{best_fpath}"')
    return fpath


class _Placeholder:
    """Stands in for a pickled class that cannot be imported here (e.g. ``dassl.optim.*``)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["_state"] = state


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Placeholder,), {"__module__": module})


class _TolerantPickleModule:
    """A ``pickle_module`` for ``torch.load`` that survives classes missing from this environment."""

    Unpickler = _TolerantUnpickler
    load = staticmethod(pickle.load)
    __name__ = "pickle"


def load_checkpoint(fpath):
    """Load a checkpoint on the CPU (or keep CUDA tensors on CUDA when available).

    Checkpoints written by dpl contain only tensors and plain Python values and load with
    ``weights_only=True``. Older files (e.g. upstream Dassl ones that pickle scheduler objects) are
    loaded with full unpickling, classes that do not exist here being replaced by placeholders:
    only load such files from sources you trust.
    """
    if fpath is None:
        raise ValueError("load_checkpoint(): the file path is None")
    if not os.path.exists(fpath):
        raise FileNotFoundError(f'File is not found at "{fpath}"')
    map_location = "cpu"  # load_state_dict copies to each tensor's device; every process of a run reads rank 0's file
    try:
        try:
            return torch.load(fpath, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            return torch.load(
                fpath, map_location=map_location, weights_only=False, pickle_module=_TolerantPickleModule
            )
    except (pickle.UnpicklingError, EOFError, RuntimeError) as err:  # truncated zip, empty or foreign file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise UnreadableFileError(
            f"Checkpoint {fpath} cannot be read ({reason}): it is truncated or not a checkpoint "
            "(choose another --model-dir / --load-epoch, or delete it and train again)"
        ) from err


def resume_from_checkpoint(fdir, model, optimizer=None, scheduler=None):
    """Restore ``model`` (and optimizer/scheduler) from the latest checkpoint in ``fdir``.

    Returns the saved ``epoch``, i.e. the 0-based index of the next epoch to run.
    """
    fpath = latest_checkpoint_path(fdir)
    if fpath is None:
        raise FileNotFoundError(f'No "{CHECKPOINT_POINTER}" file in {fdir}: nothing to resume from')
    print(f'Loading checkpoint from "{fpath}"')
    checkpoint = load_checkpoint(fpath)
    model.load_state_dict(checkpoint["state_dict"])
    print("Loaded model weights")
    if optimizer is not None and checkpoint.get("optimizer") is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        print("Loaded optimizer")
    if scheduler is not None and checkpoint.get("scheduler") is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
        print("Loaded scheduler")
    start_epoch = checkpoint["epoch"]
    print(f"Previous epoch: {start_epoch}")
    return start_epoch


def load_pretrained_weights(model, weight_path):
    """Copy the tensors of ``weight_path`` whose names and shapes match ``model``'s (others are listed)."""
    checkpoint = load_checkpoint(weight_path)
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    state_dict = _strip_module_prefix(state_dict)
    model_dict = model.state_dict()
    matched, discarded = OrderedDict(), []
    for name, value in state_dict.items():
        if name in model_dict and model_dict[name].size() == value.size():
            matched[name] = value
        else:
            discarded.append(name)
    model_dict.update(matched)
    model.load_state_dict(model_dict)
    if not matched:
        print(f'Cannot load {weight_path} (check the key names manually)')
        return
    print(f"Successfully loaded pretrained weights from {weight_path}")
    if discarded:
        print(f"Layers discarded due to unmatched keys or size: {discarded}")


def get_rng_state():
    """The RNG states of python, numpy, torch (and every CUDA device), as checkpoint-safe values.

    Only tensors and plain Python values, so the checkpoint still loads with ``weights_only=True``.
    """
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore what ``get_rng_state`` returned (missing parts are left alone)."""
    if "python" in state:
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
    if "numpy" in state:
        np_state = state["numpy"]
        np.random.set_state(
            {
                "bit_generator": np_state["bit_generator"],
                "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
                "has_gauss": np_state["has_gauss"],
                "gauss": np_state["gauss"],
            }
        )
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def open_specified_layers(model, layers):
    """Train only the named child modules of ``model``; freeze the rest."""
    layers = tolist_if_not(layers)
    if isinstance(model, nn.DataParallel):
        model = model.module
    children = dict(model.named_children())
    for layer in layers:
        if layer not in children:
            raise ValueError(f'"{layer}" is not a child module of {type(model).__name__}; children: {list(children)}')
    for name, module in children.items():
        trainable = name in layers
        module.train(trainable)
        for p in module.parameters():
            p.requires_grad = trainable


@contextlib.contextmanager
def loader_batches(loader):
    """Iterate ``loader`` (``with loader_batches(loader) as batches: for batch in batches: ...``) and shut
    its worker processes down when the block ends, also when it ends with an exception.

    Without this, an exception (e.g. an unreadable image raised in a worker) keeps the iterator alive in
    the traceback's frames; its workers, which ignore SIGTERM (``dpl.data.data_manager.seed_worker``), then outlive the run and
    the interpreter waits for them forever at exit.
    """
    batches = iter(loader)
    try:
        yield batches
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)  # multi-process iterators only
        if shutdown is not None:
            shutdown()
