"""Plan and run protocol steps: the folder of each run, its identity, and skip / resume / refuse.

``plan_request`` builds a request's effective config (exactly as ``train.py`` would), names its
config folder (``@<variant>`` when the overrides change the experiment, see ``dpl.results.layout``)
and gives its folder and identity. ``execute`` decides with ``dpl.results.runs.decide`` and runs
``train.py`` in this process. ``run_step`` is what ``scripts/<method>/<step>.sh`` calls.
"""
import glob
import os
import re
from dataclasses import dataclass
from typing import Optional

from dpl.project import PROJECT_ROOT
from dpl.results import identity as ident
from dpl.results import layout, runs

from .methods import ProtocolError

CONFIG_DIR = PROJECT_ROOT / "configs"
_CHECKPOINT_FILE = re.compile(r"model\.pth\.tar-(\d+)")


@dataclass
class PlannedRun:
    """A request with its config resolved: where it runs and (for training runs) its identity."""

    request: object  # steps.RunRequest
    flags: list  # train.py's --flags, without --output-dir and the evaluated model
    cfg: object  # the effective config
    run_dir: str
    variant: str
    identity: Optional[dict] = None  # training runs; an evaluation's depends on its model's state
    model: Optional["PlannedRun"] = None

    @property
    def kind(self):
        return self.request.kind


# ----- configs ---------------------------------------------------------------------------------------

def dataset_config_file(stem):
    path = CONFIG_DIR / "datasets" / f"{stem}.yaml"
    if not path.is_file():
        available = " ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise ProtocolError(f"unknown dataset '{stem}': no {path} (available: {available})")
    return str(path)


def trainer_config_file(trainer, config):
    """The YAML of ``config``: a config name of ``trainer`` (``configs/trainers/<trainer>/<name>.yaml``)
    or the path of a YAML file."""
    if config.endswith((".yaml", ".yml")) and os.path.isfile(os.path.expanduser(config)):
        return os.path.abspath(os.path.expanduser(config))
    path = CONFIG_DIR / "trainers" / trainer / f"{config}.yaml"
    if not path.is_file():
        available = " ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise ProtocolError(f"no config {path} for {trainer} (set CFG to one of: {available})")
    return str(path)


def train_py_flags(request, trainer, data):
    """``train.py``'s --flags of a request (the ``KEY VALUE`` options follow them)."""
    flags = ["--root", data, "--seed", str(request.seed), "--trainer", trainer,
             "--dataset-config-file", dataset_config_file(request.dataset),
             "--config-file", trainer_config_file(trainer, request.config_name)]
    return flags + (["--eval-only"] if request.kind == "test" else [])


def train_py_argv(planned, model_args=()):
    """The full ``train.py`` command line: flags, output dir, model, protocol options, then the user's."""
    request = planned.request
    return [*planned.flags, "--output-dir", planned.run_dir, *model_args, *request.protocol_opts, *request.user_opts]


class PlanConfigError(Exception):
    """A config mistake found while planning (the same that ``train.py`` would report with exit code 2)."""


def build_config(argv):
    """The config ``train.py argv`` would run with; ``PlanConfigError`` (one line) for a config mistake."""
    from dpl.tools.train import CONFIG_ERRORS, build_parser, config_error_line, setup_cfg

    try:
        return setup_cfg(build_parser().parse_args(argv))
    except CONFIG_ERRORS as exc:
        raise PlanConfigError(config_error_line(exc)) from exc


def experiment_changes(cfg, base_cfg, defaults, full=None):
    """``{key: value in cfg}`` of the experiment-defining keys where ``cfg`` differs from ``base_cfg``
    (``full``: ``cfg``'s identity when the caller has it)."""
    full = ident.run_identity(cfg, defaults=defaults) if full is None else full
    base = ident.run_identity(base_cfg, defaults=defaults)
    flat_defaults = ident.flatten_config(defaults)
    changes = {key: full["config"].get(key, flat_defaults.get(key)) for key in set(full["config"]) | set(base["config"])
               if full["config"].get(key) != base["config"].get(key)}
    if full["weights"] != base["weights"]:  # named by the keys that moved them
        backbone, base_backbone = cfg.MODEL.BACKBONE, base_cfg.MODEL.BACKBONE
        changes.update({f"MODEL.BACKBONE.{key}": backbone[key] for key in ("NAME", "PATH")
                        if backbone[key] != base_backbone[key]})
    return changes


# ----- planning --------------------------------------------------------------------------------------

def plan_request(request, trainer, data="", tag="", defaults=None, load_epoch=""):
    """The ``PlannedRun`` of ``request`` (and of the training run it evaluates).

    An evaluation's folder takes its shots from the training run it evaluates, and an evaluation of
    another epoch than the last (``load_epoch``, the scripts' ``LOADEP``) gets ``LOADEP=<N>`` in its variant.
    """
    defaults = ident.default_config() if defaults is None else defaults
    flags = train_py_flags(request, trainer, data)
    cfg = build_config(flags + request.protocol_opts + request.user_opts)
    identity = ident.run_identity(cfg, defaults=defaults)  # an evaluation's adds its model, once that is known
    changes = experiment_changes(cfg, build_config(flags + request.protocol_opts), defaults, full=identity)
    variant = layout.variant_name(changes, tag)
    model = plan_request(request.model, trainer, data, tag, defaults) if request.model is not None else None
    if request.kind == "test" and load_epoch:
        variant = ",".join(filter(None, [variant, f"LOADEP={int(load_epoch)}"]))
    layout_cfg = model.cfg if model is not None else cfg
    run_dir = request.place(layout_cfg, layout.config_folder(request.tag(layout_cfg), variant))
    planned = PlannedRun(request, flags, cfg, os.path.abspath(run_dir), variant, model=model)
    if request.kind == "train":
        planned.identity = identity
    return planned


def final_epoch(model_dir, state):
    """The highest ``N`` of ``model_dir/<model name>/model.pth.tar-N`` (or, when those files were deleted
    to save space, the epochs recorded by the finished run: ``state`` is ``model_dir``'s ``RunState``)."""
    epochs = [int(m.group(1)) for path in glob.glob(os.path.join(glob.escape(model_dir), "*", "model.pth.tar-*"))
              if (m := _CHECKPOINT_FILE.fullmatch(os.path.basename(path)))]
    if epochs:
        return max(epochs)
    if state.finished and state.checkpoint is None and state.epoch is not None:  # recorded by its results.json
        return state.epoch
    raise ProtocolError(f"no checkpoint model.pth.tar-<epoch> under {model_dir}/*/ (was the training run saved?)")


class ModelNotReady(ProtocolError):
    """The training run an evaluation evaluates is not finished, or its folder holds another experiment."""

    def __init__(self, message, conflict=False):
        super().__init__(message)
        self.conflict = conflict


def evaluation_identity(planned, load_epoch=""):
    """``(identity, model args, note)`` of an evaluation; ``ModelNotReady`` when its model is not ready."""
    if planned.model is None:  # zero-shot: the untrained model
        return ident.run_identity(planned.cfg, model=ident.UNTRAINED), [], ""
    model = planned.model
    decision = runs.decide(runs.read_state(model.run_dir), model.identity)
    if decision.action == "conflict":
        raise ModelNotReady(runs.conflict_message(decision, model.identity, _remedy(model.run_dir)), conflict=True)
    if decision.action != "finished":
        raise ModelNotReady(f"the training run {model.run_dir} is not finished: run its training script first")
    epoch = int(load_epoch) if load_epoch else final_epoch(model.run_dir, decision.state)
    reference = runs.model_reference(model.run_dir, epoch)
    identity = ident.run_identity(planned.cfg, model=reference)
    return identity, ["--model-dir", model.run_dir, "--load-epoch", str(epoch)], decision.note


def _remedy(run_dir):
    return f"set TAG=<name> to give this run its own folder, or move {run_dir} away"


def state_of(planned, load_epoch=""):
    """``(state word, Decision or None, message)`` of a planned run: done, resume, todo or conflict."""
    identity = planned.identity
    if planned.kind == "test":
        try:
            identity = evaluation_identity(planned, load_epoch)[0]
        except ModelNotReady as exc:
            return ("conflict" if exc.conflict else "todo"), None, str(exc)
    decision = runs.decide(runs.read_state(planned.run_dir), identity)
    word = {"finished": "done", "resume": "resume", "fresh": "todo", "conflict": "conflict"}[decision.action]
    message = runs.conflict_message(decision, identity, _remedy(planned.run_dir)) if word == "conflict" else ""
    return word, decision, message


# ----- running ---------------------------------------------------------------------------------------

def execute(planned, load_epoch=""):
    """Skip, resume or run one planned run; returns train.py's exit code (0 when skipped)."""
    from dpl.tools.train import cli as train_cli

    from .torchrun import processes_requested, run_on_processes  # imports the sweep, which imports us

    if planned.kind == "test":
        identity, model_args, model_note = evaluation_identity(planned, load_epoch)
        if model_note:
            print(model_note)
    else:
        identity, model_args = planned.identity, []
    decision = runs.decide(runs.read_state(planned.run_dir), identity)
    what = "run" if planned.kind == "train" else "evaluation"
    if decision.action == "conflict":
        raise ProtocolError(runs.conflict_message(decision, identity, _remedy(planned.run_dir)))
    if decision.note:
        print(decision.note)
    if decision.action == "finished":
        print(f"Skip: the {what} in {planned.run_dir} is finished ({decision.state.result}); "
              "delete the folder to run it again")
        return 0
    if decision.action == "resume":
        print(f"Resuming the unfinished run in {planned.run_dir} ({decision.state.progress()})")
    processes = processes_requested(os.environ)
    if processes > 1:
        return run_on_processes(train_py_argv(planned, model_args), processes)
    return train_cli(train_py_argv(planned, model_args))
