"""Multimodal Alignment Guidance (MAG, ``docs/METHOD.md`` §8): bridge tokens shared by both modalities.

Shapes: ``N`` sequences, ``L`` tokens, ``K`` bridge tokens, ``D`` widths.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class AlignmentGuidance(nn.Module):
    """K learnable bridge tokens shared by both modalities and all layers, with one linear map per modality.

    ``forward(x, modality, attended)`` returns the attention ``M = softmax_L(tau * Z (W x)^T)`` [N, K, L]
    (no 1/sqrt(d) scaling, masked positions get 0) and the aggregated features ``F = M (W x)`` [N, K, D_text].
    """

    def __init__(self, num_tokens, vision_width, text_width, temperature=1.0, init_a=0.0):
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"AlignmentGuidance needs at least one bridge token, got num_tokens={num_tokens}")
        self.temperature = float(temperature)
        self.tokens = nn.Parameter(torch.empty(num_tokens, text_width))
        # U(+-sqrt(6 / ((1 + a^2) text_width))): a = 0 gives U(+-0.108) at width 512, the official sqrt(5) U(+-0.044)
        nn.init.kaiming_uniform_(self.tokens, a=init_a)
        self.vision_proj = nn.Linear(vision_width, text_width)
        self.text_proj = nn.Linear(text_width, text_width)

    def forward(self, x, modality, attended=None):
        proj = self.vision_proj if modality == "vision" else self.text_proj
        projected = proj(x.to(self.tokens.dtype))  # [N, L, D]
        logits = self.temperature * torch.einsum("kd,nld->nkl", self.tokens, projected)
        if attended is not None:
            logits = logits.masked_fill(~attended[:, None, :], -math.inf)
        attention = logits.softmax(dim=-1)  # [N, K, L]
        return attention, attention @ projected


def mag_alignment_loss(vision_features, text_features, labels):
    """Mean over layer pairs, batch and bridge tokens of (1 - cos(F^v_{b,q}, F^t_{y_b,q})) / 2.

    vision_features: list of [B, K, D] per layer (in layer order), text_features: list of [C, K, D]; the
    i-th entries are paired, for i < min of the two lengths.
    """
    pairs = min(len(vision_features), len(text_features))
    if pairs == 0:
        raise ValueError("mag_alignment_loss needs at least one vision and one text layer")
    vision = torch.stack(vision_features[:pairs])  # [P, B, K, D]
    text = torch.stack(text_features[:pairs])[:, labels]  # [P, B, K, D]
    return ((1.0 - F.cosine_similarity(vision, text, dim=-1)) / 2.0).mean()
