"""A disk cache of evaluation sets' frozen CLIP image features: a sweep encodes each test set once.

The image features of trainers whose vision tower is not prompted (ZeroshotCLIP, CoOp, KgCoOp, CoCoOp:
``ClipPromptModel.has_frozen_image_features``) are frozen CLIP's, the same for every seed, every such
method and every evaluation of a sweep. ``ClipPromptTrainer`` reads them from here (no image is opened)
and writes them after evaluating a set whose features are not here yet.

- **Folder**: ``$DPL_FEATURE_CACHE``, else ``$XDG_CACHE_HOME/dpl/image_features``, else
  ``~/.cache/dpl/image_features``. ``DPL_FEATURE_CACHE=off`` switches the cache off for every run of that
  environment (``TEST.IMAGE_FEATURE_CACHE False`` does for one run).
- **Key**: the SHA-256 of the canonical JSON of ``feature_description``: everything the features depend
  on (the weights' SHA-256, dataset, split, the ordered image list with each file's size and mtime_ns, the
  test pipeline step by step, precision, device type and ``FORMAT_VERSION``). A touched image, other
  weights or another preprocessing is another key; nothing is ever invalidated in place.
- **File**: ``<key>.pt``, a ``torch.save`` of ``{"format", "meta", "features"}``: ``features`` float32
  ``[N, D]`` on the CPU, normalised, rows in the split's order; ``meta`` what ``list`` shows (dataset,
  split, images, dim, weights SHA-256, precision, device type, created). Written by one process (rank 0)
  through a temporary file in the same folder renamed over the target (``atomic_open``: the umask's mode),
  so concurrent runs writing the same key each replace it with the same content. A file that cannot be
  used (truncated, another format or shape) is reported in one line and the features are computed again.

``python -m dpl.tools.feature_cache list`` / ``clear [--dataset NAME]`` show and empty the folder.
"""
import dataclasses
import datetime
import enum
import functools
import hashlib
import inspect
import json
import os
from pathlib import Path

import torch

from dpl.utils.tools import atomic_open

CACHE_ENV = "DPL_FEATURE_CACHE"
OFF_VALUE = "off"  # DPL_FEATURE_CACHE=off: no run reads or writes the cache
FORMAT_VERSION = 1  # of the key's description and of the file: a change makes every old file a miss
SUFFIX = ".pt"
CACHE_HIT, CACHE_MISS, CACHE_OFF = "hit", "miss", "off"  # results.json's ``feature_cache``


def cache_folder(environ=None):
    """The cache folder (a ``Path``, maybe not created yet), or None when ``DPL_FEATURE_CACHE=off``."""
    environ = os.environ if environ is None else environ
    explicit = environ.get(CACHE_ENV, "").strip()
    if explicit.lower() == OFF_VALUE:
        return None
    if explicit:
        return Path(explicit).expanduser()
    user_cache = environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(user_cache) / "dpl" / "image_features"


# ----- the key ---------------------------------------------------------------------------------------
def image_entries(datums):
    """``[[path, size, mtime_ns], ...]`` of ``datums`` in their order; ``OSError`` for a missing file."""
    entries = []
    for datum in datums:
        stat = os.stat(datum.impath)
        entries.append([os.path.abspath(datum.impath), stat.st_size, stat.st_mtime_ns])
    return entries


def _plain(value):
    """A JSON value standing for a transform's setting (enums by value, sequences as lists)."""
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    return repr(value)  # an object without a plain form: its repr (one that names an address never hits)


def describe_transform(transform):
    """The test pipeline as JSON: each step's class and public settings (``Compose`` as a list of steps)."""
    if transform is None:
        return None
    steps = getattr(transform, "transforms", None)
    if isinstance(steps, (list, tuple)):
        return [describe_transform(step) for step in steps]
    if inspect.isroutine(transform) or not hasattr(transform, "__dict__"):
        return repr(transform)  # a function's repr names its address: never a hit, never a wrong one
    kind = type(transform)
    settings = {name: _plain(value) for name, value in sorted(vars(transform).items()) if not name.startswith("_")}
    return {"class": f"{kind.__module__}.{kind.__qualname__}", **settings}


def feature_description(weights_sha256, dataset, split, images, transform, reader, precision, device_type):
    """Everything the image features of one evaluation set depend on (the key is its hash).

    ``images``: ``image_entries`` of the split in loader order; ``transform``: ``describe_transform`` of the
    test pipeline; ``reader``: the dataset wrapper class that reads and transforms an image.
    """
    return {"format": FORMAT_VERSION, "weights_sha256": weights_sha256, "dataset": dataset, "split": split,
            "images": images, "transform": transform, "reader": reader, "precision": precision,
            "device_type": device_type}


def feature_key(description):
    """The SHA-256 (hex) of the canonical JSON of ``description``."""
    canonical = json.dumps(description, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


# ----- one entry: read, write --------------------------------------------------------------------------
class UnusableCacheFile(ValueError):
    """A cache file that is not what its name promises (truncated, another format or shape)."""


def read_cache_file(path, mmap=False):
    """``(meta, features)`` of a cache file; ``UnusableCacheFile`` when it is damaged or of another format."""
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises many types for a damaged file (RuntimeError, EOFError, Unpickling...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnusableCacheFile(f"not a readable cache file: {first[:120]}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_VERSION:
        raise UnusableCacheFile(f"not a cache file of format {FORMAT_VERSION}")
    features, meta = doc.get("features"), doc.get("meta")
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or not isinstance(meta, dict):
        raise UnusableCacheFile("it holds no [images, dim] feature tensor")
    return meta, features


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """The cache file of one evaluation set (``description``: ``feature_description``)."""

    folder: Path
    description: dict

    @functools.cached_property
    def key(self):  # hashed once: the description lists every image of the split
        return feature_key(self.description)

    @property
    def path(self):
        return self.folder / f"{self.key}{SUFFIX}"

    @property
    def num_images(self):
        return len(self.description["images"])

    def read(self):
        """Features ``[N, D]`` (float32, CPU), or None when absent or unusable (one line says which file)."""
        try:
            _, features = read_cache_file(self.path)
        except FileNotFoundError:
            return None
        except UnusableCacheFile as exc:
            print(f"Image feature cache: cannot use {self.path} ({exc}); encoding the images again")
            return None
        if features.shape[0] != self.num_images:
            print(f"Image feature cache: cannot use {self.path} (it holds {features.shape[0]} images, the split "
                  f"has {self.num_images}); encoding the images again")
            return None
        return features.float()

    def write(self, features):
        """Write ``features`` ``[N, D]`` atomically; True when written. A failure is one line, not an error:
        the evaluation has its numbers already."""
        description = self.description
        meta = {"dataset": description["dataset"], "split": description["split"], "num_images": features.shape[0],
                "dim": features.shape[1], "weights_sha256": description["weights_sha256"],
                "precision": description["precision"], "device_type": description["device_type"],
                "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        doc = {"format": FORMAT_VERSION, "meta": meta, "features": features.detach().float().cpu().contiguous()}
        try:
            with atomic_open(self.path, "wb") as handle:
                torch.save(doc, handle)
        except OSError as exc:  # UnwritableFileError (no space, no permission) is one
            print(f"Image feature cache: {exc} (the evaluation's results are not affected)")
            return False
        return True


def rows_in_split_order(parts, num_images):
    """Features ``[num_images, D]`` from ``parts``, ``[(indices [n], features [n, D]), ...]`` (the shards of
    one or more processes); None unless every image of the split has exactly one row."""
    indices = torch.cat([index for index, _ in parts])
    if indices.numel() != num_images or not torch.equal(torch.sort(indices).values, torch.arange(num_images)):
        return None
    features = torch.cat([rows for _, rows in parts])
    ordered = torch.empty_like(features)
    ordered[indices] = features
    return ordered


# ----- the folder: list, clear -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CacheFile:
    """A file of the cache folder as ``list`` shows it (``meta`` None: unusable, ``problem`` says why)."""

    path: Path
    size: int
    meta: dict = None
    problem: str = ""


def cache_files(folder):
    """Every ``*.pt`` file of ``folder`` (sorted by dataset, split, created), read without loading features."""
    files = []
    for path in sorted(Path(folder).glob(f"*{SUFFIX}")):
        try:
            meta, _ = read_cache_file(path, mmap=True)
            files.append(CacheFile(path, path.stat().st_size, meta))
        except FileNotFoundError:
            continue  # removed by another process meanwhile
        except UnusableCacheFile as exc:
            files.append(CacheFile(path, path.stat().st_size, None, str(exc)))
    return sorted(files, key=lambda f: (f.meta is None, str((f.meta or {}).get("dataset")),
                                        str((f.meta or {}).get("split")), str((f.meta or {}).get("created"))))
