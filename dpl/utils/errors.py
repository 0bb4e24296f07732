"""The base of the errors a user causes (paths, config values, input files), in the lowest layer.

``train.py`` prints a ``UserError`` as one line and exits non-zero; any other exception is a bug and
keeps its traceback. It lives here, not in the engine, so the data and CLIP layers can raise it without
importing the engine. ``dpl.engine.errors`` re-exports it and adds the engine's own cases.
"""
import os


class UserError(Exception):
    """An error the user can fix; its message says how."""


class InvalidInputError(UserError, ValueError):
    """A config value or an input file the code cannot use (a ``ValueError`` for callers that catch those)."""


class SettingError(ValueError):
    """A bad value of a library setting, named by its parameter (``field``), in plain words (``reason``).

    Library code knows no config keys; the entry point that read the value from a config turns this
    into a ``UserError`` naming its own key (``dpl.prompting.settings.setting_errors``).
    """

    def __init__(self, field, reason):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def require(condition, field, reason):
    """``SettingError(field, reason)`` unless ``condition``: the one-line validation of a setting."""
    if not condition:
        raise SettingError(field, reason)


class UnreadableFileError(UserError, OSError):
    """An input file exists but cannot be read or decoded (an ``OSError`` for callers that catch those)."""


class UnwritableFileError(UserError, OSError):
    """A file or folder cannot be written: no space, no permission, read-only file system.

    An ``OSError`` for callers that catch those: ``errno``, ``strerror`` and ``filename`` describe the
    failure (``filename`` is the path the user knows, not a temporary name); ``str()`` is the one-line
    message.
    """

    def __init__(self, message, errno=None, strerror=None, filename=None):
        OSError.__init__(self, errno, strerror or message, filename)
        self.message = message

    def __str__(self):
        return self.message

    def __reduce__(self):  # OSError pickles its args, which do not hold the message
        return type(self), (self.message, self.errno, self.strerror, self.filename)

    @classmethod
    def from_os_error(cls, exc, path, doing="write", existed=False):
        """``Cannot <doing> <path>: <strerror>; <what is left>`` for the ``OSError`` ``exc``.

        ``existed``: ``path`` was there before, and the failed write left it as it was.
        """
        reason = exc.strerror or str(exc) or type(exc).__name__
        left = f"the previous {os.path.basename(path)} is kept" if existed else "nothing was written"
        return cls(f"Cannot {doing} {path}: {reason}; {left}", exc.errno, exc.strerror, os.fspath(path))
