"""Stopping a run cleanly on SIGINT (Ctrl-C), SIGTERM (a scheduler's time limit or preemption) and SIGUSR2
(SLURM's warning before the time limit, ``--signal=USR2@<seconds>``, which submitit asks for).

While a trainer runs its training steps, the first signal only asks the loop to stop: the step in
progress finishes, the trainer writes its last checkpoint at that step boundary and raises
``RunInterrupted``. Anywhere else (building the model, testing), or on a second SIGINT (a second
Ctrl-C), there is no step to finish and ``RunInterrupted`` is raised at once; what the last checkpoint
holds is kept. A repeated SIGTERM changes nothing.
The entry point turns ``RunInterrupted`` into one line and exit code ``128 + signal number``
(130 for SIGINT, 143 for SIGTERM, 140 for SIGUSR2), as shells report a process stopped by that signal.
SLURM sends ``--signal`` to every process of the job step, so the run itself must take SIGUSR2 as a stop:
Python's default for it is to die on the spot, losing the step's checkpoint.
"""
import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


class RunInterrupted(KeyboardInterrupt):
    """The run stopped on a signal; ``saved`` names what was written on the way out (or is empty)."""

    def __init__(self, signum, saved=""):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.saved = saved

    @property
    def signal_name(self):
        return signal.Signals(self.signum).name

    @property
    def exit_code(self):
        return 128 + self.signum


class StopRequests:
    """Installs the handlers (``with StopRequests() as stops:``) and tells the trainer when to stop.

    ``stops.deferred()`` marks the training steps: a signal inside it sets ``stops.signum`` and
    returns; ``stops.requested`` is then True until the run ends. Outside the main thread (where
    Python cannot install handlers) it installs nothing and never requests a stop.
    """

    def __init__(self):
        self.signum = None
        self._deferring = False
        self._previous = {}

    @property
    def requested(self):
        return self.signum is not None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        return False

    def _handle(self, signum, frame):
        repeated = self.signum is not None
        if not repeated:
            self.signum = signum
        # Only a second Ctrl-C means "now": a scheduler may send SIGTERM to every process of a job
        # (and a launcher pass it on), and such a duplicate must not cost the step's checkpoint.
        if self._deferring and not (repeated and signum == signal.SIGINT):
            return
        raise RunInterrupted(signum)

    @contextlib.contextmanager
    def deferred(self):
        """Inside: the first signal waits for the next step boundary."""
        self._deferring = True
        try:
            yield self
        finally:
            self._deferring = False


class NoStopRequests(StopRequests):
    """For trainers used without an entry point that installs handlers: never requests a stop."""

    def __enter__(self):
        return self
