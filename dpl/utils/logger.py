"""``setup_logger``: copy everything the process prints (stdout *and* stderr) into ``log.txt``.

Differences from Dassl, on purpose: an existing ``log.txt`` is appended to, after a banner that marks
the new session (Dassl wrote ``log.txt-<timestamp>``, which parsers never read); stderr (warnings,
tracebacks) is captured too, so a crashed run explains itself in its log.
"""
import contextlib
import datetime
import os
import socket
import sys

from .errors import UnwritableFileError

RESUME_BANNER = "=" * 20 + " Resumed session: log appended at {time} (pid {pid}, host {host}) " + "=" * 20


class _LogFile:
    """The log file both tees write to; the first failure to write it stops the copying, with one warning.

    A full disk must not turn every ``print()`` of the run into an exception (nor make it silently stop
    logging): the console keeps everything, and says once from where on the log file misses lines.
    """

    def __init__(self, path, handle):
        self.path = path
        self.handle = handle

    @property
    def closed(self):
        return self.handle.closed

    def write(self, text, warn_to):
        self._guard(warn_to, lambda: (self.handle.write(text), self.handle.flush()))

    def sync(self, warn_to):
        self._guard(warn_to, lambda: (self.handle.flush(), os.fsync(self.handle.fileno())))

    def close(self):
        with contextlib.suppress(OSError):  # unflushed lines of a failed log cannot be saved anyway
            self.handle.close()

    def _guard(self, warn_to, operation):
        if self.closed:
            return
        try:
            operation()
        except OSError as exc:
            self.close()
            reason = exc.strerror or str(exc)
            warn_to.write(
                f"Warning: cannot write {self.path} ({reason}): log lines from here on are only on the console\n"
            )


class _Tee:
    """A text stream that writes to the original stream and to a shared ``_LogFile``."""

    def __init__(self, original, log_file):
        self.original = original
        self.log_file = log_file

    def write(self, text):
        self.original.write(text)
        self.log_file.write(text, warn_to=self.original)  # flushed: a killed run still leaves its last lines
        return len(text)

    def flush(self):
        self.original.flush()
        self.log_file.sync(warn_to=self.original)

    def isatty(self):
        return False  # progress bars must not draw carriage-return animations into the log

    def fileno(self):
        return self.original.fileno()

    def __getattr__(self, name):  # encoding, errors, ... of the original stream
        return getattr(self.original, name)


def _log_path(output):
    if output.endswith(".txt") or output.endswith(".log"):
        return output
    return os.path.join(output, "log.txt")


def _open_log(fpath):
    """A ``_LogFile`` appending to ``fpath``; ``UnwritableFileError`` when the folder or file cannot be made."""
    existed = os.path.exists(fpath)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(fpath)), exist_ok=True)
        handle = open(fpath, "a", encoding="utf-8")
    except OSError as exc:
        raise UnwritableFileError.from_os_error(exc, fpath, existed=existed) from exc
    return _LogFile(fpath, handle)


def close_logger():
    """Stop copying to the log file and restore the original streams (no-op when none is set)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, _Tee):
            setattr(sys, name, stream.original)
            stream.log_file.close()


def setup_logger(output=None):
    """Tee stdout and stderr into ``output`` (a ``.txt``/``.log`` file, or a folder -> ``folder/log.txt``).

    Returns the log file path (None when ``output`` is empty). Calling it again switches to the new
    file. An existing non-empty log is appended to after a "Resumed session" banner.
    """
    close_logger()
    if not output:
        return None
    fpath = _log_path(output)
    resumed = os.path.isfile(fpath) and os.path.getsize(fpath) > 0
    log_file = _open_log(fpath)
    if resumed:
        time = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        banner = RESUME_BANNER.format(time=time, pid=os.getpid(), host=socket.gethostname())
        log_file.write(f"\n{banner}\n", warn_to=sys.stderr)
    sys.stdout = _Tee(sys.stdout, log_file)
    sys.stderr = _Tee(sys.stderr, log_file)
    return fpath
