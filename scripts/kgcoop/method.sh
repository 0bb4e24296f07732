# KgCoOp: upstream's config for every protocol; the weight W is TRAINER.KGCOOP.W in the config (upstream
# put it into the folder name, shots_16_<W>; pass TRAINER.KGCOOP.W <w> together with OUTPUT=... to compare
# weights). Read by scripts/_common.sh; CFG=... overrides.
TRAINER=KgCoOp
CFG_BASE2NEW=vit_b16_ep100_ctxv1
CFG_XD=vit_b16_ep100_ctxv1
CFG_FEWSHOT=vit_b16_ep100_ctxv1
CFG_LONGTAIL=vit_b16_ep100_ctxv1
