# DropoutPrompt (DroPLe): configs per protocol (read by scripts/_common.sh; CFG=... overrides).
TRAINER=DropoutPrompt
CFG_BASE2NEW=vit_b16_c2_ep20_batch4_4+4ctx
CFG_XD=vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets
CFG_FEWSHOT=vit_b16_c2_ep50_batch4_4+4ctx_few_shot
CFG_LONGTAIL=vit_b16_c2_ep20_batch4_4+4ctx
