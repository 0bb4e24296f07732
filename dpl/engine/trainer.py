"""The trainer lifecycle: ``TrainerBase`` -> ``SimpleTrainer`` -> ``TrainerX`` (Dassl's API and log lines).

Construction (``SimpleTrainer.__init__``): ``check_cfg`` -> device -> ``build_data_loader`` ->
``build_model`` -> evaluator (handed the long-tail groups of the training set: group metrics are
the evaluator's). Training (``train()``), inside the run's claim on ``OUTPUT_DIR`` (``OutputDirClaim``:
``TRAIN.IF_EXISTS`` decision and run lock): ``before_train`` (training images checked, resume), then
per epoch: data-order seeding, ``before_epoch``, ``run_epoch`` (a step per batch, then ``after_step``;
the schedulers step once, after the last batch's ``forward_backward``, unless the trainer called
``update_lr`` itself), ``after_epoch`` (validation, checkpoints), and ``after_train`` (final test,
``results.json``).

Checkpoints (per registered model, in ``OUTPUT_DIR/<model name>/``): Dassl's numbered
``model.pth.tar-<epoch>`` every ``TRAIN.CHECKPOINT_FREQ`` epochs and after the last one, and, so that
no interruption costs more than an epoch, ``model-last.pth.tar`` (replaced atomically) at every other
epoch end, every ``TRAIN.CHECKPOINT_ITERS`` steps when set, and at the step where a SIGINT/SIGTERM
stopped the run (``dpl.engine.interrupts``). A mid-epoch checkpoint records the batches done of its
epoch; resuming skips exactly those (``DataManager.set_epoch(..., start_batch)``). Every checkpoint
records the run's identity and config: a folder is never resumed for another experiment.

On several processes (``torchrun``) the same loop runs on each, data-parallel: ``self.world`` says which
(``dpl.engine.distributed``; its docstring says what is shared and who writes).

Hooks a trainer overrides: ``extend_cfg(cfg)`` (classmethod adding its config node), ``check_cfg``,
``build_model``, ``forward_backward``, ``parse_batch_train``, ``parse_batch_test``,
``model_inference``, ``checkpoint_state_dict(name)`` / ``load_checkpoint_state_dict(name, state_dict)``
(what a checkpoint holds for a registered model), ``get_trainer_state()`` / ``set_trainer_state(state)``
(extra state exact resume needs; call ``super()`` and add keys), and ``load_model``.
"""
import contextlib
import dataclasses
import datetime
import numbers
import os
import time
from collections import OrderedDict

import numpy as np
import torch

from dpl.evaluation import build_evaluator
from dpl.results import identity as run_identity
from dpl.results import schema as results_json
from dpl.utils.errors import UnwritableFileError
from dpl.utils.meters import AverageMeter, MetricMeter
from dpl.utils.torchtools import (
    BEST_NAME,
    LAST_NAME,
    checkpoint_name,
    get_rng_state,
    latest_checkpoint_path,
    load_checkpoint,
    loader_batches,
    save_checkpoint,
    set_rng_state,
    tolist_if_not,
)
from dpl.utils.tools import set_random_seed, write_json

from .distributed import current_world, process_seed
from .errors import CheckpointMismatchError, CheckpointNotFoundError, NonFiniteLossError, UserError
from .interrupts import NoStopRequests, RunInterrupted
from .runtime import OutputDirClaim


def _format_components(components):
    if not components:
        return "none given"
    values = {k: (v.detach().float().item() if isinstance(v, torch.Tensor) else v) for k, v in components.items()}
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def _remove_if_present(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


class TrainerBase:
    """Registered models/optimizers/schedulers, the epoch loop, checkpoints and TensorBoard."""

    # True for a trainer that learns nothing (zero-shot): settings on other trainers' config nodes
    # cannot change its run, so they are a logged note rather than a config error.
    TRAINING_FREE = False

    # ``{upstream key: own key}``: settings that upstream configs of the same method write under another name
    # (e.g. KgCoOp's ``TRAINER.COOP.W`` for ``TRAINER.KGCOOP.W``); train.py copies what they set
    # (``dpl.engine.build.adopt_upstream_settings``).
    UPSTREAM_ALIASES = {}

    @classmethod
    def config_nodes(cls):
        """The ``cfg.TRAINER`` node names this trainer reads (e.g. ``("COOP",)``), or None if undeclared.

        A value set on any other trainer's node would be ignored, so it is refused before the run
        (``dpl.engine.build.check_trainer_nodes``); None (the default) skips that check.
        """
        return None

    def __init__(self):
        self._models = OrderedDict()
        self._optims = OrderedDict()
        self._scheds = OrderedDict()
        self._writer = None
        self.scaler = None  # an AMP GradScaler, when a trainer uses one, is saved in the trainer state
        self.epochs_trained = 0  # epochs behind the current weights (resume / load_model update it)
        self.resume_batch = 0  # batches of the first epoch already done (a mid-epoch checkpoint)
        self.start_batch = 0  # the batch the current epoch starts at (0 unless resumed mid-epoch)
        self.stops = NoStopRequests()  # the entry point installs real SIGINT/SIGTERM handling
        self.last_saved = None  # the checkpoint file written last (named when a run stops on a signal)
        self.lr_stepped = False  # the schedulers stepped in the current epoch already (update_lr ran)
        self.output_claim = None  # the entry point's claim on OUTPUT_DIR (decision + lock); train() makes one without
        self._run_identity = None  # computed on first use; the entry point sets it (an evaluation's too)
        self.world = current_world()  # the run's processes (torchrun): see dpl.engine.distributed
        self._gradient_hooks = []  # averaging the learnable tensors' gradients over the processes, while training

    # ----- identity: what the run's results, checkpoints and output-dir claim record ---------------------
    @property
    def run_identity(self):
        """This run's identity (``dpl.results.identity``); an evaluation's is set by the entry point."""
        if self._run_identity is None:
            self._run_identity = run_identity.run_identity(self.cfg)
        return self._run_identity

    @run_identity.setter
    def run_identity(self, identity):
        self._run_identity = identity

    # ----- model registry -------------------------------------------------------------------------
    def register_model(self, name="model", model=None, optim=None, sched=None):
        if self.__dict__.get("_models") is None:
            raise AttributeError("Call TrainerBase.__init__() (super().__init__()) before register_model()")
        if name in self._models:
            raise KeyError(f'A model named "{name}" is already registered')
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names=None):
        registered = list(self._models.keys())
        if names is None:
            return registered
        names = tolist_if_not(names)
        for name in names:
            if name not in registered:
                raise KeyError(f'No model named "{name}" is registered; registered: {registered}')
        return names

    def set_model_mode(self, mode="train", names=None):
        for name in self.get_model_names(names):
            self._models[name].train(mode == "train")

    def update_lr(self, names=None):
        """Step the schedulers. The engine calls it once per epoch (``step_lr_once``); a Dassl-style trainer
        that calls it itself (in ``forward_backward`` at the epoch's last batch) is not stepped twice."""
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()
        self.lr_stepped = True

    def step_lr_once(self):
        """The epoch's scheduler step, after its last batch: taken unless the trainer took it itself.

        The flag is cleared here, so epoch-end checkpoints never record it; a mid-epoch checkpoint
        written after a trainer's own step records it (``get_trainer_state``), so the resumed epoch
        does not step again.
        """
        if not self.lr_stepped:
            self.update_lr()
        self.lr_stepped = False

    def get_current_lr(self, names=None):
        name = self.get_model_names(names)[0]
        return self._optims[name].param_groups[0]["lr"]

    # ----- optimisation step ----------------------------------------------------------------------
    def check_finite(self, loss, components=None):
        """Stop with ``NonFiniteLossError`` (epoch, batch, loss components, a hint) if ``loss`` is NaN/inf."""
        if torch.isfinite(loss).all():
            return
        epoch, batch = getattr(self, "epoch", 0), getattr(self, "batch_idx", 0)
        where = f"epoch {epoch + 1}/{getattr(self, 'max_epoch', '?')}, batch {batch + 1}/{getattr(self, 'num_batches', '?')}"
        lr = self.get_current_lr() if self._optims else None
        raise NonFiniteLossError(
            f"Loss is infinite or NaN! ({where}; loss {loss.detach().float().tolist()}; components: "
            f"{_format_components(components)}). Training stopped; the last good checkpoint in "
            f"{getattr(self, 'output_dir', '.')} is kept. Try fp32 precision (the trainer's PREC key) "
            f"or a lower OPTIM.LR (now {lr})."
        )

    def detect_anomaly(self, loss):
        self.check_finite(loss)

    def model_zero_grad(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss, components=None):
        self.check_finite(loss, components)
        loss.backward()

    def model_update(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss, names=None, components=None):
        """zero_grad -> NaN guard -> backward -> optimizer step (``components``: loss parts for the message)."""
        self.model_zero_grad(names)
        self.model_backward(loss, components)
        self.model_update(names)

    # ----- TensorBoard (optional) -----------------------------------------------------------------
    def init_writer(self, log_dir):
        if self._writer is not None or not self.world.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("TensorBoard is not installed: scalars are not written (pip install tensorboard)")
            return
        print(f"Initialize tensorboard (log_dir={log_dir})")
        self._writer = SummaryWriter(log_dir=log_dir)

    def close_writer(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write_scalar(self, tag, scalar_value, global_step=None):
        if self._writer is not None:
            self._writer.add_scalar(tag, scalar_value, global_step)

    # ----- checkpoints ----------------------------------------------------------------------------
    def checkpoint_state_dict(self, name):
        """The tensors saved for registered model ``name`` (prompt trainers keep learnable ones only)."""
        return self._models[name].state_dict()

    def load_checkpoint_state_dict(self, name, state_dict):
        """Load a saved ``state_dict`` into registered model ``name``."""
        self._models[name].load_state_dict(state_dict)

    def get_trainer_state(self):
        """Everything besides models/optimizers/schedulers that exact resume needs.

        Base: RNG states (python, numpy, torch, CUDA), ``best_result`` and the AMP ``GradScaler``.
        Subclasses add their method state: ``state = super().get_trainer_state(); state["gpa"] = ...``.
        Values must be tensors or plain Python values (checkpoints load with ``weights_only=True``).
        """
        state = {"rng": get_rng_state(), "best_result": float(getattr(self, "best_result", -np.inf))}
        if self.world.distributed:  # every process's own streams (rank 0 writes the checkpoint)
            state["rng_per_process"] = self.world.all_gather_objects(state["rng"])
            state["rng"] = state["rng_per_process"][0]
            state["world_size"] = self.world.size
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.lr_stepped:  # only mid-epoch, after a trainer's own step (``step_lr_once``)
            state["lr_stepped"] = True
        return state

    def set_trainer_state(self, state):
        """Restore what ``get_trainer_state`` returned (missing keys are left alone)."""
        if "best_result" in state:
            self.best_result = state["best_result"]
        if "scaler" in state and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        if "lr_stepped" in state:
            self.lr_stepped = state["lr_stepped"]
        per_process = state.get("rng_per_process")
        if per_process is not None and len(per_process) == self.world.size:
            set_rng_state(per_process[self.world.rank])
        elif "rng" in state:
            set_rng_state(state["rng"])

    def checkpoint_record(self):
        """What every checkpoint records about its run besides the model (``SimpleTrainer``: identity, config)."""
        return {}

    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name="", batch=0):
        """Write one checkpoint per registered model after (0-based) ``epoch``, or after ``batch``
        batches of the next epoch (a mid-epoch "last" checkpoint).

        A numbered checkpoint supersedes the "last" one, which is then removed (disk use stays bounded).
        """
        trainer_state = self.get_trainer_state()
        record = self.checkpoint_record()
        for name in self.get_model_names():
            optim, sched = self._optims[name], self._scheds[name]
            state = {
                "state_dict": self.checkpoint_state_dict(name),
                "epoch": epoch + 1 if not batch else epoch,
                "batch": batch,
                "optimizer": optim.state_dict() if optim is not None else None,
                "scheduler": sched.state_dict() if sched is not None else None,
                "val_result": val_result,
                "trainer": self.cfg.TRAINER.NAME,
                "trainer_state": trainer_state,
                **record,
            }
            model_dir = os.path.join(directory, name)
            if not self.world.is_main:  # rank 0 writes; the others know the file's name
                self.last_saved = os.path.join(model_dir, model_name or checkpoint_name(state["epoch"]))
                continue
            try:
                saved = save_checkpoint(state, model_dir, is_best=is_best, model_name=model_name)
            except UnwritableFileError as exc:
                raise self._unsaved(exc, model_dir) from exc
            self.last_saved = saved
            if not model_name:
                _remove_if_present(os.path.join(model_dir, LAST_NAME))
        self.world.barrier()  # the others may read it next (the best model for the final test)

    def _unsaved(self, exc, model_dir):
        """``exc`` (a checkpoint that could not be written) with what the run keeps and how to go on."""
        kept = latest_checkpoint_path(model_dir)
        kept = f"the last checkpoint {kept} is kept" if kept and os.path.isfile(kept) else "no checkpoint of it is kept"
        return UnwritableFileError(f"{exc}. Training stopped in epoch {getattr(self, 'epoch', 0) + 1}: {kept}; "
                                   "make room and run the same command again to continue",
                                   exc.errno, exc.strerror, exc.filename)

    def save_last(self, batch=0):
        """The "last" checkpoint: after the current epoch, or after ``batch`` batches of it."""
        self.save_model(self.epoch, self.output_dir, model_name=LAST_NAME, batch=batch)

    def _check_checkpoint_trainer(self, checkpoint, path):
        saved_by = checkpoint.get("trainer")
        if saved_by and saved_by != self.cfg.TRAINER.NAME:
            raise CheckpointMismatchError(
                f'{path} was saved by trainer "{saved_by}", but this run uses "{self.cfg.TRAINER.NAME}": '
                f"pass --trainer {saved_by} (with its config) or a model dir of a {self.cfg.TRAINER.NAME} run"
            )

    def check_resumable(self, checkpoint, path, directory):
        """Refuse a checkpoint that belongs to another experiment (``SimpleTrainer`` compares identities)."""

    def resume_model_if_exist(self, directory):
        """Resume every registered model from its latest checkpoint in ``directory``; return the start epoch.

        A mid-epoch checkpoint also sets ``resume_batch``, the batches of that epoch already done.
        """
        names = self.get_model_names()
        paths = [latest_checkpoint_path(os.path.join(directory, name)) for name in names]
        if not names or any(p is None or not os.path.isfile(p) for p in paths):
            dangling = [p for p in paths if p is not None and not os.path.isfile(p)]
            if dangling:  # e.g. checkpoint files deleted to save space: say why nothing is resumed
                print(f"Note: {dangling} named by a checkpoint pointer file do not exist")
            print("No checkpoint found, train from scratch")
            return 0
        print(f"Found checkpoint at {directory} (will resume training)")
        start_epoch, trainer_state = 0, None
        for name, path in zip(names, paths):
            print(f'Loading checkpoint from "{path}"')
            checkpoint = load_checkpoint(path)
            self._check_checkpoint_trainer(checkpoint, path)
            self.check_resumable(checkpoint, path, directory)
            self.load_checkpoint_state_dict(name, checkpoint["state_dict"])
            if self._optims[name] is not None and checkpoint.get("optimizer") is not None:
                self._optims[name].load_state_dict(checkpoint["optimizer"])
            if self._scheds[name] is not None and checkpoint.get("scheduler") is not None:
                self._scheds[name].load_state_dict(checkpoint["scheduler"])
            start_epoch = checkpoint["epoch"]
            self.resume_batch = checkpoint.get("batch", 0)
            trainer_state = trainer_state or checkpoint.get("trainer_state")
        self._check_processes(trainer_state, start_epoch, paths[0])
        print(f"Previous epoch: {start_epoch}")
        if self.resume_batch:
            print(f"Resuming in epoch {start_epoch + 1} after its first {self.resume_batch} batches")
        if trainer_state is not None:
            self.set_trainer_state(trainer_state)
        else:
            print("Note: the checkpoint holds no trainer state (RNG, scaler): the resumed run is not bit-exact")
        self.epochs_trained = start_epoch
        return start_epoch

    def _check_processes(self, trainer_state, start_epoch, path):
        """Training continues on as many processes as wrote the checkpoint: each resumes its own random
        streams (a finished run, whose final test alone runs again, may use any number)."""
        recorded = (trainer_state or {}).get("world_size", 1)
        if recorded == self.world.size or (start_epoch >= self.max_epoch and not self.resume_batch):
            return
        how = (f"torchrun --nproc_per_node {recorded} train.py ... (NPROC={recorded} for the scripts)" if recorded > 1
               else "one process (python train.py, without torchrun or NPROC)")
        raise CheckpointMismatchError(
            f"{path} was written by a run on {recorded} process{'es' if recorded > 1 else ''}, this run has "
            f"{self.world.size}: continue it with {how}, so that every process resumes its own random streams")

    def _missing_model_message(self, directory, name, model_file):
        model_path = os.path.join(directory, name, model_file)
        if not os.path.isdir(directory):
            return f"No model at {model_path}: the model directory {directory} does not exist"
        if not os.path.isdir(os.path.join(directory, name)):
            found = sorted(e for e in os.listdir(directory) if os.path.isfile(os.path.join(directory, e, "checkpoint")))
            held = f"it holds checkpoints of {found} (another trainer?)" if found else "it holds no checkpoint"
            return f"No model at {model_path}: {held}; {self.cfg.TRAINER.NAME} saves its model as '{name}'"
        files = sorted(f for f in os.listdir(os.path.join(directory, name)) if f.startswith("model"))
        hint = f"available: {files}; choose one with --load-epoch N" if files else "the folder holds no checkpoint"
        return f"No model at {model_path}: {hint}"

    def load_model(self, directory, epoch=None):
        """Load ``model-best.pth.tar`` (``epoch`` None) or ``model.pth.tar-<epoch>`` for every model."""
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        model_file = BEST_NAME if epoch is None else checkpoint_name(epoch)
        for name in self.get_model_names():
            model_path = os.path.join(directory, name, model_file)
            if not os.path.isfile(model_path):
                raise CheckpointNotFoundError(self._missing_model_message(directory, name, model_file))
            checkpoint = load_checkpoint(model_path)
            self._check_checkpoint_trainer(checkpoint, model_path)
            saved_epoch = checkpoint.get("epoch")
            val_result = checkpoint.get("val_result")
            shown = f"{val_result:.1f}" if isinstance(val_result, numbers.Real) else "None"
            print(f"Load {model_path} to {name} (epoch={saved_epoch}, val_result={shown})")
            self.load_checkpoint_state_dict(name, checkpoint["state_dict"])
            if isinstance(saved_epoch, int):
                self.epochs_trained = saved_epoch

    # ----- the loop -------------------------------------------------------------------------------
    def train(self, start_epoch, max_epoch):
        """Generic loop, inside the run's claim on ``OUTPUT_DIR`` (``TRAIN.IF_EXISTS`` decision and run lock).

        ``train.py`` claims the folder before it builds the trainer and hands the claim over
        (``output_claim``); a trainer used without it makes the same claim here, so it too never trains
        in a folder of another experiment or in one another run holds.
        """
        self.start_epoch, self.max_epoch = start_epoch, max_epoch
        own = self.output_claim is None
        claim = OutputDirClaim(self.cfg, self.run_identity) if own else self.output_claim
        if claim.skip:
            print(claim.skip_message())
            return
        with claim if self.world.is_main else contextlib.nullcontext():  # rank 0 holds the lock for the run
            for note in claim.notes if own else ():  # train.py logs the notes of its claim
                print(note)
            self.lr_stepped = False  # a step before training is not this epoch's (a mid-epoch resume restores it)
            self.start_processes()
            try:
                self.before_train()
                with self.stops.deferred():
                    for self.epoch in range(self.start_epoch, self.max_epoch):
                        # only the first epoch resumes mid-way
                        self.start_batch, self.resume_batch = self.resume_batch, 0
                        self.seed_data_order(self.epoch)
                        self.before_epoch()
                        self.run_epoch()
                        self.epochs_trained = self.epoch + 1
                        self.after_epoch()
                        self.stop_if_requested()
            finally:
                self.stop_processes()
            self.after_train()

    def optimized_parameters(self):
        """The registered optimizers' parameters (what training changes)."""
        return [p for optim in self._optims.values() if optim is not None
                for group in optim.param_groups for p in group["params"]]

    def start_processes(self):
        """On several processes, before anything is resumed: rank 0's learnable tensors on every process,
        each process's own random streams (from ``SEED``, which such a run must set), and gradient averaging."""
        world = self.world
        if not world.distributed:
            return
        params = self.optimized_parameters()
        world.broadcast_(params)
        set_random_seed(process_seed(self.cfg.SEED, world.rank))
        self._gradient_hooks = world.average_gradients(params)
        print(f"Data parallel: {world.size} processes ({world.backend}); each takes 1/{world.size} of every "
              f"global batch of {self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE}")

    def stop_processes(self):
        for handle in self._gradient_hooks:
            handle.remove()
        self._gradient_hooks = []

    def requested_stop(self):
        """The signal that asked the run to stop, agreed by all processes (None: go on). On several
        processes it is a collective: every process calls it at the same step boundary."""
        return self.world.max_int(self.stops.signum or 0) or None

    def stop_if_requested(self):
        """Raise ``RunInterrupted`` when a signal asked the run to stop (its last checkpoint is written)."""
        signum = self.requested_stop()
        if signum is not None:
            raise RunInterrupted(signum, saved=self.last_saved or "")

    def seed_data_order(self, epoch):
        """Make the training data order a function of (SEED, epoch), so a resumed run replays it;
        the epoch starts after its first ``start_batch`` batches (a mid-epoch resume)."""

    def before_train(self):
        pass

    def after_train(self):
        pass

    def before_epoch(self):
        pass

    def after_epoch(self):
        pass

    def run_epoch(self):
        raise NotImplementedError

    def test(self, split=None):
        raise NotImplementedError

    def parse_batch_train(self, batch):
        raise NotImplementedError

    def parse_batch_test(self, batch):
        raise NotImplementedError

    def forward_backward(self, batch):
        raise NotImplementedError

    def model_inference(self, input):
        raise NotImplementedError


class SimpleTrainer(TrainerBase):
    """A trainer with one data manager, an evaluator, Dassl's before/after hooks and ``test()``."""

    def __init__(self, cfg):
        super().__init__()
        self.check_cfg(cfg)
        if torch.cuda.is_available() and cfg.USE_CUDA:
            # each process of a run has its own GPU (torchrun's LOCAL_RANK); one process uses the current one
            self.device = torch.device("cuda", self.world.local_rank if self.world.distributed else None)
        else:
            self.device = torch.device("cpu")
        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR
        self.cfg = cfg
        self.build_data_loader()
        self.build_model()
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname, groups=self.long_tail_groups())
        self.best_result = -np.inf
        self.train_seconds = None
        self._training = False
        self._test_records = OrderedDict()
        self.code_version = None  # dpl version and git commit (computed on first use; the entry point sets it)

    def check_cfg(self, cfg):
        """Validate the trainer's config node (e.g. ``PREC``); called first in ``__init__``."""

    def build_data_loader(self):
        """``self.dm`` and its loaders (data is built before the model: trainers read class names)."""
        from dpl.data import DataManager  # imported here: the engine must import without the data stack

        dm = DataManager(self.cfg, world=self.world)
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u
        self.val_loader = dm.val_loader
        self.test_loader = dm.test_loader
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname
        self.dm = dm

    def build_model(self):
        """Build ``self.model`` (and optimizer/scheduler) and ``register_model`` it."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_model()")

    def seed_data_order(self, epoch):
        """Re-seed the training loader from (SEED, epoch) through ``DataManager.set_epoch`` (and start
        the first resumed epoch after its ``resume_batch`` batches).

        Loaders a trainer built itself are re-seeded when they carry a ``torch.Generator``.
        """
        dm = getattr(self, "dm", None)
        if dm is not None and getattr(dm, "train_loader_x", None) is self.train_loader_x and hasattr(dm, "set_epoch"):
            dm.set_epoch(epoch, start_batch=self.start_batch)
            return
        if self.start_batch:
            raise RuntimeError(f"{type(self).__name__} built its own training loader: a mid-epoch checkpoint "
                               "cannot be resumed (resume from an epoch-end checkpoint)")
        if self.cfg.SEED < 0:
            return
        generator = getattr(self.train_loader_x, "generator", None)
        if isinstance(generator, torch.Generator):
            from dpl.data import epoch_seed

            generator.manual_seed(epoch_seed(self.cfg.SEED, epoch))

    def get_trainer_state(self):
        """Adds the data seed (the order and augmentation of an unseeded run too resume exactly)."""
        state = super().get_trainer_state()
        dm = getattr(self, "dm", None)
        if dm is not None and hasattr(dm, "data_seed"):
            state["data_seed"] = dm.data_seed
        return state

    def set_trainer_state(self, state):
        super().set_trainer_state(state)
        dm = getattr(self, "dm", None)
        if "data_seed" in state and dm is not None and hasattr(dm, "data_seed"):
            dm.data_seed = state["data_seed"]

    # ----- what a run's results and checkpoints record -------------------------------------------------
    def checkpoint_record(self):
        identity = self.run_identity
        return {"run_identity": identity, "run_id": run_identity.run_id(identity),
                "config": results_json.cfg_to_dict(self.cfg)}

    def check_resumable(self, checkpoint, path, directory):
        """Notes on checkpoints of older code and on ``RESUME`` (another folder, the user's explicit choice).

        The run's own folder was claimed for this experiment before (``OutputDirClaim``): a folder of
        another experiment never gets here.
        """
        recorded = checkpoint.get("run_identity")
        if recorded == self.run_identity:
            return
        if recorded is None:
            print(f"Note: {path} records no run identity (written before runs recorded one): resuming it as before")
        elif os.path.abspath(directory) != os.path.abspath(self.output_dir):
            print(f"Note: RESUME {directory} holds run {run_identity.run_id(recorded)}, this run is "
                  f"{run_identity.run_id(self.run_identity)}: continuing from its weights as asked")

    # ----- the loop ------------------------------------------------------------------------------------
    def check_training_images(self):
        """Open every sampled training image before the first epoch (a damaged file fails now, in one line)."""
        dataset = getattr(getattr(self, "dm", None), "dataset", None)
        if dataset is None or self.cfg.DATASET.NUM_SHOTS < 1:
            return
        from dpl.data import check_training_images  # imported here: the engine must import without the data stack

        items = list(dataset.train_x) + list(dataset.val or [])
        check_training_images(items, self.cfg.DATASET.NAME, self.cfg.DATASET.ROOT,
                              stem=getattr(dataset, "stem", None) or None)

    def before_train(self):
        self.check_training_images()
        if self.world.distributed and getattr(self, "train_loader_x", None) is not None:
            from dpl.data.data_manager import check_global_batch, check_training_batches  # (engine: no data stack)

            check_global_batch(self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE, self.world.size)
            check_training_batches(self.train_loader_x, self.world.size)
        directory = self.cfg.RESUME or self.output_dir
        self.start_epoch = self.resume_model_if_exist(directory)
        self.init_writer(os.path.join(self.output_dir, "tensorboard"))
        self.time_start = time.time()
        self._training = True

    def after_train(self):
        print("Finish training")
        self._training = False
        self.train_seconds = time.time() - self.time_start
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                print("Deploy the model with the best val performance")
                self.load_model(self.output_dir)
            else:
                print("Deploy the last-epoch model")
            self.test()
        elapsed = round(time.time() - self.time_start)
        print(f"Elapsed: {datetime.timedelta(seconds=elapsed)}")
        self.close_writer()

    def after_epoch(self):
        last_epoch = (self.epoch + 1) == self.max_epoch
        do_test = not self.cfg.TEST.NO_TEST
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        meet_checkpoint_freq = (self.epoch + 1) % freq == 0 if freq > 0 else False
        if do_test and self.cfg.TEST.FINAL_MODEL == "best_val":
            curr_result = self.test(split="val")
            if curr_result > self.best_result:
                self.best_result = curr_result
                self.save_model(self.epoch, self.output_dir, val_result=curr_result, model_name=BEST_NAME)
        if meet_checkpoint_freq or last_epoch:
            self.save_model(self.epoch, self.output_dir)
        else:
            self.save_last()

    @torch.no_grad()
    def test(self, split=None):
        """Evaluate on ``split`` (``TEST.SPLIT`` by default; val falls back to test); return the accuracy."""
        self.set_model_mode("eval")
        self.evaluator.reset()
        if split is None:
            split = self.cfg.TEST.SPLIT
        if split == "val" and self.val_loader is not None:
            data_loader = self.val_loader
        else:
            split = "test"
            data_loader = self.test_loader
        print(f"Evaluate on the *{split}* set")
        start = time.time()
        details = self.evaluate_loader(data_loader, split)
        if self.world.distributed:
            self.gather_evaluation()
        results = self.evaluator.evaluate()
        for k, v in results.items():
            if isinstance(v, numbers.Real):
                self.write_scalar(f"{split}/{k}", v, self.epoch)
        for group, v in results.get("group_accuracy", {}).items():
            if v is not None:
                self.write_scalar(f"{split}/{group}_shot_accuracy", v, self.epoch)
        self.write_results(split, results, time.time() - start, details)
        return list(results.values())[0]

    def evaluate_loader(self, data_loader, split):
        """Hand the evaluator the predictions of every batch of ``data_loader`` (this process's shard of
        ``split``); returns what the test record adds (``{}`` here; prompt trainers say where their image
        features came from)."""
        with loader_batches(data_loader) as batches:
            for batch in batches:
                input, label = self.parse_batch_test(batch)
                output = self.model_inference(input)
                self.evaluator.process(output, label)
        return {}

    def gather_evaluation(self):
        """Combine the processes' shards of the split in the evaluator (every image counted once)."""
        gather = getattr(self.evaluator, "gather", None)
        if gather is None:
            raise UserError(f"the evaluator {type(self.evaluator).__name__} (TEST.EVALUATOR) cannot combine the "
                            "predictions of several processes (it has no gather(world)): evaluate on one process")
        gather(self.world)

    def long_tail_groups(self):
        """``{label: "many" | "medium" | "few"}`` of this run's long-tail training set, else None: what
        the evaluator needs for ``group_accuracy`` (the metric itself is the evaluator's).

        Only runs with ``DATASET.IMBALANCE_RATIO != 1`` on a dataset with a training split have groups;
        they describe this run's training counts (``long_tail_groups(train_x)``), so they belong to a
        test of the same classes (the long-tail ``train_base`` run; the new-class test passes no ratio).
        """
        dataset = getattr(getattr(self, "dm", None), "dataset", None)
        if self.cfg.DATASET.IMBALANCE_RATIO == 1 or dataset is None or not dataset.train_x or \
                getattr(dataset, "test_only", False):
            return None
        from dpl.data.datasets import long_tail_groups  # imported here: the engine must import without the data stack

        return long_tail_groups(dataset.train_x)

    def write_results(self, split, results, test_seconds, details=None):
        """Record this test and rewrite ``OUTPUT_DIR/results.json`` atomically (schema: dpl.results.schema);
        ``details``: more keys of the test record (``evaluate_loader``'s)."""
        if self.code_version is None:
            self.code_version = results_json.code_version()
        identity = self.run_identity
        weights = getattr(self, "weights_info", None)
        provenance = {"run_id": run_identity.run_id(identity), "identity": identity, "code": self.code_version,
                      "weights": dataclasses.asdict(weights) if weights is not None else None,
                      "command": results_json.command_line()}
        self._test_records[split] = results_json.test_record(
            split,
            results,
            num_samples=getattr(self.evaluator, "num_samples", None),
            num_correct=getattr(self.evaluator, "num_correct", None),
            epoch=self.epochs_trained,
            finished=not self._training,
            test_seconds=test_seconds,
            details=details,
        )
        if not self.world.is_main:
            return
        doc = results_json.build_results(
            self.cfg, dict(self._test_records), split, self.device, provenance, self.train_seconds,
            processes=self.world.size,
        )
        write_json(doc, results_json.results_path(self.output_dir))

    def parse_batch_test(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def model_inference(self, input):
        return self.model(input)


class TrainerX(SimpleTrainer):
    """A trainer over labelled data ``train_loader_x`` (the base class of every prompt trainer)."""

    def train(self):
        super().train(self.start_epoch, self.max_epoch)

    def run_epoch(self):
        self.set_model_mode("train")
        losses = MetricMeter()
        batch_time = AverageMeter()
        data_time = AverageMeter()
        self.num_batches = len(self.train_loader_x)
        print_freq = self.cfg.TRAIN.PRINT_FREQ
        end = time.time()
        with loader_batches(self.train_loader_x) as batches:
            for self.batch_idx, batch in enumerate(batches, start=self.start_batch):
                data_time.update(time.time() - end)
                loss_summary = self.world.mean_of(self.forward_backward(batch))  # logged: the global batch's
                if self.batch_idx + 1 == self.num_batches:
                    self.step_lr_once()  # before the progress line: it shows the LR the next epoch uses
                batch_time.update(time.time() - end)
                losses.update(loss_summary)
                if (self.batch_idx + 1) % print_freq == 0 or self.num_batches < print_freq:
                    print(self.progress_line(batch_time, data_time, losses))
                n_iter = self.epoch * self.num_batches + self.batch_idx
                for name, meter in losses.meters.items():
                    self.write_scalar("train/" + name, meter.avg, n_iter)
                if self._optims:
                    self.write_scalar("train/lr", self.get_current_lr(), n_iter)
                self.after_step()
                end = time.time()

    def after_step(self):
        """Mid-epoch "last" checkpoints: every ``TRAIN.CHECKPOINT_ITERS`` steps, and where a signal
        asked the run to stop (then it stops here; at an epoch's last step, ``after_epoch`` saves)."""
        done = self.batch_idx + 1
        if done >= self.num_batches:
            return
        every = self.cfg.TRAIN.CHECKPOINT_ITERS
        stop = self.requested_stop()
        if stop is not None or (every > 0 and (self.epoch * self.num_batches + done) % every == 0):
            self.save_last(batch=done)
        if stop is not None:
            raise RunInterrupted(stop, saved=self.last_saved or "")

    def progress_line(self, batch_time, data_time, losses):
        """``epoch [3/10] batch [20/50] time ... data ... <losses> lr 1.9823e-03 eta 0:01:23``."""
        remaining = self.num_batches - self.batch_idx - 1 + (self.max_epoch - self.epoch - 1) * self.num_batches
        eta = datetime.timedelta(seconds=int(batch_time.avg * remaining))
        parts = [
            f"epoch [{self.epoch + 1}/{self.max_epoch}]",
            f"batch [{self.batch_idx + 1}/{self.num_batches}]",
            f"time {batch_time.val:.3f} ({batch_time.avg:.3f})",
            f"data {data_time.val:.3f} ({data_time.avg:.3f})",
            f"{losses}",
        ]
        if self._optims:
            parts.append(f"lr {self.get_current_lr():.4e}")
        parts.append(f"eta {eta}")
        return " ".join(parts)

    def parse_batch_train(self, batch):
        input = batch["img"].to(self.device)
        label = batch["label"].to(self.device)
        domain = batch["domain"].to(self.device)
        return input, label, domain
