#!/usr/bin/env bash
# Cross-dataset / domain generalisation: train on all ImageNet classes, 16 shots (SOURCE=... for another source).
# usage: bash scripts/cocoop/xd_train.sh SEED [KEY VALUE ...]   (DATA must be set; see scripts/_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
xd_train "$@"
