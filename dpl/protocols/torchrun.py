"""One run on several processes from the protocol scripts: ``NPROC=N bash scripts/<method>/<step>.sh ...``.

Each run of the step is then ``torchrun --standalone --nproc_per_node N -m dpl.tools.train ...`` (one
node, data parallel: ``dpl.engine.distributed``), started from the script's process, which passes a
stop signal on: SIGINT as SIGINT, SIGTERM, SIGHUP and SIGUSR2 as SIGTERM (torchrun hands SIGTERM to every
process, which stops at the next step boundary with its checkpoint). torchrun itself ignores SIGUSR2,
which SLURM sends to every process of a job before its time limit: its default action would kill
torchrun and leave the training processes without their launcher.
"""
import os
import signal
import sys

from .local_queue import available_cores
from .methods import ProtocolError
from .sweep import FORWARDED_SIGNALS, Forwarder

NPROC = "NPROC"
# How long torchrun lets its processes stop after a signal before SIGKILL (its default, 30 s, may cut off the
# step in progress and its checkpoint, or an epoch end's validation)
SHUTDOWN_SECONDS = 300
TORCHRUN_SIGNALS = {**FORWARDED_SIGNALS, signal.SIGUSR2: signal.SIGTERM}


def processes_requested(environ):
    """``NPROC`` as a number of processes per run (1 when unset or empty); a one-line error otherwise."""
    text = environ.get(NPROC, "").strip()
    if not text:
        return 1
    if not text.isdigit() or int(text) < 1:
        raise ProtocolError(f"{NPROC}={text}: give the number of processes per run (1, 2, ...), e.g. the number "
                            "of GPUs of the machine")
    return int(text)


def torchrun_command(processes, argv):
    """The command that runs ``train.py argv`` on ``processes`` processes of this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            f"--shutdown-timeout={SHUTDOWN_SECONDS}", "--module", "dpl.tools.train", *argv]


def run_on_processes(argv, processes, environ=None):
    """Run ``train.py argv`` through torchrun; its exit code, or ``128 + signal`` when a signal stopped it.

    Each process gets ``cores // processes`` intra-op threads unless ``OMP_NUM_THREADS`` is set (torchrun's
    own default would be one).
    """
    env = dict(os.environ if environ is None else environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, available_cores() // processes)))
    print(f"Running on {processes} processes: torchrun --nproc_per_node {processes} (OMP_NUM_THREADS="
          f"{env['OMP_NUM_THREADS']})", flush=True)
    with Forwarder(TORCHRUN_SIGNALS) as forwarder:
        code = forwarder.run(torchrun_command(processes, argv), env, ignored=(signal.SIGUSR2,))
    if code != 0 and forwarder.received is not None:  # torchrun says 1 for a stop: say which signal it was
        return 128 + forwarder.received
    return code
