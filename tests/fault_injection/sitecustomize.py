"""Imported by Python at start-up when this folder is on PYTHONPATH (tests/test_interrupts.py).

Fault injection at a fixed training step (``<epoch>:<batch>``, both 1-based), so the interruption
tests cannot be flaky; without these variables it does nothing:

- ``DPL_TEST_SIGNAL=<SIGNAL>:<epoch>:<batch>``: the run sends itself that signal right after that step,
  before the step's checkpoint logic.
- ``DPL_TEST_PAUSE=<epoch>:<batch>:<file>``: after that step the run creates ``file`` and waits (at
  most a minute) until a signal asks it to stop, so that a test can signal it from outside at a
  known step.
- ``DPL_TEST_FAIL=<epoch>:<batch>``: the run raises an error (a bug: a traceback) right after that step.
- ``DPL_TEST_RANK=<rank>``: on several processes (torchrun), only that rank injects its fault.
"""
import os

_SIGNAL = os.environ.get("DPL_TEST_SIGNAL")
_PAUSE = os.environ.get("DPL_TEST_PAUSE")
_FAIL = os.environ.get("DPL_TEST_FAIL")
_RANK = os.environ.get("DPL_TEST_RANK")
if (_SIGNAL or _PAUSE or _FAIL) and (_RANK is None or _RANK == os.environ.get("RANK", "0")):
    import signal
    import time

    from dpl.engine import trainer as _trainer

    _after_step = _trainer.TrainerX.after_step

    def _at(self, epoch, batch):
        return (self.epoch + 1, self.batch_idx + 1) == (int(epoch), int(batch))

    def _faulty_after_step(self):
        if _SIGNAL and _at(self, *_SIGNAL.split(":")[1:]):
            os.kill(os.getpid(), getattr(signal, _SIGNAL.split(":")[0]))
        if _PAUSE and _at(self, *_PAUSE.split(":")[:2]):
            open(_PAUSE.split(":", 2)[2], "w").close()
            deadline = time.time() + 60
            while not self.stops.requested and time.time() < deadline:
                time.sleep(0.02)
        if _FAIL and _at(self, *_FAIL.split(":")):
            raise RuntimeError(f"injected failure after step {_FAIL}")
        _after_step(self)

    _trainer.TrainerX.after_step = _faulty_after_step
