"""``build_lr_scheduler``: step/multi-step/cosine, optionally behind a constant or linear warmup.

The scheduler is stepped once per epoch (by the trainer at the last batch). With the prompt
configs (cosine, ``WARMUP_EPOCH 1``, ``constant``, ``WARMUP_CONS_LR 1e-5``, ``WARMUP_RECOUNT True``)
epoch 1 (1-based) trains at 1e-5 and epoch ``e >= 2`` at ``LR * 0.5 * (1 + cos(pi * (e - 2) / MAX_EPOCH))``.
"""
import torch
from torch.optim.lr_scheduler import LRScheduler

from dpl.utils.registry import check_availability

AVAILABLE_LR_SCHEDULERS = ["single_step", "multi_step", "cosine"]
AVAILABLE_WARMUP_TYPES = ["constant", "linear"]


class _WarmupScheduler(LRScheduler):
    """Runs its own LR for ``warmup_epoch`` steps, then hands every step to ``successor``."""

    def __init__(self, optimizer, successor, warmup_epoch, last_epoch=-1):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        super().__init__(optimizer, last_epoch)

    def warmup_lr(self):
        raise NotImplementedError

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return self.warmup_lr()

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)

    def state_dict(self):
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "successor")}
        state["successor"] = self.successor.state_dict()
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        self.successor.load_state_dict(state_dict.pop("successor"))
        self.__dict__.update(state_dict)


class ConstantWarmupScheduler(_WarmupScheduler):
    """A constant ``cons_lr`` during warmup."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr, last_epoch=-1):
        self.cons_lr = cons_lr
        super().__init__(optimizer, successor, warmup_epoch, last_epoch)

    def warmup_lr(self):
        return [self.cons_lr for _ in self.base_lrs]


class LinearWarmupScheduler(_WarmupScheduler):
    """``min_lr`` at step 0, then ``base_lr * step / warmup_epoch``."""

    def __init__(self, optimizer, successor, warmup_epoch, min_lr, last_epoch=-1):
        self.min_lr = min_lr
        super().__init__(optimizer, successor, warmup_epoch, last_epoch)

    def warmup_lr(self):
        if self.last_epoch == 0:
            return [self.min_lr for _ in self.base_lrs]
        return [lr * self.last_epoch / self.warmup_epoch for lr in self.base_lrs]


def _main_scheduler(optimizer, optim_cfg):
    name = optim_cfg.LR_SCHEDULER
    check_availability(name, AVAILABLE_LR_SCHEDULERS, "LR scheduler (OPTIM.LR_SCHEDULER)")
    stepsize = optim_cfg.STEPSIZE
    if name == "single_step":
        step = stepsize[-1] if isinstance(stepsize, (list, tuple)) else stepsize
        if not isinstance(step, int):
            raise TypeError(f"OPTIM.STEPSIZE must be an int (or a one-item list) for single_step, got {stepsize!r}")
        step = optim_cfg.MAX_EPOCH if step <= 0 else step  # -1: no decay within the run
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=optim_cfg.GAMMA)
    if name == "multi_step":
        if not isinstance(stepsize, (list, tuple)):
            raise TypeError(f"OPTIM.STEPSIZE must be a list of epochs for multi_step, got {stepsize!r}")
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(stepsize), gamma=optim_cfg.GAMMA)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=float(optim_cfg.MAX_EPOCH))


def build_lr_scheduler(optimizer, optim_cfg):
    """The scheduler named by ``optim_cfg.LR_SCHEDULER``, wrapped in a warmup when ``WARMUP_EPOCH > 0``."""
    scheduler = _main_scheduler(optimizer, optim_cfg)
    if optim_cfg.WARMUP_EPOCH <= 0:
        return scheduler
    check_availability(optim_cfg.WARMUP_TYPE, AVAILABLE_WARMUP_TYPES, "warmup type (OPTIM.WARMUP_TYPE)")
    if not optim_cfg.WARMUP_RECOUNT:
        scheduler.last_epoch = optim_cfg.WARMUP_EPOCH
    if optim_cfg.WARMUP_TYPE == "constant":
        return ConstantWarmupScheduler(optimizer, scheduler, optim_cfg.WARMUP_EPOCH, optim_cfg.WARMUP_CONS_LR)
    return LinearWarmupScheduler(optimizer, scheduler, optim_cfg.WARMUP_EPOCH, optim_cfg.WARMUP_MIN_LR)
