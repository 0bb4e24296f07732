# Shared library of the protocol scripts. Sourced by scripts/<method>/*.sh, which only name the protocol
# step they run; what is particular to a method (trainer name, config per protocol) is in
# scripts/<method>/method.sh.
#
# Environment:
#   DATA     dataset root laid out as in CoOp's DATASETS.md (required, except in plan mode)
#   OUTPUT   output root (default: <repo>/output)
#   PYTHON   interpreter (default: python)
#   CFG      config name to use instead of the method's default for this protocol
#   LOADEP   epoch to evaluate in test scripts (default: the last checkpoint of the training run)
#   DPL_PLAN=1  print "<kind> <run dir>" for each run the script would do, and exit (used by
#               scripts/run_protocol.py; needs no DATA)
#
# Output layout (as upstream; COMMON = <dataset>/shots_<K>/<Trainer>/<cfg>/seed<S>):
#   base2new   $OUTPUT/base2new/train_base/COMMON, $OUTPUT/base2new/test_new/COMMON
#   xd / dg    $OUTPUT/imagenet/<Trainer>/<cfg>_16shots/seed<S>  (training on the source)
#              $OUTPUT/evaluation/<Trainer>/<cfg>_16shots/<dataset>/seed<S>
#   few-shot   $OUTPUT/few_shot/<dataset>/<Trainer>/<cfg>_<K>shots/seed<S>
#   long-tail  $OUTPUT/long_tail/imb<R>/{train_base,test_new}/<dataset>/shots_10000/<Trainer>/<cfg>/seed<S>
#   zero-shot  $OUTPUT/ZeroshotCLIP/<cfg>/<dataset> (CoOp's zeroshot.sh); base2new and evaluation trees
#              as above with <cfg> as the tag
#
# A run whose folder holds its final result (results.json or a log with the final accuracy; decided by
# parse_results.py --run-status) is skipped; an unfinished one is resumed (train.py's TRAIN.IF_EXISTS
# resume). Trailing KEY VALUE arguments go to train.py after the script's own options, so they win.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
METHOD_DIR=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)
SCRIPT_NAME="$(basename "$METHOD_DIR")/$(basename "${BASH_SOURCE[1]}")"
PYTHON=${PYTHON:-python}
OUTPUT=${OUTPUT:-$REPO/output}
PLAN=${DPL_PLAN:-0}

BASE2NEW_SHOTS=16
XD_SHOTS=16
LONG_TAIL_SHOTS=10000   # as the official code: "all" training images of each class before the profile
LONG_TAIL_RATIO=10

# shellcheck source=/dev/null
source "$METHOD_DIR/method.sh"   # TRAINER, CFG_<PROTOCOL>[_<dataset or shots>]

die() {
    echo "$SCRIPT_NAME: $*" >&2
    exit 1
}

# need_args N "usage" "$@": at least N positional arguments
need_args() {
    local n=$1 usage=$2
    shift 2
    if (($# < n)); then
        die "usage: bash scripts/$SCRIPT_NAME $usage [KEY VALUE ...]"
    fi
}

# check_opts "$@": what is left after the positional arguments must be KEY VALUE pairs
check_opts() {
    if (($# % 2 != 0)); then
        die "extra arguments must be KEY VALUE pairs for train.py (got: $*)"
    fi
}

require_int() {
    [[ $2 =~ ^[0-9]+$ ]] || die "$1 must be a non-negative integer, got '$2'"
}

require_data() {
    [[ -n ${DATA:-} ]] || die "DATA is not set: export DATA=/path/to/datasets (the folder holding dtd/, eurosat/, ...)"
    [[ -d $DATA ]] || die "DATA=$DATA is not a directory: point it to the folder holding the datasets"
}

dataset_config() {
    local file="$REPO/configs/datasets/$1.yaml"
    [[ -f $file ]] || die "unknown dataset '$1': no $file (available: $(cd "$REPO/configs/datasets" && ls | sed 's/\.yaml$//' | tr '\n' ' '))"
    echo "$file"
}

trainer_config() {
    local file="$REPO/configs/trainers/$TRAINER/$1.yaml"
    [[ -f $file ]] || die "no config $file for $TRAINER (set CFG to one of: $(cd "$REPO/configs/trainers/$TRAINER" && ls | sed 's/\.yaml$//' | tr '\n' ' '))"
    echo "$file"
}

# cfg_for PROTOCOL KEY...: $CFG if set, else the first of CFG_<PROTOCOL>_<KEY> (keys in order), CFG_<PROTOCOL>
cfg_for() {
    local protocol=$1 key var
    shift
    if [[ -n ${CFG:-} ]]; then
        echo "$CFG"
        return
    fi
    for key in "$@"; do
        var="CFG_${protocol}_${key^^}"
        if [[ -n ${!var:-} ]]; then
            echo "${!var}"
            return
        fi
    done
    var="CFG_${protocol}"
    [[ -n ${!var:-} ]] || die "$TRAINER has no config for this protocol (no $var in $METHOD_DIR/method.sh)"
    echo "${!var}"
}

run_finished() {
    "$PYTHON" "$REPO/parse_results.py" --run-status "$1" >/dev/null 2>&1
}

# final_epoch MODEL_DIR: the highest N of MODEL_DIR/<model name>/model.pth.tar-N
final_epoch() {
    local best=-1 file n
    for file in "$1"/*/model.pth.tar-*; do
        [[ -f $file ]] || continue
        n=${file##*-}
        [[ $n =~ ^[0-9]+$ ]] && ((n > best)) && best=$n
    done
    ((best >= 0)) || die "no checkpoint model.pth.tar-<epoch> under $1/*/ (was the training run saved?)"
    echo "$best"
}

# train_run DIR DATASET SEED CFG [train.py opts...]: skip when finished, else train (resume if unfinished)
train_run() {
    local dir=$1 dataset=$2 seed=$3 cfg=$4
    shift 4
    if [[ $PLAN == 1 ]]; then
        echo "train $dir"
        return
    fi
    local dataset_file trainer_file
    require_data
    dataset_file=$(dataset_config "$dataset")
    trainer_file=$(trainer_config "$cfg")
    if run_finished "$dir"; then
        echo "Skip: the run in $dir is finished ($("$PYTHON" "$REPO/parse_results.py" --run-status "$dir")); delete the folder to run it again"
        return
    fi
    if [[ -d $dir ]]; then
        echo "Resuming the unfinished run in $dir"
    fi
    "$PYTHON" "$REPO/train.py" --root "$DATA" --seed "$seed" --trainer "$TRAINER" \
        --dataset-config-file "$dataset_file" --config-file "$trainer_file" --output-dir "$dir" "$@"
}

# eval_run DIR MODEL_DIR DATASET SEED CFG [train.py opts...]: evaluate MODEL_DIR's final (or $LOADEP)
# checkpoint; an empty MODEL_DIR evaluates the untrained model (zero-shot CLIP)
eval_run() {
    local dir=$1 model_dir=$2 dataset=$3 seed=$4 cfg=$5
    shift 5
    if [[ $PLAN == 1 ]]; then
        echo "test $dir"
        return
    fi
    local dataset_file trainer_file model_args=()
    require_data
    dataset_file=$(dataset_config "$dataset")
    trainer_file=$(trainer_config "$cfg")
    if run_finished "$dir"; then
        echo "Skip: the evaluation in $dir is finished ($("$PYTHON" "$REPO/parse_results.py" --run-status "$dir")); delete the folder to run it again"
        return
    fi
    if [[ -n $model_dir ]]; then
        run_finished "$model_dir" || die "the training run $model_dir is not finished: run its training script first"
        model_args=(--model-dir "$model_dir" --load-epoch "${LOADEP:-$(final_epoch "$model_dir")}")
    fi
    if [[ -d $dir ]]; then
        echo "Rerunning the unfinished evaluation in $dir"
    fi
    "$PYTHON" "$REPO/train.py" --root "$DATA" --seed "$seed" --trainer "$TRAINER" \
        --dataset-config-file "$dataset_file" --config-file "$trainer_file" --output-dir "$dir" \
        --eval-only "${model_args[@]}" "$@"
}

# ---------------------------------------------------------------------------------------------------
# Protocol steps (one per script)
# ---------------------------------------------------------------------------------------------------

base2new_dir() {  # base2new_dir ROOT PART DATASET SEED CFG SHOTS
    echo "$1/$2/$3/shots_$6/$TRAINER/$5/seed$4"
}

base2new_train() {
    need_args 2 "DATASET SEED" "$@"
    local dataset=$1 seed=$2 cfg
    shift 2
    require_int SEED "$seed"
    check_opts "$@"
    cfg=$(cfg_for BASE2NEW "$dataset")
    train_run "$(base2new_dir "$OUTPUT/base2new" train_base "$dataset" "$seed" "$cfg" $BASE2NEW_SHOTS)" \
        "$dataset" "$seed" "$cfg" DATASET.NUM_SHOTS $BASE2NEW_SHOTS DATASET.SUBSAMPLE_CLASSES base "$@"
}

base2new_test() {
    need_args 2 "DATASET SEED" "$@"
    local dataset=$1 seed=$2 cfg root="$OUTPUT/base2new"
    shift 2
    require_int SEED "$seed"
    check_opts "$@"
    cfg=$(cfg_for BASE2NEW "$dataset")
    eval_run "$(base2new_dir "$root" test_new "$dataset" "$seed" "$cfg" $BASE2NEW_SHOTS)" \
        "$(base2new_dir "$root" train_base "$dataset" "$seed" "$cfg" $BASE2NEW_SHOTS)" \
        "$dataset" "$seed" "$cfg" DATASET.NUM_SHOTS $BASE2NEW_SHOTS DATASET.SUBSAMPLE_CLASSES new "$@"
}

xd_source() {
    echo "${SOURCE:-imagenet}"
}

xd_train() {
    need_args 1 "SEED" "$@"
    local seed=$1 source cfg
    shift
    require_int SEED "$seed"
    source=$(xd_source)
    check_opts "$@"
    cfg=$(cfg_for XD "$source")
    train_run "$OUTPUT/$source/$TRAINER/${cfg}_${XD_SHOTS}shots/seed$seed" "$source" "$seed" "$cfg" \
        DATASET.NUM_SHOTS $XD_SHOTS "$@"
}

xd_test() {
    need_args 2 "DATASET SEED" "$@"
    local dataset=$1 seed=$2 cfg tag
    shift 2
    require_int SEED "$seed"
    check_opts "$@"
    cfg=$(cfg_for XD "$(xd_source)")
    tag="${cfg}_${XD_SHOTS}shots"
    # no NUM_SHOTS and all classes: the full test set of the target
    eval_run "$OUTPUT/evaluation/$TRAINER/$tag/$dataset/seed$seed" "$OUTPUT/$(xd_source)/$TRAINER/$tag/seed$seed" \
        "$dataset" "$seed" "$cfg" "$@"
}

few_shot() {
    need_args 3 "DATASET SHOTS SEED" "$@"
    local dataset=$1 shots=$2 seed=$3 cfg
    shift 3
    require_int SHOTS "$shots"
    require_int SEED "$seed"
    check_opts "$@"
    cfg=$(cfg_for FEWSHOT "$dataset" "${shots}shots")
    train_run "$OUTPUT/few_shot/$dataset/$TRAINER/${cfg}_${shots}shots/seed$seed" "$dataset" "$seed" "$cfg" \
        DATASET.NUM_SHOTS "$shots" "$@"
}

# long_tail_root RATIO: the folder of one ratio, named without a trailing .0 (imb10 for 10 and 10.0)
long_tail_root() {
    local name=$1
    [[ $name == *.* ]] && name=$(echo "$name" | sed -e 's/0*$//' -e 's/\.$//')
    echo "$OUTPUT/long_tail/imb$name"
}

# as_float RATIO: yacs keeps the type of the default (1.0), so an integer ratio needs a decimal point
as_float() {
    [[ $1 == *.* ]] && echo "$1" || echo "$1.0"
}

long_tail() {
    need_args 2 "DATASET SEED [RATIO]" "$@"
    local dataset=$1 seed=$2 ratio=$LONG_TAIL_RATIO cfg
    shift 2
    if [[ ${1:-} =~ ^[0-9]+(\.[0-9]+)?$ ]]; then  # the optional RATIO
        ratio=$1
        shift
    fi
    require_int SEED "$seed"
    check_opts "$@"
    cfg=$(cfg_for LONGTAIL "$dataset")
    train_run "$(base2new_dir "$(long_tail_root "$ratio")" train_base "$dataset" "$seed" "$cfg" $LONG_TAIL_SHOTS)" \
        "$dataset" "$seed" "$cfg" DATASET.NUM_SHOTS $LONG_TAIL_SHOTS DATASET.SUBSAMPLE_CLASSES base \
        DATASET.IMBALANCE_RATIO "$(as_float "$ratio")" TEST.PER_CLASS_RESULT True "$@"
}

long_tail_test() {
    need_args 2 "DATASET SEED [RATIO]" "$@"
    local dataset=$1 seed=$2 ratio=$LONG_TAIL_RATIO cfg root
    shift 2
    if [[ ${1:-} =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
        ratio=$1
        shift
    fi
    require_int SEED "$seed"
    check_opts "$@"
    cfg=$(cfg_for LONGTAIL "$dataset")
    root=$(long_tail_root "$ratio")
    eval_run "$(base2new_dir "$root" test_new "$dataset" "$seed" "$cfg" $LONG_TAIL_SHOTS)" \
        "$(base2new_dir "$root" train_base "$dataset" "$seed" "$cfg" $LONG_TAIL_SHOTS)" \
        "$dataset" "$seed" "$cfg" DATASET.SUBSAMPLE_CLASSES new TEST.PER_CLASS_RESULT True "$@"
}

# ----- zero-shot CLIP: evaluations only --------------------------------------------------------------

zeroshot() {
    need_args 1 "DATASET" "$@"
    local dataset=$1 cfg
    shift
    check_opts "$@"
    cfg=$(cfg_for ZEROSHOT "$dataset")
    eval_run "$OUTPUT/$TRAINER/$cfg/$dataset" "" "$dataset" 1 "$cfg" "$@"
}

# zeroshot_args "$@": DATASET [SEED] [KEY VALUE ...] into the caller's locals dataset, seed (default 1)
# and opts (bash functions see their caller's locals)
zeroshot_args() {
    need_args 1 "DATASET [SEED]" "$@"
    dataset=$1
    shift
    if [[ ${1:-} =~ ^[0-9]+$ ]]; then  # the optional SEED
        seed=$1
        shift
    fi
    require_int SEED "$seed"
    check_opts "$@"
    opts=("$@")
}

zeroshot_base2new() {
    # the seed only names the folder (zero-shot CLIP is deterministic); the base/new results land
    # where base2new tables look for them
    local dataset seed=1 cfg opts=() root="$OUTPUT/base2new"
    zeroshot_args "$@"
    cfg=$(cfg_for ZEROSHOT "$dataset")
    eval_run "$(base2new_dir "$root" train_base "$dataset" "$seed" "$cfg" $BASE2NEW_SHOTS)" "" \
        "$dataset" "$seed" "$cfg" DATASET.SUBSAMPLE_CLASSES base "${opts[@]}"
    eval_run "$(base2new_dir "$root" test_new "$dataset" "$seed" "$cfg" $BASE2NEW_SHOTS)" "" \
        "$dataset" "$seed" "$cfg" DATASET.SUBSAMPLE_CLASSES new "${opts[@]}"
}

zeroshot_xd_test() {
    local dataset seed=1 cfg opts=()
    zeroshot_args "$@"
    cfg=$(cfg_for ZEROSHOT "$dataset")
    eval_run "$OUTPUT/evaluation/$TRAINER/$cfg/$dataset/seed$seed" "" "$dataset" "$seed" "$cfg" "${opts[@]}"
}
