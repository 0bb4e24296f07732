"""CLIP weight resolution (explicit path -> cache -> checksummed download), loading, and what was loaded.

``weights_sha256(name, path)`` is the fingerprint a run's identity records (official names and the
pocket model have their checksum on record, an explicit file is hashed); ``load_clip_with_info``
also returns ``WeightsInfo``: the file actually loaded, its SHA-256, the architecture read from it
and the OpenAI model it matches, for the log and ``results.json``.

``clip.load`` is not used: on current torch it fails on local state-dict files (it reuses a file
handle after ``torch.jit.load`` gives up). We read the file ourselves and build the model with
``clip.model.build_model``.
"""
import dataclasses
import difflib
import functools
import hashlib
import os
import urllib.error
import urllib.request
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from dpl.clip.package import MODEL_URLS, clip
from dpl.utils.errors import InvalidInputError, UserError
from dpl.utils.registry import UnknownNameError
from dpl.utils.tools import create_temp_file

CACHE_ENV = "DPL_CLIP_CACHE"
PATH_KEY = "MODEL.BACKBONE.PATH"
POCKET_NAME = "pocket"
POCKET_PATH = Path(__file__).resolve().parent / "assets" / "pocket_clip.pt"
POCKET_SHA256_FILE = POCKET_PATH.with_suffix(".sha256")
DOWNLOAD_TIMEOUT_S = 60
_CHUNK_BYTES = 1 << 20
_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")  # non-weight entries of OpenAI archives


class ChecksumMismatchError(UserError, RuntimeError):
    """A cached weights file whose SHA256 differs from the one the ``clip`` package publishes."""


def _first_line(exc, max_chars=120):
    """The start of ``exc``'s message: torch's load errors run over many lines of advice for other cases."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= max_chars else line[: max_chars - 3] + "..."


def clip_cache_dir():
    """The weight cache: ``$DPL_CLIP_CACHE`` if set, else ``~/.cache/clip`` (where OpenAI's package caches)."""
    override = os.environ.get(CACHE_ENV, "")
    return Path(override).expanduser() if override else Path.home() / ".cache" / "clip"


def available_backbones():
    """Backbone names ``MODEL.BACKBONE.NAME`` accepts: the ``clip`` package's URL table plus ``pocket``."""
    return list(MODEL_URLS) + [POCKET_NAME]


def resolve_clip_weights(name, path=""):
    """Return the path of the weights file for backbone ``name``.

    Order: explicit ``path`` (``MODEL.BACKBONE.PATH``) -> the committed pocket model for ``pocket`` ->
    ``<cache dir>/<url basename>`` with a matching SHA256 -> a checksummed download into the cache.
    """
    if path:
        return _explicit_path(path)
    if name == POCKET_NAME:
        return _pocket_path()
    url = _model_url(name)
    filename = os.path.basename(url)
    expected_sha256 = url_sha256(url)
    cache_dir = clip_cache_dir()
    target = cache_dir / filename
    if target.is_file():
        _check_cached_file(target, expected_sha256)
        return target
    if target.exists():
        raise FileExistsError(f"{target} exists but is not a regular file; move it away or set {PATH_KEY}")
    try:
        download_verified(url, target, expected_sha256)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FileNotFoundError(
            f"CLIP weights for {name!r} not found: expected {filename} in the cache directory {cache_dir} "
            f"(set ${CACHE_ENV} to use another directory), and the download from {url} failed ({reason}); "
            f"copy {filename} there or set {PATH_KEY} to a weights file"
        ) from exc
    return target


def _explicit_path(path):
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(f"{PATH_KEY} is {str(path)!r}, which is not a file; point it at a CLIP weights file")
    return resolved


def _pocket_path():
    if not POCKET_PATH.is_file():
        raise FileNotFoundError(
            f"the pocket CLIP {POCKET_PATH} is missing from this checkout; restore it from git or set {PATH_KEY}"
        )
    return POCKET_PATH


def _model_url(name):
    if name in MODEL_URLS:
        return MODEL_URLS[name]
    names = available_backbones()
    closest = difflib.get_close_matches(name, names, n=len(names), cutoff=0.0)
    raise UnknownNameError(
        f"unknown CLIP backbone {name!r} (MODEL.BACKBONE.NAME); available, closest first: {closest}"
    )


def sha256_of(path):
    """The SHA-256 of a file, computed once per process for each version of it (path, size, mtime)."""
    stat = os.stat(path)
    return _sha256_of_version(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256_of_version(path, size, mtime_ns):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def url_sha256(url):
    """The SHA-256 an OpenAI download URL names (``https://.../<sha256>/<file name>``)."""
    return url.split("/")[-2]


def weights_sha256(name, path=""):
    """The SHA-256 of the weights ``MODEL.BACKBONE.NAME`` / ``PATH`` stand for.

    An explicit file is hashed; an official name has its published checksum (the cached file is
    checked against it when loaded) and the pocket model its committed one, so no file is read.
    """
    if path:
        return sha256_of(_explicit_path(path))
    if name == POCKET_NAME:
        return POCKET_SHA256_FILE.read_text().split()[0]
    return url_sha256(_model_url(name))


def official_name(sha256):
    """The OpenAI model whose published checksum is ``sha256`` (None for other weights)."""
    return next((name for name, url in MODEL_URLS.items() if url_sha256(url) == sha256), None)


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    """What a run loaded: the weights file, its SHA-256, the architecture read from it, its official name."""

    path: str
    sha256: str
    architecture: dict
    official_name: str = None

    def describe(self):
        arch = self.architecture
        vision = (f"ViT {arch['vision_layers']} layers x {arch['vision_width']}, patch {arch['patch_size']}"
                  if arch.get("is_vit") else f"ResNet {arch.get('vision_layers')}")
        model = f"OpenAI {self.official_name}" if self.official_name else "not an OpenAI release"
        return (f"{self.path} (sha256 {self.sha256}; {model}; {vision}, {arch['image_resolution']} px; "
                f"text {arch['text_layers']} layers x {arch['text_width']}; embedding {arch['embed_dim']})")


def _check_cached_file(target, expected_sha256):
    # A mismatching file may be the user's own (e.g. fine-tuned) weights: never overwrite it silently.
    actual = sha256_of(target)
    if actual != expected_sha256:
        raise ChecksumMismatchError(
            f"{target} does not match its SHA256 checksum (expected {expected_sha256}, got {actual}); "
            f"delete it to download it again, or set {PATH_KEY} to that file to use it as it is"
        )


def download_verified(url, target, expected_sha256):
    """Download ``url`` to ``target`` through a temp file in the same directory, verify, then rename atomically.

    The file gets the mode the umask gives (a shared cache directory stays readable to the group).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = create_temp_file(target.parent, target.name, suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as handle, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as source:
            for block in iter(lambda: source.read(_CHUNK_BYTES), b""):
                handle.write(block)
                digest.update(block)
        if digest.hexdigest() != expected_sha256:
            raise ChecksumMismatchError(
                f"the file downloaded from {url} does not match its SHA256 checksum "
                f"(expected {expected_sha256}, got {digest.hexdigest()}); try again later"
            )
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def read_clip_state_dict(path):
    """The CLIP state dict stored in ``path``: an OpenAI TorchScript archive, a state dict, or ``{"state_dict": ...}``."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning)
            return torch.jit.load(str(path), map_location="cpu").state_dict()
    except RuntimeError:
        pass  # not a TorchScript archive: try a pickled state dict
    try:
        with warnings.catch_warnings():  # sparse tensors (compact files) are validated on load, as they should be
            warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (UnpicklingError, KeyError, EOFError, RuntimeError)
        raise InvalidInputError(
            f"{path} is neither a TorchScript archive nor a torch state dict ({type(exc).__name__}: "
            f"{_first_line(exc)}); "
            f"point {PATH_KEY} at a CLIP weights file"
        ) from exc
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(torch.is_tensor(v) for v in loaded.values()):
        raise InvalidInputError(
            f"{path} does not hold a state dict of tensors; point {PATH_KEY} at a CLIP weights file"
        )
    # Compact files (the pocket CLIP) store the token embedding sparse: only the rows their vocabulary uses.
    return {k: v.to_dense() if v.is_sparse else v for k, v in loaded.items()}


def load_clip(name, path="", device="cpu"):
    """Load CLIP ``name`` (or the file ``path``) as a float32, eval-mode, frozen ``clip.model.CLIP`` on ``device``."""
    return load_clip_with_info(name, path, device)[0]


def load_clip_with_info(name, path="", device="cpu"):
    """``(model, WeightsInfo)``: ``load_clip`` and what exactly it loaded."""
    from dpl.clip.prompted import clip_architecture

    weights = resolve_clip_weights(name, path)
    model = _load_clip_file(weights, device)
    sha256 = sha256_of(weights)
    architecture = dataclasses.asdict(clip_architecture(model))
    return model, WeightsInfo(str(weights), sha256, architecture, official_name(sha256))


def _load_clip_file(weights, device):
    state_dict = read_clip_state_dict(weights)
    try:
        model = clip.model.build_model(dict(state_dict))  # build_model deletes metadata keys of its argument
    except (KeyError, RuntimeError, AssertionError) as exc:
        raise InvalidInputError(
            f"{weights} is not a CLIP state dict that clip.model.build_model accepts "
            f"({type(exc).__name__}: {_first_line(exc)}); point {PATH_KEY} at a CLIP weights file"
        ) from exc
    # build_model stores the weights in fp16; reload them into the fp32 model so fp32 files (pocket,
    # fine-tuned) keep full precision. OpenAI's fp16 files give the same values either way.
    model = model.float()
    model.load_state_dict({k: v for k, v in state_dict.items() if k not in _METADATA_KEYS})
    return model.eval().requires_grad_(False).to(device)
