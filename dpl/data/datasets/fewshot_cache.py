"""Few-shot train/val samples and their caches under ``<dataset_dir>/split_fewshot/``.

Order of precedence for ``NUM_SHOTS = K``, ``SEED = S``:

1. An upstream cache ``shot_{K}-seed_{S}.pkl`` (pickled Dassl ``Datum`` objects with absolute paths,
   written by CoOp/KgCoOp/PromptSRC, or by a Dassl-style loader running here as a plugin, whose ``Datum``
   pickles as Dassl's) is read without Dassl installed, so results stay comparable with published runs. Its paths are re-rooted at the current dataset folder when they were
   recorded on another machine.
2. Our portable cache ``dpl-v{V}_shot_{K}-seed_{S}_{key}.json``: paths relative to the dataset
   folder, the format version ``V`` and ``key`` = the first 16 hex digits of the SHA-256 of the
   full train/val lists it was drawn from. A cache from other code (another version) or another split
   (another key) therefore has another name; none of our names can be an upstream name.
3. Otherwise: draw train (K shots) then val (``min(K, 4)`` shots) from the global ``random`` in
   Dassl's order and write our cache atomically (a read-only data folder only skips the write).

``SEED < 0`` (unseeded) neither reads nor writes a cache: upstream's shared ``seed_-1`` file mixed
runs that had nothing in common.
"""
import json
import os
import pickle

from dpl.utils.errors import InvalidInputError
from dpl.utils.tools import atomic_open

from .datum import Datum
from .sampling import sample_fewshot
from .splits import content_key, relative_path

CACHE_FORMAT = "dpl-fewshot"
CACHE_VERSION = 1
CACHE_DIRNAME = "split_fewshot"
VAL_SHOTS_CAP = 4  # upstream draws min(K, 4) validation shots


def upstream_cache_path(dataset_dir, num_shots, seed):
    return os.path.join(dataset_dir, CACHE_DIRNAME, f"shot_{num_shots}-seed_{seed}.pkl")


def portable_cache_path(dataset_dir, num_shots, seed, key):
    return os.path.join(dataset_dir, CACHE_DIRNAME, f"dpl-v{CACHE_VERSION}_shot_{num_shots}-seed_{seed}_{key[:16]}.json")


def draw_fewshot(train, val, num_shots, fewshot_val=True):
    """Dassl's two draws: train with ``num_shots`` then (if ``fewshot_val``) val with ``min(K, 4)``."""
    train = sample_fewshot(train, num_shots=num_shots)
    if fewshot_val:
        val = sample_fewshot(val, num_shots=min(num_shots, VAL_SHOTS_CAP))
    return train, val


def fewshot_splits(train, val, *, num_shots, seed, dataset_dir, fewshot_val=True):
    """The few-shot ``(train, val)`` for ``num_shots``/``seed``, from a cache or drawn (module docstring)."""
    if num_shots < 1:
        return train, val
    if seed < 0:
        print(f"SEED = {seed}: the {num_shots}-shot sample is drawn unseeded and not cached")
        return draw_fewshot(train, val, num_shots, fewshot_val)
    upstream = upstream_cache_path(dataset_dir, num_shots, seed)
    if os.path.isfile(upstream):
        return read_upstream_cache(upstream, dataset_dir, train, val, fewshot_val)
    key = content_key({"train": train, "val": val}, dataset_dir)
    path = portable_cache_path(dataset_dir, num_shots, seed, key)
    cached = read_portable_cache(path, dataset_dir, num_shots, seed, key)
    if cached is not None:
        return cached[0], (cached[1] if fewshot_val else val)
    train, val = draw_fewshot(train, val, num_shots, fewshot_val)
    write_portable_cache(path, dataset_dir, num_shots, seed, key, train, val if fewshot_val else None)
    return train, val


# ----------------------------------------------------------------------------------------------
# Upstream pickles
# ----------------------------------------------------------------------------------------------

class _PickledDatum:
    """Receives the state of a pickled Dassl ``Datum`` (its ``__dict__``: ``_impath``, ``_label``, ...)."""

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slots state)
            state = {**(state[0] or {}), **(state[1] or {})}
        elif isinstance(state, tuple) and len(state) == 4:  # our Datum, pickled by such a loader before this version
            state = dict(zip(("_impath", "_label", "_domain", "_classname"), state))
        self.state = state

    def field(self, name, default=None):
        return self.state.get(f"_{name}", self.state.get(name, default))


class _UpstreamCacheUnpickler(pickle.Unpickler):
    """Resolves Dassl's ``Datum`` to a stand-in and refuses every other global (no code execution)."""

    ALLOWED = {
        ("dassl.data.datasets.base_dataset", "Datum"): _PickledDatum,
        ("dassl.data.datasets", "Datum"): _PickledDatum,
        # a Dassl-style loader that imported our Datum directly (``from dpl.data.datasets import Datum``)
        ("dpl.data.datasets.datum", "Datum"): _PickledDatum,
        ("copyreg", "_reconstructor"): None,  # protocols 0/1
        ("builtins", "object"): object,
        ("__builtin__", "object"): object,
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: an upstream few-shot cache holds only Dassl Datum objects"
            )
        target = self.ALLOWED[(module, name)]
        return super().find_class(module, name) if target is None else target


def _rebase(impath, dataset_dir):
    """``impath`` recorded on another machine, re-rooted at ``dataset_dir`` (unchanged when already under it)."""
    if impath.startswith(dataset_dir.rstrip(os.sep) + os.sep):
        return impath
    parts = impath.replace("\\", "/").split("/")
    name = os.path.basename(dataset_dir.rstrip(os.sep))
    candidates = [os.path.join(dataset_dir, *parts[i + 1:]) for i in range(len(parts) - 1, -1, -1) if parts[i] == name]
    for candidate in candidates:
        if os.path.exists(candidate):
            return candidate
    return candidates[0] if candidates else impath


def _datums_from_pickle(items, dataset_dir):
    return [Datum(impath=_rebase(str(d.field("impath")), dataset_dir), label=d.field("label", 0),
                  domain=d.field("domain", 0) or 0, classname=d.field("classname", "") or "") for d in items]


def read_upstream_cache(path, dataset_dir, train, val, fewshot_val=True):
    """The ``(train, val)`` of an upstream ``shot_K-seed_S.pkl`` (ImageNet's holds only ``train``)."""
    print(f"Loading preprocessed few-shot data from {path}")
    try:
        with open(path, "rb") as f:
            data = _UpstreamCacheUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as err:
        raise InvalidInputError(f"Few-shot cache {path} cannot be read ({err}); move it away to draw a new sample.") from err
    if not isinstance(data, dict) or "train" not in data or (fewshot_val and "val" not in data):
        raise InvalidInputError(f"Few-shot cache {path} is not an upstream few-shot cache (expected a dict with "
                                f"'train'{' and val' if fewshot_val else ''}); move it away to draw a new sample.")
    fs_train = _datums_from_pickle(data["train"], dataset_dir)
    fs_val = _datums_from_pickle(data["val"], dataset_dir) if fewshot_val else val
    _warn_if_foreign(path, fs_train + (fs_val if fewshot_val else []), train + (val if fewshot_val else []))
    return fs_train, fs_val


def _warn_if_foreign(path, cached, full):
    known = {item.impath for item in full}
    foreign = [item.impath for item in cached if item.impath not in known]
    if foreign:
        print(f"WARNING: {len(foreign)} of the {len(cached)} images in {path} are not in the current split "
              f"(e.g. {foreign[0]}): the cache was drawn from another split or folder. "
              "Move it away to draw a sample from the current split.")


# ----------------------------------------------------------------------------------------------
# Our portable cache
# ----------------------------------------------------------------------------------------------

def _rows(items, dataset_dir):
    return [[relative_path(item.impath, dataset_dir), item.label, item.classname] for item in items]


def _items(rows, dataset_dir):
    return [Datum(impath=os.path.join(dataset_dir, rel), label=label, classname=cname) for rel, label, cname in rows]


def write_portable_cache(path, dataset_dir, num_shots, seed, key, train, val):
    if os.path.exists(path):
        return
    payload = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "num_shots": num_shots, "seed": seed,
               "split_key": key, "paths_relative_to": "dataset_dir",
               "train": _rows(train, dataset_dir), "val": None if val is None else _rows(val, dataset_dir)}
    try:
        with atomic_open(path, "w") as f:
            json.dump(payload, f)
    except OSError as err:  # a read-only or full data folder: the run goes on without the cache
        reason = err.strerror or err
        print(f"Could not save the few-shot sample to {path} ({reason}); it will be drawn again next time")
        return
    print(f"Saving preprocessed few-shot data to {path}")


def read_portable_cache(path, dataset_dir, num_shots, seed, key):
    """``(train, val)`` from our cache, or ``None`` when absent or made for something else."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "r") as f:
            payload = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        print(f"Ignoring unreadable few-shot cache {path} ({err})")
        return None
    expected = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "num_shots": num_shots, "seed": seed, "split_key": key}
    if any(payload.get(name) != value for name, value in expected.items()):
        print(f"Ignoring few-shot cache {path}: it was made for another split, code version or setting")
        return None
    print(f"Loading preprocessed few-shot data from {path}")
    val = payload.get("val")
    return _items(payload["train"], dataset_dir), (None if val is None else _items(val, dataset_dir))
