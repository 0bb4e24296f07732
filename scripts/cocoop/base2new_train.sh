#!/usr/bin/env bash
# Base-to-novel: train on the base classes (16 shots), final test on the base test split.
# usage: bash scripts/cocoop/base2new_train.sh DATASET SEED [KEY VALUE ...]   (DATA must be set; see scripts/_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
base2new_train "$@"
