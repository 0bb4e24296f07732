"""The base of the errors a user causes (paths, config values, input files), in the lowest layer.

``train.py`` prints a ``UserError`` as one line and exits non-zero; any other exception is a bug and
keeps its traceback. It lives here, not in the engine, so the data and CLIP layers can raise it without
importing the engine. ``dpl.engine.errors`` re-exports it and adds the engine's own cases.
"""


class UserError(Exception):
    """An error the user can fix; its message says how."""


class InvalidInputError(UserError, ValueError):
    """A config value or an input file the code cannot use (a ``ValueError`` for callers that catch those)."""


class UnreadableFileError(UserError, OSError):
    """An input file exists but cannot be read or decoded (an ``OSError`` for callers that catch those)."""
