"""Dropout Prompt Learning's components (DroPLe, Chen et al. 2025), usable in any CLIP prompt learner.

Specification: ``docs/METHOD.md`` (the section numbers in the docstrings refer to it).

- ``token_dropout``: token importance (global-token attention, maximal self-attention, alignment
  guidance), importance -> drop probability, the drop draw and the perturbation; ``TokenDropout``.
- ``alignment``: Multimodal Alignment Guidance, ``AlignmentGuidance`` and ``mag_alignment_loss``.
- ``hook``: ``TokenDropoutHook``, which applies token dropout between the blocks of the prompted
  encoders of ``dpl.clip.prompted`` and records the MAG features.
- ``residual_entropy``: the residual entropy regularisation and its lambda schedule.

Every function takes plain values and tensors; a bad setting raises ``dpl.utils.errors.SettingError``
naming the parameter, which an entry point turns into a message naming its own config key.
"""
from .alignment import AlignmentGuidance, mag_alignment_loss
from .hook import TokenDropoutHook
from .residual_entropy import (RESIDUAL_DENOMINATORS, prediction_entropy, residual_denominator, residual_entropies,
                               residual_entropy_loss, residual_features, residual_lambda)
from .token_dropout import (IMPORTANCE_TERMS, PERTURBATIONS, TokenDropout, active_length, alignment_score,
                            attended_positions, draw_drops, global_attention_score, importance_to_probability,
                            l1_normalise, min_max_normalise, perturb_tokens, scored_positions, self_attention_score,
                            token_importance)

__all__ = [
    "AlignmentGuidance", "mag_alignment_loss", "TokenDropoutHook", "prediction_entropy", "residual_entropies",
    "residual_entropy_loss", "residual_features", "residual_lambda", "residual_denominator", "RESIDUAL_DENOMINATORS",
    "IMPORTANCE_TERMS", "PERTURBATIONS",
    "TokenDropout", "active_length", "alignment_score", "attended_positions", "draw_drops",
    "global_attention_score", "importance_to_probability", "l1_normalise", "min_max_normalise", "perturb_tokens",
    "scored_positions", "self_attention_score", "token_importance",
]
