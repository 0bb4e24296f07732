"""What a launched sweep shows: each job's status, a table per method x dataset, and its failures.

Both launchers (``local_queue`` and ``slurm``) keep one ``Progress``: a status per job (``queued``,
``running``, ``done``, ``failed``, ``cancelled``) and, for a job that ran, its log file. ``table()`` counts
them per method and dataset; ``failure_lines()`` names each failed job with its log and the last lines
of its error, so a sweep of hundreds of runs says what went wrong without opening a log.
"""
import os
import sys
import time

from tabulate import tabulate

STATUSES = ("queued", "running", "done", "failed", "cancelled")
_TAIL_BYTES = 64 * 1024


def tail_lines(path, n=5, skip=()):
    """The last ``n`` non-empty lines of the file at ``path`` (those starting with one of ``skip`` left
    out); [] when it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - _TAIL_BYTES))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    lines = [line.rstrip() for line in text.replace("\r", "\n").splitlines()]
    return [line for line in lines if line.strip() and not line.startswith(tuple(skip))][-n:]


class Progress:
    """The status of every job of a sweep, in the plan's order."""

    def __init__(self, jobs, error_skip=()):
        self.jobs = list(jobs)
        self.status = {job: "queued" for job in self.jobs}
        self.logs = {}  # job -> the log file of its (last) run
        self.notes = {}  # job -> why it failed or was cancelled, in a few words
        self.error_skip = tuple(error_skip)  # starts of the launcher's log lines (left out of failure tails)

    def set(self, job, status, note=""):
        assert status in STATUSES, status
        self.status[job] = status
        if note:
            self.notes[job] = note

    def add(self, job, status, note=""):
        """A job that was not launched (e.g. refused while planning), shown with the others."""
        self.jobs.append(job)
        self.set(job, status, note)

    def count(self, status):
        return sum(1 for s in self.status.values() if s == status)

    def active(self):
        return [job for job in self.jobs if self.status[job] in ("queued", "running")]

    def failed(self):
        return [job for job in self.jobs if self.status[job] in ("failed", "cancelled")]

    def line(self):
        """One line: how many jobs are in each status."""
        return ", ".join(f"{self.count(status)} {status}" for status in STATUSES if self.count(status)
                         or status in ("queued", "running", "done"))

    def table(self):
        """Counts per method x dataset (rows in the plan's order), with a total row."""
        rows = {}
        for job in self.jobs:
            counts = rows.setdefault((job.method.name, job.dataset), dict.fromkeys(STATUSES, 0))
            counts[self.status[job]] += 1
        shown = [status for status in STATUSES if status != "cancelled" or self.count("cancelled")]
        body = [[method, dataset, *(counts[s] or "" for s in shown)] for (method, dataset), counts in rows.items()]
        body.append(["total", "", *(self.count(s) for s in shown)])
        return tabulate(body, headers=["method", "dataset", *shown], tablefmt="simple")

    def failure_lines(self):
        """For each failed or cancelled job: the job, why, its log and the last lines of its error."""
        lines = []
        for job in self.failed():
            note = self.notes.get(job, "")
            lines.append(f"{self.status[job]}: {job.text()}{f' ({note})' if note else ''}")
            log = self.logs.get(job)
            if log and os.path.exists(log):  # a cancelled job may never have started
                lines.append(f"    log: {log}")
                lines += [f"    | {line}" for line in tail_lines(log, skip=self.error_skip)]
        return lines


class LiveView:
    """Shows a block of text that changes: redrawn in place on a terminal, printed again (only when it
    changed) elsewhere, so that a log file of the sweep stays readable."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self._shown = None
        self._height = 0

    def show(self, text):
        if text == self._shown:
            return
        self._clear()
        block = text
        if not self.tty:  # a log: say when, on the line itself when the text is one line
            block = f"[{time.strftime('%H:%M:%S')}]{chr(10) if chr(10) in text else ' '}{text}"
        self.stream.write(block + "\n")
        self.stream.flush()
        self._shown, self._height = text, block.count("\n") + 1

    def print(self, line):
        """A line that stays (an event), printed above the block; a terminal shows the block again below it,
        a log when the block next changes."""
        shown = self._shown
        self._clear()
        self.stream.write(line + "\n")
        self._shown, self._height = None, 0
        if shown is not None and self.tty:
            self.show(shown)
        self.stream.flush()

    def _clear(self):
        if self.tty and self._height:
            self.stream.write(f"\x1b[{self._height}F\x1b[J")  # back to the block's first line, clear below
