#!/usr/bin/env bash
# Long-tail: train on the base classes with an exponential profile of max/min RATIO (default 10), test on base.
# usage: bash scripts/maple/long_tail.sh DATASET SEED [RATIO] [KEY VALUE ...]   (DATA must be set; see scripts/_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
long_tail "$@"
