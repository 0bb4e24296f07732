"""Errors caused by what the user asked for (input, paths, state of an output dir).

``train.py`` prints their message as one line and exits non-zero, without a traceback; any other
exception is a bug and keeps its traceback. Other modules may raise these (or subclass ``UserError``).
"""


class UserError(Exception):
    """An error the user can fix; its message says how."""


class RunLockError(UserError):
    """Another live run holds the output directory."""


class OutputDirExistsError(UserError):
    """``TRAIN.IF_EXISTS error`` and the output directory already holds a run."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """The checkpoint file asked for does not exist."""


class CheckpointMismatchError(UserError, ValueError):
    """The checkpoint was written by another trainer."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss became NaN or infinite; training stops and keeps the last good checkpoint."""
