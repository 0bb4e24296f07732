# Zero-shot CLIP (hand-crafted prompts, no training). Read by scripts/_common.sh; CFG=rn50|rn101|vit_b32 overrides.
TRAINER=ZeroshotCLIP
CFG_ZEROSHOT=vit_b16
