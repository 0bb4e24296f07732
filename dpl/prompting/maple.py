"""MaPLe (Khattak et al., CVPR'23): multi-modal prompts whose vision half is a projection of the text half.

Text: ``n`` context tokens after SOS at layer 0 (from ``CTX_INIT`` when it has at least ``n`` tokens,
else ``N(0, 0.02^2)``) and layer-specific prompts replacing them before text blocks ``1 .. depth-1``,
as in IVLP. Vision: the prompts of block ``i`` are ``W_i t_i + b_i``, ``t_i`` the text prompts of that
block (``t_0`` = the layer-0 context), appended after the patches at layer 0 and replaced before blocks
``1 .. depth-1``, as IVLP's vision prompts. One depth for both towers; only the text prompts and the
``depth`` projections are learnable, so the two modalities cannot drift apart.
"""
import copy
import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from dpl.clip import clip_architecture

from .base import ClipPromptModel, clamp_depth
from .ivlp import IVLPModel, _random_prompts, layer0_text_context
from .settings import require

VIT_ONLY_REASON = ("MaPLe's vision prompts are projections of its text prompts and need a ViT backbone (this CLIP "
                   "has a ResNet image encoder); use e.g. MODEL.BACKBONE.NAME ViT-B/16")


@dataclass(frozen=True)
class MaPLeSettings:
    """MaPLe's prompt settings: keys ``N_CTX``, ``CTX_INIT``, ``PROMPT_DEPTH`` of ``TRAINER.MAPLE``."""

    n_ctx: int = 2
    ctx_init: str = "a photo of a"
    prompt_depth: int = 9

    def __post_init__(self):
        require(self.n_ctx >= 1, "n_ctx", "need at least one context token")
        require(self.prompt_depth >= 1, "prompt_depth", "need at least the first layer (>= 1): MaPLe always "
                "prompts both encoders")

    @classmethod
    def from_node(cls, node):
        return cls(n_ctx=node.N_CTX, ctx_init=node.CTX_INIT, prompt_depth=node.PROMPT_DEPTH)

    def fitted_to(self, arch, node_name):
        """These settings on a backbone: the depth clamped to the shallower tower (one log line under
        ``node_name``, e.g. ``TRAINER.MAPLE``); a ResNet backbone is a ``SettingError``."""
        require(arch.is_vit, "prompt_depth", VIT_ONLY_REASON)
        depth = clamp_depth(self.prompt_depth, min(arch.text_layers, arch.vision_layers), f"{node_name}.PROMPT_DEPTH")
        return dataclasses.replace(self, prompt_depth=depth)


class MaPLePromptLearner(nn.Module):
    """Coupled text and vision prompts (all learnable tensors fp32).

    ctx:                          [n, D_text]               layer-0 text context
    compound_prompts_text:        [depth - 1, n, D_text]    text prompts of blocks 1 .. depth-1 (None at depth 1)
    proj:                         Linear(D_text -> D_vision) layer-0 coupling
    compound_prompt_projections:  depth - 1 x Linear(D_text -> D_vision), couplings of blocks 1 .. depth-1

    ``settings``: ``MaPLeSettings`` fitted to this CLIP (``fitted_to``).
    """

    def __init__(self, clip_model, classnames, settings):
        super().__init__()
        arch = clip_architecture(clip_model)
        n_ctx, depth = settings.n_ctx, settings.prompt_depth
        require(arch.is_vit, "prompt_depth", VIT_ONLY_REASON)
        if depth > min(arch.text_layers, arch.vision_layers):
            raise ValueError(f"prompt depth {depth} exceeds this CLIP's layers: fit the settings to the backbone "
                             "first (MaPLeSettings.fitted_to)")
        self.prompts, self.ctx = layer0_text_context(clip_model, classnames, n_ctx, settings.ctx_init)
        device = self.ctx.device
        self.proj = nn.Linear(arch.text_width, arch.vision_width, device=device)
        self.compound_prompts_text = (
            _random_prompts(depth - 1, n_ctx, arch.text_width, device=device) if depth > 1 else None
        )
        # One initialisation copied to every deeper layer (the method's choice); each copy then trains alone.
        layer = nn.Linear(arch.text_width, arch.vision_width, device=device)
        self.compound_prompt_projections = nn.ModuleList(copy.deepcopy(layer) for _ in range(depth - 1))
        print(f"MaPLe prompts: {n_ctx} tokens x depth {depth}, vision prompts projected "
              f"{arch.text_width} -> {arch.vision_width}")

    @property
    def tokenized(self):
        return self.prompts.tokenized

    @property
    def n_ctx_text(self):
        return self.ctx.shape[0]

    @property
    def depth(self):
        return 1 + len(self.compound_prompt_projections)

    def text_prompts(self):
        """(prompt embeddings [C, L, D_text], deep prompts [depth-1, n, D_text] or None)."""
        return self.prompts.assemble(self.ctx), self.compound_prompts_text

    def vision_prompts(self):
        """[depth, n, D_vision]: every block's text prompts through that block's projection, in one batched
        matmul (the per-layer weights are separate parameters, stacked here)."""
        text = self.ctx.unsqueeze(0)
        if self.compound_prompts_text is not None:
            text = torch.cat([text, self.compound_prompts_text], dim=0)  # [depth, n, D_text]
        layers = [self.proj, *self.compound_prompt_projections]
        weight = torch.stack([layer.weight for layer in layers])  # [depth, D_vision, D_text]
        bias = torch.stack([layer.bias for layer in layers])  # [depth, D_vision]
        return torch.baddbmm(bias.unsqueeze(1), text, weight.transpose(1, 2))


class MaPLeModel(ClipPromptModel):
    """Frozen CLIP + ``MaPLePromptLearner`` (``settings``: fitted ``MaPLeSettings``).

    The learner has IVLP's interface (``text_prompts``, ``vision_prompts``, ``tokenized``, ``n_ctx_text``),
    so IVLP's encoding applies unchanged, layer hooks included.
    """

    def __init__(self, clip_model, classnames, settings):
        super().__init__(clip_model)
        self.prompt_learner = MaPLePromptLearner(clip_model, classnames, settings)

    encode_text = IVLPModel.encode_text
    encode_image = IVLPModel.encode_image
