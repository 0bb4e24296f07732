"""CoOp's learnable text context (Zhou et al., IJCV'22), the building block of CoOp and KgCoOp.

Prompt ``[SOS][V_1..V_M][CLASS][.][EOS]`` (``position`` end / middle / front), one text layer of
prompts through the prompted text encoder. ``ctx_init`` words initialise the context (then ``M`` =
their token count); otherwise ``N(0, 0.02^2)``, generic ``[M, D]`` or class-specific ``[C, M, D]`` (``csc``).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dpl.clip import build_class_prompts
from dpl.clip.text import CLASS_TOKEN_POSITIONS

from .base import ClassPromptBuffers, ClipPromptModel
from .settings import require

# The keys of a context-prompt node (CoOp's TRAINER.COOP; KgCoOp's node adds its own on top).
COOP_DEFAULTS = dict(N_CTX=16, CSC=False, CTX_INIT="", PREC="fp16", CLASS_TOKEN_POSITION="end")
CTX_INIT_STD = 0.02


@dataclass(frozen=True)
class ContextSettings:
    """CoOp's context settings: keys ``N_CTX``, ``CTX_INIT``, ``CSC``, ``CLASS_TOKEN_POSITION``."""

    n_ctx: int = 16
    ctx_init: str = ""
    csc: bool = False
    class_token_position: str = "end"

    def __post_init__(self):
        require(self.n_ctx >= 1 or bool(self.ctx_init), "n_ctx",
                "need at least one context token (or CTX_INIT words, whose token count it then is)")
        require(self.class_token_position in CLASS_TOKEN_POSITIONS, "class_token_position",
                f"use one of {list(CLASS_TOKEN_POSITIONS)}")

    @classmethod
    def from_node(cls, node):
        return cls(n_ctx=node.N_CTX, ctx_init=node.CTX_INIT, csc=node.CSC,
                   class_token_position=node.CLASS_TOKEN_POSITION)


class CoOpPromptLearner(nn.Module):
    """The learnable context ``ctx`` and the class prompts it is placed into."""

    def __init__(self, clip_model, classnames, n_ctx=16, ctx_init="", csc=False, position="end"):
        super().__init__()
        ctx_init = (ctx_init or "").strip()
        class_prompts = build_class_prompts(clip_model, classnames, None if ctx_init else n_ctx, ctx_init, position)
        self.prompts = ClassPromptBuffers(class_prompts)
        n_ctx, width = class_prompts.n_ctx, class_prompts.prefix.shape[-1]
        if class_prompts.ctx_vectors is not None:
            ctx = class_prompts.ctx_vectors.clone()  # [M, D]
            if csc:
                ctx = ctx.unsqueeze(0).repeat(len(classnames), 1, 1)
        else:
            shape = (len(classnames), n_ctx, width) if csc else (n_ctx, width)
            ctx = torch.randn(shape, device=class_prompts.prefix.device) * CTX_INIT_STD
        self.ctx = nn.Parameter(ctx.float())  # learnable tensors stay fp32 in every precision
        context_text = ctx_init or " ".join(["X"] * n_ctx)
        print(f'Initial context: "{context_text}"')
        print(f"Number of context words (tokens): {n_ctx}")

    @property
    def tokenized(self):
        return self.prompts.tokenized

    def forward(self):
        """Prompt embeddings ``[C, L, D]``."""
        return self.prompts.assemble(self.ctx)


class CoOpModel(ClipPromptModel):
    """Frozen CLIP + ``CoOpPromptLearner`` (``settings``: ``ContextSettings``)."""

    FROZEN_IMAGE_FEATURES = True  # prompts on the text side only

    def __init__(self, clip_model, classnames, settings):
        super().__init__(clip_model)
        self.prompt_learner = CoOpPromptLearner(clip_model, classnames, settings.n_ctx, settings.ctx_init,
                                                settings.csc, settings.class_token_position)

    def encode_text(self):
        features = self.text_encoder(self.prompt_learner(), self.prompt_learner.tokenized)
        return F.normalize(features.float(), dim=-1)
