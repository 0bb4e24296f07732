"""``StopRequests``: what a first and a second SIGINT / SIGTERM do inside and outside the training steps."""
import os
import signal

import pytest

from dpl.engine import RunInterrupted, StopRequests


def send(signum):
    os.kill(os.getpid(), signum)  # delivered to this (main) thread before the next bytecode


def test_inside_the_steps_a_signal_asks_to_stop_and_only_a_second_ctrl_c_stops_at_once():
    before = signal.getsignal(signal.SIGINT)  # Python's handler, or SIG_IGN in a background job of a shell
    with StopRequests() as stops:
        with stops.deferred():
            send(signal.SIGTERM)
            assert stops.requested and stops.signum == signal.SIGTERM
            send(signal.SIGTERM)  # e.g. a scheduler signalling every process of a job, then a launcher
            with pytest.raises(RunInterrupted) as caught:
                send(signal.SIGINT)
    assert caught.value.exit_code == 128 + signal.SIGINT and caught.value.signal_name == "SIGINT"
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_outside_the_steps_a_signal_stops_at_once():
    with StopRequests(), pytest.raises(RunInterrupted) as caught:
        send(signal.SIGTERM)
    assert caught.value.exit_code == 143
