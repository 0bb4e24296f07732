"""What happens around a run: the output-dir policy (by run identity), the run lock and the determinism switch.

``OutputDirClaim`` is the one place that applies the policy and holds the lock: ``train.py`` claims the
folder before it builds anything (a finished run is skipped without loading CLIP or data) and hands the
claim to the trainer; a trainer used without ``train.py`` makes the same claim in ``train()``.
"""
import contextlib
import datetime
import json
import os
import socket

import torch

from dpl.utils.registry import check_availability
from dpl.utils.errors import UnwritableFileError
from dpl.utils.tools import create_temp_file

from .errors import OutputDirExistsError, RunConflictError, RunLockError

LOCK_NAME = ".run.lock"
IF_EXISTS_POLICIES = ["resume", "skip", "error"]


def output_dir_action(cfg, identity):
    """What a training run of ``identity`` does with ``cfg.OUTPUT_DIR`` under ``cfg.TRAIN.IF_EXISTS``.

    Returns ``(action, decision)``: ``"fresh"`` (nothing to reuse), ``"resume"`` (continue from the
    last checkpoint; a finished run reruns its final test) or ``"skip"`` (finished, policy ``skip``),
    with the ``dpl.results.runs.Decision`` behind it (its ``note`` is a line to log). Raises
    ``RunConflictError`` when the folder holds another experiment, whatever the policy, and
    ``OutputDirExistsError`` under policy ``error`` when it holds this one.
    """
    policy = cfg.TRAIN.IF_EXISTS
    check_availability(policy, IF_EXISTS_POLICIES, "TRAIN.IF_EXISTS policy")
    decision = _decide_or_refuse(cfg.OUTPUT_DIR, identity)
    if decision.action == "fresh":
        return "fresh", decision
    if policy == "error":
        state = "a finished run" if decision.action == "finished" else "checkpoints of an earlier run"
        raise OutputDirExistsError(
            f"{cfg.OUTPUT_DIR} already holds {state} and TRAIN.IF_EXISTS is 'error': choose another --output-dir, "
            "or pass TRAIN.IF_EXISTS resume (continue) or skip (leave finished runs alone)"
        )
    if policy == "skip" and decision.action == "finished":
        return "skip", decision
    return "resume", decision


def evaluation_action(cfg, identity):
    """``("evaluate", decision)``: an evaluation always runs, but never in a folder of another experiment
    (``RunConflictError``)."""
    return "evaluate", _decide_or_refuse(cfg.OUTPUT_DIR, identity)


def _decide_or_refuse(output_dir, identity):
    """The ``dpl.results.runs`` decision for ``identity`` in ``output_dir``; a folder of another experiment
    is refused (``RunConflictError``) whatever the caller and policy."""
    from dpl.results import runs

    decision = runs.decide(runs.read_state(output_dir), identity)
    if decision.action == "conflict":
        raise RunConflictError(runs.conflict_message(decision, identity, "choose another --output-dir, or move "
                                                                         "the folder away"))
    return decision


def skip_message(output_dir, result):
    return (
        f"Skip: the run in {output_dir} is finished ({result}; TRAIN.IF_EXISTS is 'skip'). "
        "Pass TRAIN.IF_EXISTS resume to run its final test again."
    )


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class RunLock:
    """``OUTPUT_DIR/.run.lock``: the pid and host of the run writing to a directory.

    ``acquire()`` creates it atomically. A lock held by a live process (or by another host, which
    cannot be checked) raises ``RunLockError``; a lock of a dead process on this host is stale and
    taken over. A lock already held by this process is left as is (re-entrant), and only the
    ``RunLock`` that created the file removes it in ``release()``.
    """

    def __init__(self, output_dir):
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, LOCK_NAME)
        self.owned = False

    def _owner(self):
        try:
            with open(self.path, "r") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable: treated as stale below

    def _create(self):
        """Write the lock file; False when one exists already."""
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        tmp = None
        try:
            fd, tmp = create_temp_file(self.output_dir, LOCK_NAME)  # mode from the umask, like the run's files
            with os.fdopen(fd, "w") as f:
                json.dump(owner, f)
            os.link(tmp, self.path)  # atomic and exclusive: the lock appears complete or not at all
            return True
        except FileExistsError:
            return False
        except OSError as exc:  # no space, read-only file system, no permission
            raise self._unwritable(exc) from exc
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):  # must not hide the error that brought us here
                    os.remove(tmp)

    def _unwritable(self, exc):
        return UnwritableFileError.from_os_error(exc, self.path, doing="create the run lock")

    def acquire(self):
        """Take the lock. Returns a note to log when a stale lock was taken over, else None."""
        try:
            os.makedirs(self.output_dir, exist_ok=True)
        except OSError as exc:
            raise self._unwritable(exc) from exc
        note = None
        for _ in range(3):  # a concurrent run may remove or take over the file between our steps
            if self._create():
                self.owned = True
                return note
            owner = self._owner()
            if owner is None:
                continue
            pid, host = owner.get("pid"), owner.get("host")
            if host == socket.gethostname() and pid == os.getpid():
                return None  # held by this process already
            if host == socket.gethostname() and isinstance(pid, int) and _pid_alive(pid):
                raise RunLockError(
                    f"Another run (pid {pid} on {host}, started {owner.get('started')}) is writing to "
                    f"{self.output_dir}: wait for it to finish or choose another --output-dir"
                )
            if host and host != socket.gethostname():
                raise RunLockError(
                    f"{self.output_dir} is locked by pid {pid} on host {host} (started {owner.get('started')}); "
                    f"if no run is active there, delete {self.path}"
                )
            note = f"Taking over a stale run lock {self.path} (pid {pid} on {host} is not running)"
            os.remove(self.path)
        raise RunLockError(f"Could not take the run lock {self.path}; is another run starting in {self.output_dir}?")

    def release(self):
        if self.owned:
            owner = self._owner()
            if owner and owner.get("pid") == os.getpid():
                os.remove(self.path)
            self.owned = False

    def __enter__(self):
        note = self.acquire()
        if note:
            print(note)
        return self

    def __exit__(self, *exc):
        self.release()
        return False


class OutputDirClaim:
    """A run's claim on ``cfg.OUTPUT_DIR``: the decision, made on construction, and the run lock, held
    while the claim is entered (``with claim:``).

    ``action`` is ``output_dir_action``'s (``"fresh"``, ``"resume"``, ``"skip"``) for training, or
    ``"evaluate"`` (``evaluating``); the errors are theirs, raised before anything is written. ``notes``:
    the lines to log once the log is open (the decision's note, a stale lock taken over). Entering it
    again (the trainer inside ``train.py``) takes no second lock: ``RunLock`` is re-entrant.
    """

    def __init__(self, cfg, identity, evaluating=False):
        self.output_dir = cfg.OUTPUT_DIR
        self.action, self.decision = (evaluation_action if evaluating else output_dir_action)(cfg, identity)
        self.notes = [self.decision.note] if self.decision.note else []
        self._locks = []

    @property
    def skip(self):
        return self.action == "skip"

    def skip_message(self):
        return skip_message(self.output_dir, self.decision.state.result)

    def __enter__(self):
        lock = RunLock(self.output_dir)
        note = lock.acquire()
        self._locks.append(lock)
        if note:
            self.notes.append(note)
        return self

    def __exit__(self, *exc):
        self._locks.pop().release()
        return False


def configure_determinism(cfg):
    """``TRAIN.DETERMINISTIC``: deterministic kernels and no cuDNN autotuning; else cuDNN benchmark on CUDA."""
    if cfg.TRAIN.DETERMINISTIC:
        # cuBLAS needs this workspace setting for deterministic GEMMs; it must be set before the first cuBLAS call
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True

