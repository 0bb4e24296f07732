"""IVLP: independent vision-language deep prompts, the building block of IVLP, PromptSRC and DropoutPrompt.

Text: ``n_t`` context tokens after SOS at layer 0 (initialised from ``CTX_INIT`` when it has at
least ``n_t`` tokens, else ``N(0, 0.02^2)``), replaced by layer-specific prompts before text blocks
``1 .. D_t - 1``. Vision: ``n_v`` tokens appended after the patches (no positional embedding) at
layer 0 and replaced before vision blocks ``1 .. D_v - 1``. Depths larger than the backbone's layer
count are clamped (one log line each).
"""
import torch
import torch.nn.functional as F
from torch import nn

from dpl.clip import build_class_prompts, clip_architecture
from dpl.clip.text import bpe_ids, class_text
from dpl.engine.errors import UserError

from .base import ClassPromptBuffers, ClipPromptModel, clamp_depth

PROMPT_INIT_STD = 0.02


def _random_prompts(*shape, device=None):
    return nn.Parameter(torch.randn(*shape, device=device) * PROMPT_INIT_STD)


class IVLPPromptLearner(nn.Module):
    """Independent text and vision deep prompts (all learnable tensors fp32).

    ctx:          [n_t, D_text]             layer-0 text context
    deep_text:    [D_t - 1, n_t, D_text]    text prompts of blocks 1 .. D_t-1 (None when D_t == 1)
    vision:       [D_v, n_v, D_vision]      visual prompts of blocks 0 .. D_v-1 (None when D_v == 0 or n_v == 0)
    """

    def __init__(self, clip_model, classnames, n_ctx_text, n_ctx_vision, depth_text, depth_vision,
                 ctx_init="a photo of a", key_prefix="TRAINER.IVLP"):
        super().__init__()
        arch = clip_architecture(clip_model)
        depth_text = clamp_depth(depth_text, arch.text_layers, f"{key_prefix}.PROMPT_DEPTH_TEXT")
        if n_ctx_text < 1 or depth_text < 1:
            raise UserError(f"{key_prefix}: N_CTX_TEXT and PROMPT_DEPTH_TEXT must be >= 1 "
                            f"(got {n_ctx_text} and {depth_text})")
        if depth_vision > 0 and n_ctx_vision > 0 and not arch.is_vit:
            raise UserError(f"{key_prefix}.PROMPT_DEPTH_VISION > 0 needs a ViT backbone (this CLIP has a ResNet "
                            "image encoder); use e.g. MODEL.BACKBONE.NAME ViT-B/16 or PROMPT_DEPTH_VISION 0")
        ctx_init = class_text(ctx_init or "").strip()
        use_init = bool(ctx_init) and n_ctx_text <= len(bpe_ids(ctx_init))
        class_prompts = build_class_prompts(clip_model, classnames, n_ctx_text, ctx_init if use_init else "")
        self.prompts = ClassPromptBuffers(class_prompts)
        device = class_prompts.prefix.device
        if use_init:
            self.ctx = nn.Parameter(class_prompts.ctx_vectors.clone().float())
        else:
            self.ctx = _random_prompts(n_ctx_text, arch.text_width, device=device)
        self.deep_text = (
            _random_prompts(depth_text - 1, n_ctx_text, arch.text_width, device=device) if depth_text > 1 else None
        )
        self.vision = None
        if arch.is_vit and n_ctx_vision > 0:
            depth_vision = clamp_depth(depth_vision, arch.vision_layers, f"{key_prefix}.PROMPT_DEPTH_VISION")
            if depth_vision > 0:
                self.vision = _random_prompts(depth_vision, n_ctx_vision, arch.vision_width, device=device)
        print(f'Initial text context: "{ctx_init if use_init else " ".join(["X"] * n_ctx_text)}"')
        print(f"Text prompts: {n_ctx_text} tokens x depth {depth_text}; vision prompts: "
              f"{0 if self.vision is None else n_ctx_vision} tokens x depth "
              f"{0 if self.vision is None else self.vision.shape[0]}")

    @property
    def tokenized(self):
        return self.prompts.tokenized

    @property
    def n_ctx_text(self):
        return self.ctx.shape[0]

    def text_prompts(self):
        """(prompt embeddings [C, L, D], deep prompts [D_t-1, n_t, D] or None)."""
        return self.prompts.assemble(self.ctx), self.deep_text

    def vision_prompts(self):
        """[D_v, n_v, D_vision] or None."""
        return self.vision


class IVLPModel(ClipPromptModel):
    """Frozen CLIP + ``IVLPPromptLearner``; ``text_hook`` / ``vision_hook`` may be set by subclasses."""

    def __init__(self, clip_model, classnames, node, key_prefix="TRAINER.IVLP"):
        super().__init__(clip_model)
        self.prompt_learner = IVLPPromptLearner(
            clip_model, classnames, node.N_CTX_TEXT, node.N_CTX_VISION, node.PROMPT_DEPTH_TEXT,
            node.PROMPT_DEPTH_VISION, node.CTX_INIT, key_prefix,
        )

    def encode_text(self, hook=None):
        prompts, deep = self.prompt_learner.text_prompts()
        features = self.text_encoder(
            prompts, self.prompt_learner.tokenized, deep_prompts=deep, hook=hook, n_ctx=self.prompt_learner.n_ctx_text
        )
        return F.normalize(features.float(), dim=-1)

    def encode_image(self, images, hook=None):
        features = self.vision_encoder(images, prompts=self.prompt_learner.vision_prompts(), hook=hook)
        return F.normalize(features.float(), dim=-1)
