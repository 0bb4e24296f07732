"""IVLP: independent vision-language deep prompts, the building block of IVLP, PromptSRC and DropoutPrompt.

Text: ``n_t`` context tokens after SOS at layer 0 (initialised from ``CTX_INIT`` when it has at
least ``n_t`` tokens, else ``N(0, 0.02^2)``), replaced by layer-specific prompts before text blocks
``1 .. D_t - 1``. Vision: ``n_v`` tokens appended after the patches (no positional embedding) at
layer 0 and replaced before vision blocks ``1 .. D_v - 1``. Depths larger than the backbone's layer
count are clamped (one log line each).
"""
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dpl.clip import build_class_prompts, clip_architecture
from dpl.clip.text import bpe_ids, class_text

from .base import ClassPromptBuffers, ClipPromptModel, clamp_depth
from .settings import require

PROMPT_INIT_STD = 0.02


def _random_prompts(*shape, device=None):
    return nn.Parameter(torch.randn(*shape, device=device) * PROMPT_INIT_STD)


@dataclass(frozen=True)
class DeepPromptSettings:
    """IVLP's prompt settings: keys ``N_CTX_TEXT``, ``N_CTX_VISION``, ``PROMPT_DEPTH_TEXT``,
    ``PROMPT_DEPTH_VISION``, ``CTX_INIT`` of a trainer node (IVLP, PromptSRC, DropoutPrompt)."""

    n_ctx_text: int = 2
    n_ctx_vision: int = 2
    prompt_depth_text: int = 9
    prompt_depth_vision: int = 9
    ctx_init: str = "a photo of a"

    def __post_init__(self):
        require(self.n_ctx_text >= 1, "n_ctx_text", "need at least one text context token")
        require(self.prompt_depth_text >= 1, "prompt_depth_text", "need at least the first text layer (>= 1)")
        require(self.n_ctx_vision >= 0, "n_ctx_vision", "need 0 (no vision prompts) or more tokens")
        require(self.prompt_depth_vision >= 0, "prompt_depth_vision", "need 0 (no vision prompts) or more layers")

    @classmethod
    def from_node(cls, node):
        return cls(n_ctx_text=node.N_CTX_TEXT, n_ctx_vision=node.N_CTX_VISION, prompt_depth_text=node.PROMPT_DEPTH_TEXT,
                   prompt_depth_vision=node.PROMPT_DEPTH_VISION, ctx_init=node.CTX_INIT)

    def fitted_to(self, arch, node_name):
        """These settings on a backbone: depths clamped to its layers, with one log line per clamped key of
        ``node_name`` (e.g. ``TRAINER.IVLP``); vision prompts on a ResNet are a ``SettingError``."""
        vision_prompts = self.n_ctx_vision > 0 and self.prompt_depth_vision > 0
        require(arch.is_vit or not vision_prompts, "prompt_depth_vision",
                "vision prompts need a ViT backbone (this CLIP has a ResNet image encoder); use e.g. "
                "MODEL.BACKBONE.NAME ViT-B/16 or PROMPT_DEPTH_VISION 0")
        depth_text = clamp_depth(self.prompt_depth_text, arch.text_layers, f"{node_name}.PROMPT_DEPTH_TEXT")
        depth_vision = self.prompt_depth_vision
        if arch.is_vit and self.n_ctx_vision > 0:
            depth_vision = clamp_depth(depth_vision, arch.vision_layers, f"{node_name}.PROMPT_DEPTH_VISION")
        return dataclasses.replace(self, prompt_depth_text=depth_text, prompt_depth_vision=depth_vision)


def layer0_text_context(clip_model, classnames, n_ctx, ctx_init):
    """``(ClassPromptBuffers, ctx [n_ctx, D_text] fp32 Parameter)``: the context after SOS of every class prompt.

    Initialised from the first ``n_ctx`` tokens of ``ctx_init`` when it has that many (the prompt text is then
    ``"<ctx_init> {class}."``, its remaining words fixed tokens), else ``N(0, 0.02^2)`` with ``"X .. X {class}."``.
    Logs the initial context.
    """
    arch = clip_architecture(clip_model)
    ctx_init = class_text(ctx_init or "").strip()
    use_init = bool(ctx_init) and n_ctx <= len(bpe_ids(ctx_init))
    class_prompts = build_class_prompts(clip_model, classnames, n_ctx, ctx_init if use_init else "")
    if use_init:
        ctx = nn.Parameter(class_prompts.ctx_vectors.clone().float())
    else:
        ctx = _random_prompts(n_ctx, arch.text_width, device=class_prompts.prefix.device)
    print(f'Initial text context: "{ctx_init if use_init else " ".join(["X"] * n_ctx)}"')
    return ClassPromptBuffers(class_prompts), ctx


class IVLPPromptLearner(nn.Module):
    """Independent text and vision deep prompts (all learnable tensors fp32).

    ctx:          [n_t, D_text]             layer-0 text context
    deep_text:    [D_t - 1, n_t, D_text]    text prompts of blocks 1 .. D_t-1 (None when D_t == 1)
    vision:       [D_v, n_v, D_vision]      visual prompts of blocks 0 .. D_v-1 (None when D_v == 0 or n_v == 0)

    ``settings``: ``DeepPromptSettings`` fitted to this CLIP (``fitted_to``).
    """

    def __init__(self, clip_model, classnames, settings):
        super().__init__()
        arch = clip_architecture(clip_model)
        n_ctx_text, n_ctx_vision = settings.n_ctx_text, settings.n_ctx_vision
        depth_text, depth_vision = settings.prompt_depth_text, settings.prompt_depth_vision
        if depth_text > arch.text_layers or (arch.is_vit and depth_vision > arch.vision_layers):
            raise ValueError(f"prompt depths {depth_text}/{depth_vision} exceed this CLIP's layers: fit the "
                             "settings to the backbone first (DeepPromptSettings.fitted_to)")
        self.prompts, self.ctx = layer0_text_context(clip_model, classnames, n_ctx_text, settings.ctx_init)
        device = self.ctx.device
        self.deep_text = (
            _random_prompts(depth_text - 1, n_ctx_text, arch.text_width, device=device) if depth_text > 1 else None
        )
        self.vision = None
        if arch.is_vit and n_ctx_vision > 0 and depth_vision > 0:
            self.vision = _random_prompts(depth_vision, n_ctx_vision, arch.vision_width, device=device)
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
    """Frozen CLIP + ``IVLPPromptLearner`` (``settings``: fitted ``DeepPromptSettings``); the encoders take
    optional layer hooks (``dpl.clip.prompted.LayerHook``)."""

    def __init__(self, clip_model, classnames, settings):
        super().__init__(clip_model)
        self.prompt_learner = IVLPPromptLearner(clip_model, classnames, settings)

    def encode_text(self, hook=None):
        prompts, deep = self.prompt_learner.text_prompts()
        features = self.text_encoder(
            prompts, self.prompt_learner.tokenized, deep_prompts=deep, hook=hook, n_ctx=self.prompt_learner.n_ctx_text,
            active_length=self.prompt_learner.prompts.active_length,
        )
        return F.normalize(features.float(), dim=-1)

    def encode_image(self, images, hook=None):
        features = self.vision_encoder(images, prompts=self.prompt_learner.vision_prompts(), hook=hook)
        return F.normalize(features.float(), dim=-1)
