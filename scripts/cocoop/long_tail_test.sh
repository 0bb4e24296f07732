#!/usr/bin/env bash
# Long-tail: evaluate the long-tail run's final checkpoint (or LOADEP) on the new classes.
# usage: bash scripts/cocoop/long_tail_test.sh DATASET SEED [RATIO] [KEY VALUE ...]   (DATA must be set; see scripts/_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
long_tail_test "$@"
