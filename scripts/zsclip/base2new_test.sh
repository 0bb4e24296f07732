#!/usr/bin/env bash
# Zero-shot CLIP on the base and the new classes of DATASET, written where base-to-novel tables look.
# usage: bash scripts/zsclip/base2new_test.sh DATASET [SEED] [KEY VALUE ...]   (DATA must be set; see scripts/_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
zeroshot_base2new "$@"
