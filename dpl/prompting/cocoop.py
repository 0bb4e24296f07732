"""CoCoOp (Zhou et al., CVPR'22): CoOp's context shifted per image by a small meta-network.

``pi = meta_net(f(x))`` with ``f(x)`` the normalised image feature of the frozen, unprompted image
encoder; every class prompt of image ``x`` uses the context ``ctx + pi``, so
``logits[b, c] = exp(t) * f(x_b) . g([SOS][ctx + pi_b][CLASS_c][.][EOS])`` (``g`` the normalised text
feature). The meta-network is ``linear1`` (E -> E // 16), ReLU, ``linear2`` (E // 16 -> D), E the image
embedding size and D the text width; it is learned and checkpointed with the context.

The class features depend on the image, so they cannot be encoded once per ``test()`` call:
``CoCoOpModel.encode_text()`` is None and ``forward`` encodes the ``B * C`` prompts of a batch.
"""
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import FROZEN_TEXT_CHUNK, ClipPromptModel
from .coop import ContextSettings, CoOpPromptLearner

# TRAINER.COCOOP: upstream's node, keys and defaults (its YAML files and plugins read them).
COCOOP_DEFAULTS = dict(N_CTX=16, CTX_INIT="", PREC="fp16")
META_NET_REDUCTION = 16


@dataclass(frozen=True)
class CoCoOpSettings:
    """``TRAINER.COCOOP``: ``N_CTX`` and ``CTX_INIT``; the context is generic, the class token at the end."""

    n_ctx: int = 16
    ctx_init: str = ""

    def __post_init__(self):
        ContextSettings(n_ctx=self.n_ctx, ctx_init=self.ctx_init)  # CoOp's checks of the same two keys

    @classmethod
    def from_node(cls, node):
        return cls(n_ctx=node.N_CTX, ctx_init=node.CTX_INIT)


def build_meta_net(vis_dim, ctx_dim, reduction=META_NET_REDUCTION, device=None, dtype=None):
    """``linear1`` [vis_dim -> vis_dim // reduction], ReLU, ``linear2`` [-> ctx_dim].

    The names are those of published CoCoOp checkpoints, so their meta-net tensors map one to one. The hidden
    size is at least 1 so that backbones with a small embedding (test models) still build.
    """
    hidden = max(vis_dim // reduction, 1)
    return nn.Sequential(OrderedDict([
        ("linear1", nn.Linear(vis_dim, hidden, device=device, dtype=dtype)),
        ("relu", nn.ReLU(inplace=True)),
        ("linear2", nn.Linear(hidden, ctx_dim, device=device, dtype=dtype)),
    ]))


class ConditionalPromptLearner(CoOpPromptLearner):
    """CoOp's generic context (class token at the end) plus ``meta_net``; called with image features."""

    def __init__(self, clip_model, classnames, n_ctx=16, ctx_init=""):
        super().__init__(clip_model, classnames, n_ctx, ctx_init, csc=False, position="end")
        # Built after ctx so that a seed draws the context as CoOp does.
        self.meta_net = build_meta_net(clip_model.visual.output_dim, self.ctx.shape[-1],
                                       device=self.ctx.device, dtype=self.ctx.dtype)

    def shifted_context(self, image_features):
        """``ctx + meta_net(f)``: ``[B, M, D]`` from normalised image features ``[B, E]``."""
        bias = self.meta_net(image_features.to(self.ctx.dtype))  # [B, D]
        return self.ctx.unsqueeze(0) + bias.unsqueeze(1)  # [1, M, D] + [B, 1, D]

    def forward(self, image_features):
        """Prompt embeddings ``[B, C, L, D]``: every class prompt of image b with b's shifted context."""
        ctx = self.shifted_context(image_features)  # [B, M, D]
        prefix, suffix = self.prompts.prefix, self.prompts.suffix  # [C, 1, D], [C, L-1-M, D]
        batch, classes = ctx.shape[0], prefix.shape[0]
        # The learner is built with the class token at the end, so a prompt is [prefix, ctx, suffix].
        return torch.cat([
            prefix.unsqueeze(0).expand(batch, -1, -1, -1),
            ctx.to(prefix.dtype).unsqueeze(1).expand(-1, classes, -1, -1),  # [B, C, M, D]
            suffix.unsqueeze(0).expand(batch, -1, -1, -1),
        ], dim=2)


class CoCoOpModel(ClipPromptModel):
    """Frozen CLIP + ``ConditionalPromptLearner`` (``settings``: ``CoCoOpSettings``); ``forward`` is the base's:
    frozen image features, then ``logits_from_image_features`` conditions the class prompts on them."""

    FROZEN_IMAGE_FEATURES = True  # the meta-network reads frozen CLIP's features; the vision tower is unprompted

    def __init__(self, clip_model, classnames, settings):
        super().__init__(clip_model)
        self.prompt_learner = ConditionalPromptLearner(clip_model, classnames, settings.n_ctx, settings.ctx_init)
        self.configure_text_encoder()

    def configure_text_encoder(self, chunk_size=0, checkpoint=False):
        """As the base, but never unchunked: a batch encodes ``B * C`` prompts (an evaluation batch of 100
        images on 1000 classes would otherwise hold the activations of 100k prompts at once). Chunking gives
        the same features and gradients."""
        super().configure_text_encoder(chunk_size or FROZEN_TEXT_CHUNK, checkpoint)

    def encode_text(self):
        """None: no class feature is independent of the image (the trainer's ``test()`` then lets
        ``forward`` encode each batch's prompts)."""
        return None

    def conditional_text_features(self, image_features):
        """Normalised class features ``[B, C, E]`` (float32) for normalised image features ``[B, E]``."""
        prompts = self.prompt_learner(image_features)  # [B, C, L, D]
        batch, classes = prompts.shape[:2]
        tokenized = self.prompt_learner.tokenized.repeat(batch, 1)  # [B * C, L], the row order of flatten
        features = self.text_encoder(prompts.flatten(0, 1), tokenized)  # [B * C, E], chunked
        return F.normalize(features.float(), dim=-1).view(batch, classes, -1)

    def logits_from_image_features(self, image_features, text_features=None):
        """Logits ``[B, C]`` of normalised image features ``[B, E]`` through their own class features;
        ``text_features`` must be None (what ``encode_text()`` returns)."""
        if text_features is not None:
            raise ValueError("CoCoOp's class features depend on each image: call the model without text_features")
        text_features = self.conditional_text_features(image_features)  # [B, C, E]
        return self.logit_scale * torch.einsum("be,bce->bc", image_features, text_features)
