# MaPLe (multi-modal prompt learning): upstream's base-to-novel config, and its cross-dataset config for xd
# (read by scripts/_common.sh; CFG=... overrides). Upstream has no few-shot or long-tail config: the
# base-to-novel one is used.
TRAINER=MaPLe
CFG_BASE2NEW=vit_b16_c2_ep5_batch4_2ctx
CFG_XD=vit_b16_c2_ep5_batch4_2ctx_cross_datasets
CFG_FEWSHOT=vit_b16_c2_ep5_batch4_2ctx
CFG_LONGTAIL=vit_b16_c2_ep5_batch4_2ctx
