#!/usr/bin/env bash
# Zero-shot CLIP on the full test set of DATASET, written where cross-dataset/DG tables look (run it on imagenet for the source column).
# usage: bash scripts/zsclip/xd_test.sh DATASET [SEED] [KEY VALUE ...]   (DATA must be set; see scripts/_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
zeroshot_xd_test "$@"
