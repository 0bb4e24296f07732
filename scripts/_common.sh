# Shared by the protocol scripts scripts/<method>/*.sh, which only name the protocol step they run;
# what is particular to a method (trainer name, config per protocol) is in scripts/<method>/method.sh.
# The steps themselves (arguments, output folders, skip / resume, running train.py) are Python:
# dpl/protocols (one definition of the output layout, shared with run_protocol.py and parse_results.py).
#
# Environment:
#   DATA     dataset root laid out as in CoOp's DATASETS.md (required, except in plan mode)
#   OUTPUT   output root (default: <repo>/output)
#   PYTHON   interpreter, when the checkout has no .venv (see scripts/_python.sh)
#   CFG      config name to use instead of the method's default for this protocol, or a YAML file
#   TAG      name of this run's variant: its config folder becomes <cfg>@<TAG>
#   LOADEP   epoch to evaluate in test scripts (default: the last checkpoint of the training run)
#   SOURCE   cross-dataset / domain generalisation training set (default: imagenet)
#   NPROC    processes per run (default 1): N > 1 runs train.py through torchrun --nproc_per_node N on this
#            machine (one GPU each; gloo on CPUs); DATALOADER.TRAIN_X.BATCH_SIZE stays the global batch
#   DPL_PLAN=1  print "<kind> <run dir>" for each run the script would do, and exit (needs no DATA)
#
# Output layout: upstream's, under $OUTPUT (base2new/, few_shot/, long_tail/imb<R>/, <source>/ and
# evaluation/); dpl/results/layout.py defines it and DPL_PLAN=1 prints the folders of a script's runs.
# Trailing KEY VALUE arguments go to train.py after the script's own options, so they win. When they
# change the experiment, the run gets its own config folder, <cfg>@<KEY=value,...> (or <cfg>@<TAG>);
# DATASET.NUM_SHOTS K goes to shots_K / _Kshots instead. A run whose folder holds its final result is
# skipped, an unfinished one resumed from its last checkpoint, and a folder of another experiment (run
# identity) is never reused: the script stops with one line saying what differs.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
METHOD_DIR=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)
SCRIPT_NAME="$(basename "$METHOD_DIR")/$(basename "${BASH_SOURCE[1]}")"
# shellcheck source=scripts/_python.sh
source "$REPO/scripts/_python.sh"

# run_step STEP [ARGS...]: the step in Python, replacing this shell (signals reach train.py directly)
run_step() {
    local python
    python=$(project_python) || exit 1
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's dpl, whatever is installed,
    export PYTHONSAFEPATH=1                                # and not a dpl/ folder in the current directory
    exec "$python" -m dpl.protocols "$METHOD_DIR" "$SCRIPT_NAME" "$@"
}

base2new_train() { run_step base2new_train "$@"; }
base2new_test() { run_step base2new_test "$@"; }
xd_train() { run_step xd_train "$@"; }
xd_test() { run_step xd_test "$@"; }
few_shot() { run_step few_shot "$@"; }
long_tail() { run_step long_tail "$@"; }
long_tail_test() { run_step long_tail_test "$@"; }
zeroshot() { run_step zeroshot "$@"; }
zeroshot_base2new() { run_step zeroshot_base2new "$@"; }
zeroshot_xd_test() { run_step zeroshot_xd_test "$@"; }
