"""``setup_logger``: copy everything the process prints (stdout *and* stderr) into ``log.txt``.

Differences from Dassl, on purpose: an existing ``log.txt`` is appended to, after a banner that marks
the new session (Dassl wrote ``log.txt-<timestamp>``, which parsers never read); stderr (warnings,
tracebacks) is captured too, so a crashed run explains itself in its log.
"""
import datetime
import os
import socket
import sys

RESUME_BANNER = "=" * 20 + " Resumed session: log appended at {time} (pid {pid}, host {host}) " + "=" * 20


class _Tee:
    """A text stream that writes to the original stream and to a shared log file."""

    def __init__(self, original, log_file):
        self.original = original
        self.log_file = log_file

    def write(self, text):
        self.original.write(text)
        if not self.log_file.closed:
            self.log_file.write(text)
            self.log_file.flush()  # a killed run still leaves its last lines on disk
        return len(text)

    def flush(self):
        self.original.flush()
        if not self.log_file.closed:
            self.log_file.flush()
            os.fsync(self.log_file.fileno())

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


def close_logger():
    """Stop copying to the log file and restore the original streams (no-op when none is set)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, _Tee):
            setattr(sys, name, stream.original)
            if not stream.log_file.closed:
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
    os.makedirs(os.path.dirname(os.path.abspath(fpath)), exist_ok=True)
    resumed = os.path.isfile(fpath) and os.path.getsize(fpath) > 0
    log_file = open(fpath, "a", encoding="utf-8")
    if resumed:
        time = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        log_file.write("\n" + RESUME_BANNER.format(time=time, pid=os.getpid(), host=socket.gethostname()) + "\n")
        log_file.flush()
    sys.stdout = _Tee(sys.stdout, log_file)
    sys.stderr = _Tee(sys.stderr, log_file)
    return fpath
