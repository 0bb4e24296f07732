from .lr_scheduler import AVAILABLE_LR_SCHEDULERS, ConstantWarmupScheduler, LinearWarmupScheduler, build_lr_scheduler
from .optimizer import AVAILABLE_OPTIMIZERS, build_optimizer

__all__ = [
    "build_optimizer",
    "build_lr_scheduler",
    "ConstantWarmupScheduler",
    "LinearWarmupScheduler",
    "AVAILABLE_OPTIMIZERS",
    "AVAILABLE_LR_SCHEDULERS",
]
