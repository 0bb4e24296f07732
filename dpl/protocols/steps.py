"""The protocol steps behind ``scripts/<method>/*.sh``: which runs a step asks for and where they live.

A step turns its positional arguments (``DATASET SEED``, ``DATASET SHOTS SEED``, ...) and the
trailing ``KEY VALUE`` overrides into ``RunRequest`` s: a training run or an evaluation, with the
options the protocol sets itself (``DATASET.NUM_SHOTS``, ``DATASET.SUBSAMPLE_CLASSES``,
``DATASET.IMBALANCE_RATIO``, ``TEST.PER_CLASS_RESULT``: not overrides) kept apart from the user's, and
a ``place`` that maps the run's effective config and config folder to its folder (``dpl.results.layout``).
An evaluation names the training run it evaluates (``model``), found by the same rule.
"""
import os
import re
from dataclasses import dataclass
from typing import Callable, List, Optional

from dpl.project import PROJECT_ROOT
from dpl.results import layout

from .methods import ProtocolError

BASE2NEW_SHOTS = 16
XD_SHOTS = 16
LONG_TAIL_SHOTS = 10000  # as the official code: "all" training images of each class before the profile
LONG_TAIL_RATIO = "10"
DEFAULT_SOURCE = "imagenet"
DEFAULT_OUTPUT = PROJECT_ROOT / "output"  # OUTPUT when unset
_INT = re.compile(r"[0-9]+")
_RATIO = re.compile(r"[0-9]+(\.[0-9]+)?")


@dataclass
class StepContext:
    """What a step reads from the script's environment."""

    method: object  # methods.Method
    script: str  # e.g. "dpl/base2new_train.sh", for messages
    output: str  # OUTPUT
    config: str = ""  # CFG: a config name of the method's trainer, or a YAML file
    source: str = DEFAULT_SOURCE  # SOURCE (cross-dataset training set)


@dataclass
class RunRequest:
    """One run a step asks for; its folder is known once its config is (``place``)."""

    kind: str  # "train" or "test"
    dataset: str  # config stem (configs/datasets/<stem>.yaml)
    seed: int
    config_name: str
    protocol_opts: List[str]
    user_opts: List[str]
    # (cfg, config folder) -> run folder, and cfg -> the config folder's tag (default: the config name);
    # ``cfg`` is the run's effective config, for an evaluation of a trained model that of its training run
    place: Callable
    tag_of: Callable = None
    model: Optional["RunRequest"] = None  # the training run an evaluation evaluates (None: untrained)

    def tag(self, cfg):
        return self.tag_of(cfg) if self.tag_of is not None else config_stem(self.config_name)


def step_context(method, script, env):
    """The ``StepContext`` of a ``scripts/<method>/`` script (``script``, e.g. ``dpl/base2new_train.sh``)
    run in the environment ``env`` (OUTPUT, CFG, SOURCE)."""
    output = os.path.abspath(os.path.expanduser(env.get("OUTPUT") or str(DEFAULT_OUTPUT)))
    return StepContext(method, script, output, config=env.get("CFG", ""), source=env.get("SOURCE") or DEFAULT_SOURCE)


def config_stem(config):
    """The name a config is known by: a config name, or the stem of a YAML file given as ``CFG``."""
    return os.path.splitext(os.path.basename(config))[0] if config.endswith((".yaml", ".yml")) else config


def shots_of(cfg, default="all"):
    """The shots part of a folder: the effective ``DATASET.NUM_SHOTS``; for a run that takes all images,
    ``default``: ``all``, or for a zero-shot evaluation the protocol's shots (where its tables look)."""
    return cfg.DATASET.NUM_SHOTS if cfg.DATASET.NUM_SHOTS >= 1 else default


# ----- argument checks (messages as the scripts always printed them) ---------------------------------

def need_args(args, n, usage, ctx):
    if len(args) < n:
        raise ProtocolError(f"usage: bash scripts/{ctx.script} {usage} [KEY VALUE ...]")


def require_int(name, value):
    if not _INT.fullmatch(str(value)):
        raise ProtocolError(f"{name} must be a non-negative integer, got '{value}'")
    return int(value)


# Keys a script sets from its arguments and environment: as trailing options they would send the run to
# another folder, seed or dataset than the one the script judges (skip / resume) by.
SCRIPT_KEYS = {
    "OUTPUT_DIR": "the run folder follows OUTPUT and the protocol's layout: set OUTPUT, or TAG=<name>",
    "RESUME": "a script resumes a run from its own folder",
    "SEED": "the seed is the script's SEED argument",
    "DATASET.NAME": "the dataset is the script's DATASET argument",
    "DATASET.ROOT": "the datasets' folder is DATA",
    "TRAINER.NAME": "the trainer is the one of scripts/<method>/: run that method's script",
}


def check_opts(opts):
    if len(opts) % 2:
        raise ProtocolError(f"extra arguments must be KEY VALUE pairs for train.py (got: {' '.join(opts)})")
    for key in opts[::2]:
        if key in SCRIPT_KEYS:
            raise ProtocolError(f"{key} cannot be a trailing option of a protocol script: {SCRIPT_KEYS[key]}")
    return list(opts)


def as_float(ratio):
    """yacs keeps the type of the default (1.0): an integer ratio is passed with a decimal point."""
    return ratio if "." in ratio else f"{ratio}.0"


# ----- the steps -------------------------------------------------------------------------------------

def base2new_train(ctx, args):
    need_args(args, 2, "DATASET SEED", ctx)
    dataset, seed, opts = args[0], require_int("SEED", args[1]), check_opts(args[2:])
    return [_base2new_train_request(ctx, dataset, seed, opts)]


def _base2new_train_request(ctx, dataset, seed, opts):
    root = f"{ctx.output}/base2new"
    return RunRequest(
        "train", dataset, seed, ctx.method.config_name("BASE2NEW", dataset, override=ctx.config),
        ["DATASET.NUM_SHOTS", str(BASE2NEW_SHOTS), "DATASET.SUBSAMPLE_CLASSES", "base"], opts,
        place=lambda cfg, folder: layout.base2new_dir(root, "train_base", dataset, shots_of(cfg),
                                                      ctx.method.trainer, folder, seed))


def base2new_test(ctx, args):
    need_args(args, 2, "DATASET SEED", ctx)
    dataset, seed, opts = args[0], require_int("SEED", args[1]), check_opts(args[2:])
    model = _base2new_train_request(ctx, dataset, seed, opts)
    root = f"{ctx.output}/base2new"
    return [RunRequest(
        "test", dataset, seed, model.config_name,
        ["DATASET.NUM_SHOTS", str(BASE2NEW_SHOTS), "DATASET.SUBSAMPLE_CLASSES", "new"], opts,
        place=lambda cfg, folder: layout.base2new_dir(root, "test_new", dataset, shots_of(cfg),
                                                      ctx.method.trainer, folder, seed),
        model=model)]


def _xd_train_request(ctx, seed, opts):
    source = ctx.source
    config = ctx.method.config_name("XD", source, override=ctx.config)
    return RunRequest(
        "train", source, seed, config, ["DATASET.NUM_SHOTS", str(XD_SHOTS)], opts,
        place=lambda cfg, folder: layout.source_dir(ctx.output, source, ctx.method.trainer, folder, seed),
        tag_of=lambda cfg: layout.shots_tag(config_stem(config), shots_of(cfg)))


def xd_train(ctx, args):
    need_args(args, 1, "SEED", ctx)
    seed, opts = require_int("SEED", args[0]), check_opts(args[1:])
    return [_xd_train_request(ctx, seed, opts)]


def xd_test(ctx, args):
    need_args(args, 2, "DATASET SEED", ctx)
    dataset, seed, opts = args[0], require_int("SEED", args[1]), check_opts(args[2:])
    model = _xd_train_request(ctx, seed, opts)
    # No NUM_SHOTS and all classes: the full test set of the target. The folder names the training's shots.
    return [RunRequest(
        "test", dataset, seed, model.config_name, [], opts,
        place=lambda cfg, folder: layout.evaluation_dir(ctx.output, ctx.method.trainer, folder, dataset, seed),
        tag_of=lambda cfg: layout.shots_tag(config_stem(model.config_name), shots_of(cfg)),
        model=model)]


def few_shot(ctx, args):
    need_args(args, 3, "DATASET SHOTS SEED", ctx)
    dataset, shots = args[0], require_int("SHOTS", args[1])
    seed, opts = require_int("SEED", args[2]), check_opts(args[3:])
    config = ctx.method.config_name("FEWSHOT", dataset, f"{shots}shots", override=ctx.config)
    return [RunRequest(
        "train", dataset, seed, config, ["DATASET.NUM_SHOTS", str(shots)], opts,
        place=lambda cfg, folder: layout.few_shot_dir(ctx.output, dataset, ctx.method.trainer, folder, seed),
        tag_of=lambda cfg: layout.shots_tag(config_stem(config), shots_of(cfg)))]


def _long_tail_args(ctx, args):
    need_args(args, 2, "DATASET SEED [RATIO]", ctx)
    dataset, seed, rest = args[0], require_int("SEED", args[1]), list(args[2:])
    ratio = LONG_TAIL_RATIO
    if rest and _RATIO.fullmatch(rest[0]):  # the optional RATIO
        ratio = rest.pop(0)
    return dataset, seed, ratio, check_opts(rest)


def _long_tail_train_request(ctx, dataset, seed, ratio, opts):
    root = layout.long_tail_root(ctx.output, ratio)
    return RunRequest(
        "train", dataset, seed, ctx.method.config_name("LONGTAIL", dataset, override=ctx.config),
        ["DATASET.NUM_SHOTS", str(LONG_TAIL_SHOTS), "DATASET.SUBSAMPLE_CLASSES", "base",
         "DATASET.IMBALANCE_RATIO", as_float(ratio), "TEST.PER_CLASS_RESULT", "True"], opts,
        place=lambda cfg, folder: layout.base2new_dir(root, "train_base", dataset, shots_of(cfg),
                                                      ctx.method.trainer, folder, seed))


def long_tail(ctx, args):
    dataset, seed, ratio, opts = _long_tail_args(ctx, args)
    return [_long_tail_train_request(ctx, dataset, seed, ratio, opts)]


def long_tail_test(ctx, args):
    dataset, seed, ratio, opts = _long_tail_args(ctx, args)
    model = _long_tail_train_request(ctx, dataset, seed, ratio, opts)
    root = layout.long_tail_root(ctx.output, ratio)
    return [RunRequest(
        "test", dataset, seed, model.config_name, ["DATASET.SUBSAMPLE_CLASSES", "new", "TEST.PER_CLASS_RESULT", "True"],
        opts,
        place=lambda cfg, folder: layout.base2new_dir(root, "test_new", dataset, shots_of(cfg),
                                                      ctx.method.trainer, folder, seed),
        model=model)]


# ----- zero-shot CLIP: evaluations only --------------------------------------------------------------

def zeroshot(ctx, args):
    need_args(args, 1, "DATASET", ctx)
    dataset, opts = args[0], check_opts(args[1:])
    return [RunRequest(
        "test", dataset, 1, ctx.method.config_name("ZEROSHOT", dataset, override=ctx.config), [], opts,
        place=lambda cfg, folder: layout.zeroshot_dir(ctx.output, ctx.method.trainer, folder, dataset))]


def _zeroshot_args(ctx, args):
    """DATASET [SEED] [KEY VALUE ...]; the seed (default 1) only names the folder: zero-shot CLIP is
    deterministic."""
    need_args(args, 1, "DATASET [SEED]", ctx)
    dataset, rest, seed = args[0], list(args[1:]), 1
    if rest and _INT.fullmatch(rest[0]):
        seed = int(rest.pop(0))
    return dataset, seed, check_opts(rest)


def zeroshot_base2new(ctx, args):
    """Base and new classes, written where base-to-novel tables look for them."""
    dataset, seed, opts = _zeroshot_args(ctx, args)
    config = ctx.method.config_name("ZEROSHOT", dataset, override=ctx.config)
    root = f"{ctx.output}/base2new"

    def request(part, subsample):
        return RunRequest(
            "test", dataset, seed, config, ["DATASET.SUBSAMPLE_CLASSES", subsample], opts,
            place=lambda cfg, folder: layout.base2new_dir(root, part, dataset, shots_of(cfg, BASE2NEW_SHOTS),
                                                          ctx.method.trainer, folder, seed))

    return [request("train_base", "base"), request("test_new", "new")]


def zeroshot_xd_test(ctx, args):
    dataset, seed, opts = _zeroshot_args(ctx, args)
    return [RunRequest(
        "test", dataset, seed, ctx.method.config_name("ZEROSHOT", dataset, override=ctx.config), [], opts,
        place=lambda cfg, folder: layout.evaluation_dir(ctx.output, ctx.method.trainer, folder, dataset, seed))]


STEPS = {step.__name__: step for step in (
    base2new_train, base2new_test, xd_train, xd_test, few_shot, long_tail, long_tail_test,
    zeroshot, zeroshot_base2new, zeroshot_xd_test)}
