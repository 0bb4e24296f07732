"""Small file-system, I/O and environment helpers (Dassl's ``dassl.utils.tools`` surface)."""
import contextlib
import json
import os
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


def mkdir_if_missing(dirname):
    os.makedirs(dirname, exist_ok=True)


def check_isfile(fpath):
    return os.path.isfile(fpath)


def listdir_nohidden(path, sort=False):
    """Entries of ``path`` that do not start with a dot."""
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    return sorted(items) if sort else items


@contextlib.contextmanager
def atomic_open(fpath, mode="w", **kwargs):
    """Write to a temporary file next to ``fpath`` and rename it over ``fpath`` on success.

    A crash mid-write leaves the previous ``fpath`` untouched (and at worst a stray ``.tmp`` file).
    """
    fpath = Path(fpath)
    fpath.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{fpath.name}.", suffix=".tmp", dir=fpath.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, fpath)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def read_json(fpath):
    with open(fpath, "r") as f:
        return json.load(f)


def write_json(obj, fpath):
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(fpath, "w") as f:
        json.dump(obj, f, indent=4, separators=(",", ": "))


def set_random_seed(seed):
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def collect_env_info():
    """A human-readable description of the software and hardware a run used.

    Our own short report rather than torch's ``collect_env``, which shells out to pip, conda and
    nvidia-smi and costs seconds per run.
    """
    import platform

    import PIL

    lines = [
        f"Python: {sys.version.split()[0]} ({platform.platform()})",
        f"PyTorch: {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})",
        f"NumPy: {np.__version__}; Pillow: {PIL.__version__}",
        f"CPU threads: {torch.get_num_threads()}",
    ]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        lines.append(f"GPUs: {', '.join(names)}")
    else:
        lines.append("GPUs: none")
    return "\n".join(lines)


def count_num_param(model=None, params=None):
    if model is not None:
        return sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in params)


def python_version():
    return sys.version.split()[0]
