# CoCoOp: upstream's 4-token "a photo of a" config (10 epochs, batch 1) for every protocol, ImageNet included.
# Read by scripts/_common.sh; CFG=... overrides (e.g. CFG=vit_b16_c16_ep10_batch1 for 16 random tokens).
TRAINER=CoCoOp
CFG_BASE2NEW=vit_b16_c4_ep10_batch1_ctxv1
CFG_XD=vit_b16_c4_ep10_batch1_ctxv1
CFG_FEWSHOT=vit_b16_c4_ep10_batch1_ctxv1
CFG_LONGTAIL=vit_b16_c4_ep10_batch1_ctxv1
