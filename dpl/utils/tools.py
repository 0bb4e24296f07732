"""Small file-system, I/O and environment helpers (Dassl's ``dassl.utils.tools`` surface)."""
import contextlib
import errno
import json
import os
import random
import secrets
import sys
from pathlib import Path

import numpy as np
import torch

from .errors import UnwritableFileError, UserError

_TEMP_NAME_TRIES = 100


def mkdir_if_missing(dirname):
    os.makedirs(dirname, exist_ok=True)


def check_isfile(fpath):
    return os.path.isfile(fpath)


def listdir_nohidden(path, sort=False):
    """Entries of ``path`` that do not start with a dot."""
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    return sorted(items) if sort else items


def create_temp_file(folder, name, suffix=".tmp"):
    """Create a new, empty, hidden ``folder/.<name>.<pid>.<random hex><suffix>`` open for writing.

    Returns ``(fd, path)``. Unlike ``tempfile.mkstemp`` (always 0600) the file gets mode 0666 less the
    process umask, so once renamed over its target it is as readable as any file the user writes.
    """
    for _ in range(_TEMP_NAME_TRIES):
        path = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue  # another writer drew the same random name: draw again
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", os.fspath(folder))


def _remove_quietly(path):
    # Cleanup after a failure: an error here (the file system went read-only) must not hide the first one.
    with contextlib.suppress(OSError):
        os.remove(path)


def _is_failure_of(exc, paths):
    """True for an ``OSError`` about writing one of ``paths`` (or about no file in particular).

    An ``OSError`` naming another file (e.g. the source of a copy) and a ``UserError`` keep their own message.
    """
    if not isinstance(exc, OSError) or isinstance(exc, UserError):
        return False
    return exc.filename is None or str(exc.filename) in paths


@contextlib.contextmanager
def atomic_open(fpath, mode="w", **kwargs):
    """Write to a temporary file next to ``fpath`` and rename it over ``fpath`` on success.

    A failure or crash mid-write leaves the previous ``fpath`` untouched. The file gets the mode the
    umask gives (0644 under umask 022). Failing to write (no space, no permission, read-only file
    system) raises ``UnwritableFileError`` with one line naming ``fpath``; the temporary file is removed
    whatever goes wrong, and other exceptions propagate unchanged.
    """
    fpath = Path(fpath)
    existed = os.path.exists(fpath)
    try:
        fpath.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = create_temp_file(fpath.parent, fpath.name)
    except OSError as exc:
        raise UnwritableFileError.from_os_error(exc, fpath, existed=existed) from exc
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, fpath)
    except BaseException as exc:
        _remove_quietly(tmp)
        if _is_failure_of(exc, (tmp, str(fpath))):
            raise UnwritableFileError.from_os_error(exc, fpath, existed=existed) from exc
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
