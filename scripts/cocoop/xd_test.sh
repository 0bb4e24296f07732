#!/usr/bin/env bash
# Cross-dataset / domain generalisation: evaluate the ImageNet model on the full test set of DATASET (all classes).
# usage: bash scripts/cocoop/xd_test.sh DATASET SEED [KEY VALUE ...]   (DATA must be set; see scripts/_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
xd_test "$@"
