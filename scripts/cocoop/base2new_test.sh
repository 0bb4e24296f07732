#!/usr/bin/env bash
# Base-to-novel: evaluate the training run's final checkpoint (or LOADEP) on the new classes.
# usage: bash scripts/cocoop/base2new_test.sh DATASET SEED [KEY VALUE ...]   (DATA must be set; see scripts/_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
base2new_test "$@"
