"""Run identity: the part of a run's configuration that defines its experiment, and a short hash of it.

Two runs are the same experiment exactly when their identities are equal. An identity holds

- ``config``: every config key that defines the experiment *and differs from its default* (the
  defaults tree: ``get_cfg_default()`` plus every trainer's ``extend_cfg``), by dotted name. Keys
  that only say how a run is carried out or reported (``NON_EXPERIMENT_KEYS``: output paths, worker
  counts, print and checkpoint frequencies, ...) are left out, and so are the config nodes of trainers
  other than the selected one. Because only non-default values count, adding a key with a default
  later changes no existing identity.
- ``weights``: the SHA-256 of the CLIP weights. ``MODEL.BACKBONE.NAME`` and ``MODEL.BACKBONE.PATH``
  only say where the weights come from, so a copy of OpenAI's ``ViT-B-16.pt`` passed by path is the
  same experiment as ``MODEL.BACKBONE.NAME ViT-B/16``. For a backbone that is not a CLIP model
  (a trainer of another kind), ``weights`` is null and the two keys count as config keys.
- ``model`` (evaluations only): which trained model is evaluated, at which epoch
  (``dpl.results.runs.model_reference``): the run id its folder records, or its folder when it records
  none; ``"untrained"`` for an evaluation without a model (zero-shot CLIP).
- ``sources`` (only when a trainer or dataset class comes from outside this project): the module
  and the SHA-256 of its file, or of every file of the plugin that provided it (``dpl.plugins``).
- ``version``: the identity format, ``IDENTITY_VERSION``.

``run_id(identity)`` is the first 12 hex digits of the SHA-256 of its canonical JSON.
"""
import hashlib
import json
import os
import sys

IDENTITY_VERSION = 1
RUN_ID_LENGTH = 12
UNTRAINED = "untrained"  # the ``model`` of an evaluation without --model-dir

# How a run is carried out or reported, not what it computes.
NON_EXPERIMENT_KEYS = frozenset({
    "OUTPUT_DIR", "RESUME", "USE_CUDA", "VERBOSE",
    "DATASET.ROOT", "DATASET.REGENERATE_SPLIT",
    "DATALOADER.NUM_WORKERS", "DATALOADER.TEST.BATCH_SIZE", "DATALOADER.TEST.SAMPLER",
    "TRAIN.PRINT_FREQ", "TRAIN.CHECKPOINT_FREQ", "TRAIN.CHECKPOINT_ITERS", "TRAIN.IF_EXISTS",
    "TRAIN.DETERMINISTIC",
    "TEST.PER_CLASS_RESULT", "TEST.COMPUTE_CMAT", "TEST.NO_TEST",
    "TEST.IMAGE_FEATURE_CACHE",  # the same features, read from disk
    "MODEL.TEXT_CHUNK_SIZE", "MODEL.TEXT_CHECKPOINT",  # same features, less memory
})
WEIGHTS_KEYS = frozenset({"MODEL.BACKBONE.NAME", "MODEL.BACKBONE.PATH"})  # stand for the weights' SHA-256
TRAINER_PREFIX = "TRAINER."


def flatten_config(node, prefix=""):
    """``{dotted key: value}`` of a (nested) config, tuples as lists (as JSON stores them)."""
    flat = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = _plain(value)
    return flat


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _read_trainer_nodes(trainer_class):
    """The ``TRAINER.<NODE>`` names a trainer class reads, or None when it does not say."""
    nodes = getattr(trainer_class, "config_nodes", None)
    return None if nodes is None else nodes()


def _selected_trainer_class(cfg):
    from dpl.engine.build import TRAINER_REGISTRY

    name = cfg.TRAINER.NAME
    return TRAINER_REGISTRY.get(name) if name in TRAINER_REGISTRY.registered_names() else None


def _is_experiment_key(key, read_nodes, weights_known):
    if key in NON_EXPERIMENT_KEYS or (weights_known and key in WEIGHTS_KEYS):
        return False
    if key.startswith(TRAINER_PREFIX) and key != "TRAINER.NAME" and read_nodes is not None:
        return key.split(".")[1] in read_nodes
    return True


def config_identity(cfg, defaults, weights_known=True):
    """The ``config`` part: experiment-defining keys of ``cfg`` whose value differs from ``defaults``.

    The nodes read by the selected trainer count; a trainer that does not declare its nodes
    (``config_nodes()`` returns None) has all ``TRAINER.*`` nodes counted, which can only split
    identities, never merge two experiments. ``weights_known``: the backbone keys are left out
    because the identity's ``weights`` stands for them.
    """
    trainer_class = _selected_trainer_class(cfg)
    read_nodes = _read_trainer_nodes(trainer_class) if trainer_class is not None else None
    default_values = flatten_config(defaults)
    marker = object()
    return {
        key: value for key, value in sorted(flatten_config(cfg).items())
        if _is_experiment_key(key, read_nodes, weights_known) and default_values.get(key, marker) != value
    }


def build_identity(config, weights, model=None, sources=None):
    """An identity from its parts (see the module docstring); empty parts are left out."""
    identity = {"version": IDENTITY_VERSION, "config": dict(config), "weights": weights}
    if model is not None:
        identity["model"] = model
    if sources:
        identity["sources"] = sources
    return identity


def canonical_json(identity):
    return json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def run_id(identity):
    """The short stable hash of an identity (12 hex digits)."""
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:RUN_ID_LENGTH]


def differences(recorded, requested, limit=4):
    """Human-readable ``what: recorded -> requested`` items where two identities differ (at most ``limit``)."""
    items = []
    rec_cfg, req_cfg = recorded.get("config", {}), requested.get("config", {})
    for key in sorted(set(rec_cfg) | set(req_cfg)):
        if rec_cfg.get(key, "<default>") != req_cfg.get(key, "<default>"):
            items.append(f"{key} {_show(rec_cfg.get(key, '<default>'))} -> {_show(req_cfg.get(key, '<default>'))}")
    for part in ("weights", "model", "sources", "version"):
        if recorded.get(part) != requested.get(part):
            items.append(f"{part} {_show(recorded.get(part))} -> {_show(requested.get(part))}")
    if len(items) > limit:
        items = items[:limit] + [f"and {len(items) - limit} more"]
    return items


def _show(value):
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return f"sha256:{value[:12]}"  # weights
    text = json.dumps(value) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ----- the parts that need the project's classes or files ---------------------------------------------

def default_config():
    """The defaults tree every identity is measured against (defaults + every trainer's node)."""
    from dpl.config import get_cfg_default
    from dpl.engine.build import extend_cfg_for_all_trainers

    return extend_cfg_for_all_trainers(get_cfg_default())


def external_sources(cfg):
    """``{"trainer"|"dataset": {"module", "sha256"}}`` for classes defined outside this project's folders: the
    SHA-256 of the class's file, or of all the files of the plugin that provided it (``dpl.plugins``)."""
    from dpl.data.datasets import DATASET_REGISTRY
    from dpl.project import PROJECT_ROOT

    sources = {}
    plugins = sys.modules.get("dpl.plugins")  # absent where nothing could load a plugin (e.g. parse_results.py)
    for part, registry, name in (("trainer", None, cfg.TRAINER.NAME), ("dataset", DATASET_REGISTRY, cfg.DATASET.NAME)):
        cls = _selected_trainer_class(cfg) if registry is None else (
            registry.get(name) if name in registry.registered_names() else None)
        plugin = plugins.LOADED.plugin_of_module(cls.__module__) if plugins and cls is not None else None
        path = _module_file(cls)
        if plugin is not None:  # all of its files (its vendored clip too) make the code that runs; not where it is
            sources[part] = {"module": plugin.relative_module(cls.__module__), "sha256": plugin.sha256}
        elif path and not path.startswith(str(PROJECT_ROOT) + os.sep):
            with open(path, "rb") as f:
                sources[part] = {"module": cls.__module__, "sha256": hashlib.sha256(f.read()).hexdigest()}
    return sources


def _module_file(cls):
    import inspect

    if cls is None:
        return None
    try:
        return os.path.realpath(inspect.getfile(cls))
    except (TypeError, OSError):
        return None


def clip_weights_sha256(backbone):
    """The SHA-256 of the CLIP weights a ``MODEL.BACKBONE`` node stands for; None when it names no CLIP
    model (no path and a name that is not a CLIP backbone: a trainer of another kind)."""
    from dpl.clip.weights import available_backbones, weights_sha256

    if not backbone.PATH and backbone.NAME not in available_backbones():
        return None
    return weights_sha256(backbone.NAME, backbone.PATH)


def run_identity(cfg, model=None, defaults=None):
    """The identity of the run ``cfg`` describes; ``model`` for an evaluation (``runs.model_reference``)."""
    defaults = default_config() if defaults is None else defaults
    weights = clip_weights_sha256(cfg.MODEL.BACKBONE)
    config = config_identity(cfg, defaults, weights_known=weights is not None)
    return build_identity(config, weights, model, external_sources(cfg))
