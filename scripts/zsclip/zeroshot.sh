#!/usr/bin/env bash
# Zero-shot CLIP on all classes of DATASET (CoOp's zeroshot.sh layout: OUTPUT/ZeroshotCLIP/<cfg>/<dataset>).
# usage: bash scripts/zsclip/zeroshot.sh DATASET [KEY VALUE ...]   (DATA must be set; see scripts/_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"
zeroshot "$@"
