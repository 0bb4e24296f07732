# IVLP (independent vision-language prompts; PromptSRC's baseline): one config for every protocol
# (read by scripts/_common.sh; CFG=... overrides).
TRAINER=IVLP
CFG_BASE2NEW=vit_b16_c2_ep20_batch4_4+4ctx
CFG_XD=vit_b16_c2_ep20_batch4_4+4ctx
CFG_FEWSHOT=vit_b16_c2_ep20_batch4_4+4ctx
CFG_LONGTAIL=vit_b16_c2_ep20_batch4_4+4ctx
