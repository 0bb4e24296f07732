"""Errors caused by what the user asked for (input, paths, state of an output dir).

``train.py`` prints their message as one line and exits non-zero, without a traceback; any other
exception is a bug and keeps its traceback. Other modules may raise these (or subclass ``UserError``,
which lives in ``dpl.utils.errors`` so that the data and CLIP layers can raise it too).
"""
from dpl.utils.errors import UserError


class RunLockError(UserError):
    """Another live run holds the output directory."""


class RunConflictError(UserError):
    """The output directory holds a result or checkpoints of another experiment (another run identity)."""


class OutputDirExistsError(UserError):
    """``TRAIN.IF_EXISTS error`` and the output directory already holds a run."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """The checkpoint file asked for does not exist."""


class CheckpointMismatchError(UserError, ValueError):
    """The checkpoint was written by another trainer."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss became NaN or infinite; training stops and keeps the last good checkpoint."""
