"""The engine: Dassl's trainer API (``TRAINER_REGISTRY``, ``build_trainer``, ``TrainerX``) plus run safety."""
from .build import TRAINER_REGISTRY, build_trainer, extend_cfg_for_all_trainers
from .errors import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    NonFiniteLossError,
    OutputDirExistsError,
    RunConflictError,
    RunLockError,
    UserError,
)
from .interrupts import RunInterrupted, StopRequests
from .runtime import OutputDirClaim, RunLock, configure_determinism, evaluation_action, output_dir_action, skip_message
from .trainer import SimpleTrainer, TrainerBase, TrainerX

__all__ = [
    "TRAINER_REGISTRY",
    "build_trainer",
    "extend_cfg_for_all_trainers",
    "TrainerBase",
    "SimpleTrainer",
    "TrainerX",
    "RunLock",
    "OutputDirClaim",
    "configure_determinism",
    "output_dir_action",
    "evaluation_action",
    "RunInterrupted",
    "StopRequests",
    "RunConflictError",
    "skip_message",
    "UserError",
    "RunLockError",
    "OutputDirExistsError",
    "CheckpointNotFoundError",
    "CheckpointMismatchError",
    "NonFiniteLossError",
]
