# CoOp in the CoCoOp paper's protocol (4 context tokens initialised from "a photo of a"): CoCoOp's
# base2new scripts use vit_b16_ctxv1 and, for ImageNet, vit_b16_ep50_ctxv1. Cross-dataset training on
# ImageNet uses the ImageNet setting; few-shot uses one schedule for every shot count (CoOp's paper varied
# the epochs with the shots: pass CFG=vit_b16_ep50|vit_b16_ep100|vit_b16 to follow it).
# Read by scripts/_common.sh; CFG=... overrides.
TRAINER=CoOp
CFG_BASE2NEW=vit_b16_ctxv1
CFG_BASE2NEW_IMAGENET=vit_b16_ep50_ctxv1
CFG_XD=vit_b16_ep50_ctxv1
CFG_FEWSHOT=vit_b16_ep50_ctxv1
CFG_LONGTAIL=vit_b16_ctxv1
