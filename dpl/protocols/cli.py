"""The command line behind ``scripts/<method>/*.sh`` (see ``python -m dpl.protocols``)."""
import os
import signal
import sys

import dpl.tools.train as train_entry  # the whole training stack: a missing requirement fails here, in one line
from dpl.engine.interrupts import STOP_SIGNALS

from .methods import ProtocolError, read_method
from .runner import PlanConfigError, execute, plan_request
from .steps import STEPS, step_context

INTERRUPTED = {128 + signum: signal.Signals(signum).name for signum in STOP_SIGNALS}  # train.py's exit codes


def require_data(env):
    data = env.get("DATA", "")
    if not data:
        raise ProtocolError("DATA is not set: export DATA=/path/to/datasets (the folder holding dtd/, eurosat/, ...)")
    if not os.path.isdir(data):
        raise ProtocolError(f"DATA={data} is not a directory: point it to the folder holding the datasets")
    return os.path.abspath(data)


def run_step(method_dir, script, step, args, env):
    """Plan the runs of ``step`` and run them in order (or print the plan with ``DPL_PLAN=1``)."""
    method = read_method(method_dir)
    requests = STEPS[step](step_context(method, script, env), list(args))
    plan_only = env.get("DPL_PLAN") == "1"
    data = "" if plan_only else require_data(env)
    planned = [plan_request(request, method.trainer, data, env.get("TAG", ""), load_epoch=env.get("LOADEP", ""))
               for request in requests]
    if plan_only:
        for run in planned:
            print(f"{run.kind} {run.run_dir}")
        return 0
    for run in planned:
        code = execute(run, env.get("LOADEP", ""))
        if code in INTERRUPTED:
            print(f"{script}: stopped by {INTERRUPTED[code]} (exit code {code}); run the same command again to "
                  "continue", file=sys.stderr)
        if code:
            return code
    return 0


SCRIPT_ENVIRONMENT = ("CFG", "TAG", "LOADEP", "SOURCE")  # what changes a script's runs besides its arguments


def script_command(script, args, env):
    """The command a user typed, as a run's log and results.json record it."""
    settings = [f"{name}={env[name]}" for name in SCRIPT_ENVIRONMENT if env.get(name)]
    return [*settings, "bash", f"scripts/{script}", *args]


def main(argv):
    method_dir, script, step, *args = argv
    sys.argv[:] = script_command(script, args, os.environ)  # this process is the script's: record it as such
    try:
        return run_step(method_dir, script, step, args, os.environ)
    except ProtocolError as exc:
        print(f"{script}: {exc}", file=sys.stderr)
        return 1
    except PlanConfigError as exc:
        print(exc, file=sys.stderr)
        return train_entry.EXIT_CONFIG_ERROR
    except KeyboardInterrupt:  # before a run started (while planning): nothing to save
        print(f"{script}: interrupted before any run started", file=sys.stderr)
        return train_entry.EXIT_INTERRUPTED_SIGINT
    except Exception as exc:
        known = train_entry.user_error_exit(exc)
        if known is None:
            raise
        print(known[0], file=sys.stderr)
        return known[1]
