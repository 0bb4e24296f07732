#!/usr/bin/env bash
# `make demo`: the main job, for real, on a bare CPU machine with no download.
#
# DropoutPrompt base-to-novel on the pocket dataset (generated coloured shapes, 18 base / 18 new
# classes) with the pocket CLIP committed in dpl/clip/assets/: train on the base classes (16 shots),
# evaluate on the new classes, print the Base / New / HM table, then write its chart, the token-importance
# pictures of the trained model (python -m dpl.tools.explain) and its training curves (python -m
# dpl.tools.curves) to $OUTPUT/figures. A few minutes on 2 CPU cores.
# The numbers are a smoke test of the code path, not a reproduction of the paper.
#
# Environment (all optional):
#   DATA     dataset root; default ~/.cache/dpl/data (the pocket images are generated there on first use)
#   OUTPUT   output root; default <repo>/output/demo (kept apart from real benchmark runs)
#   SEED     default 1
#   TAG      name of the runs' variant; default pocket (their folders are <cfg>@pocket, their rows
#            "DropoutPrompt [pocket]": the pocket-scale overrides below are named, not spelled out)
# Arguments: further KEY VALUE config overrides, passed to every run (e.g. OPTIM.MAX_EPOCH 5). Give such a
# variant its own TAG (TAG=pocket-5ep bash scripts/demo.sh OPTIM.MAX_EPOCH 5): a folder holding a demo
# of other settings is never reused, and the scripts say so in one line.
# A finished demo is not rerun: delete $OUTPUT to run it again. Interrupted, it continues where it stopped.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/_python.sh
source "$REPO/scripts/_python.sh"
PYTHON=$(project_python)
export DATA=${DATA:-$HOME/.cache/dpl/data}
export OUTPUT=${OUTPUT:-$REPO/output/demo}
export TAG=${TAG:-pocket}
# The pocket model is tiny: one intra-op thread per process is several times faster than torch's default,
# and tens of times faster on a busy machine, where spinning OpenMP threads oversubscribe the cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
SEED=${SEED:-1}
mkdir -p "$DATA"

# Overrides for the pocket scale; everything else is the upstream DropoutPrompt base2new config.
#   MODEL.BACKBONE.NAME pocket   the committed pocket CLIP instead of ViT-B/16 (no download). It has
#                                4 layers per tower, so the prompt depth 9 of the config is clamped to 4
#                                (one log line).
#   OPTIM.MAX_EPOCH 6, DATALOADER.TRAIN_X.BATCH_SIZE 16, OPTIM.LR 0.005, OPTIM.WARMUP_EPOCH 0
#                                20 epochs x 72 steps of batch 4 take too long on 2 cores; each step
#                                encodes all 18 class prompts, so 4x larger batches cost little more per
#                                step; 2x the config's learning rate for the shorter run; the 1e-5
#                                warm-up epoch would be a sixth of the run (scripts/pocket_benchmark.sh
#                                uses the same schedule).
#   INPUT.RRCROP_SCALE (0.5, 1.0) pocket shapes cover a small part of the image: crops down to 8% of the
#                                area (upstream's scale) often cut the shape out, and the label with it.
#   DATALOADER.NUM_WORKERS 0     the images are tiny PNGs: worker processes cost more than they save on
#                                a 2-core machine.
#   TRAIN.PRINT_FREQ 6           a progress line every 6 of the 18 batches of an epoch.
OPTS=(MODEL.BACKBONE.NAME pocket OPTIM.MAX_EPOCH 6 DATALOADER.TRAIN_X.BATCH_SIZE 16 OPTIM.LR 0.005
    OPTIM.WARMUP_EPOCH 0 INPUT.RRCROP_SCALE "(0.5, 1.0)" DATALOADER.NUM_WORKERS 0 TRAIN.PRINT_FREQ 6 "$@")

echo "== DropoutPrompt base-to-novel on pocket (DATA=$DATA, OUTPUT=$OUTPUT, seed $SEED)"
echo "== 1/4 train on the base classes"
bash "$REPO/scripts/dpl/base2new_train.sh" pocket "$SEED" "${OPTS[@]}"
echo "== 2/4 evaluate on the new classes"
bash "$REPO/scripts/dpl/base2new_test.sh" pocket "$SEED" "${OPTS[@]}"
echo "== 3/4 results"
"$PYTHON" "$REPO/parse_results.py" --protocol base2new "$OUTPUT/base2new" --datasets pocket --seeds "$SEED" \
    --plot "$OUTPUT/figures"
echo "(pocket numbers are a smoke test of the code path, not a reproduction of the paper)"
echo "== 4/4 figures: what token dropout protects (test images, class prompts) and the training curves"
# The training run's folder: base2new_train.sh names the config's folder <cfg>@<TAG> (the newest, if CFG varied).
RUN=$(ls -td "$OUTPUT/base2new/train_base/pocket/shots_16/DropoutPrompt/"*"@$TAG/seed$SEED" | head -n 1)
"$PYTHON" -m dpl.tools.explain --model-dir "$RUN" --out "$OUTPUT/figures/explain"
"$PYTHON" -m dpl.tools.curves "$RUN" --out "$OUTPUT/figures/curves"
