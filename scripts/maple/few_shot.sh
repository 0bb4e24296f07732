#!/usr/bin/env bash
# Few-shot: train on SHOTS images per class (all classes), test on the full test set.
# usage: bash scripts/maple/few_shot.sh DATASET SHOTS SEED [KEY VALUE ...]   (DATA must be set; see scripts/_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
few_shot "$@"
