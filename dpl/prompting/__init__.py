"""CLIP prompt learning as a library: the trainer base every method builds on and the shared method blocks.

- ``base``: ``ClipPromptTrainer`` (the Dassl ``TrainerX`` of every prompt method: CLIP loading,
  precision, learnable-only checkpoints, loss components, evaluation with class features encoded
  once) and ``ClipPromptModel`` (a frozen CLIP with the prompted encoders of ``dpl.clip``).
- ``coop``: CoOp's learnable text context (CoOp, KgCoOp).
- ``cocoop``: CoCoOp's image-conditional context (CoOp's context shifted by a meta-network per image).
- ``ivlp``: independent vision-language deep prompts (IVLP, PromptSRC, DropoutPrompt).
- ``maple``: MaPLe's coupled prompts (vision prompts projected from the text prompts).
- ``settings``: typed settings of a config node, validated once (``setting_errors`` names the key).
- ``promptsrc``: PromptSRC's self-regulating losses, Gaussian prompt aggregation, its model with frozen
  teachers and ``SelfRegulatingTrainer`` (PromptSRC, DropoutPrompt).

A method is a file in ``trainers/`` that subclasses one of these and registers itself; the
components of Dropout Prompt Learning are ``dpl.drople``.
"""
from .base import (PRECISIONS, ClassPromptBuffers, ClipPromptModel, ClipPromptTrainer, add_trainer_node, amp_dtype,
                   clamp_depth, effective_precision)
from .cocoop import COCOOP_DEFAULTS, CoCoOpModel, CoCoOpSettings, ConditionalPromptLearner, build_meta_net
from .coop import COOP_DEFAULTS, ContextSettings, CoOpModel, CoOpPromptLearner
from .ivlp import DeepPromptSettings, IVLPModel, IVLPPromptLearner
from .maple import MaPLeModel, MaPLePromptLearner, MaPLeSettings
from .promptsrc import (GPA_LOG_LINE, GaussianPromptAggregator, GPASettings, PromptSRCModel, SelfRegulatingTrainer,
                        gaussian_epoch_weights, kl_to_teacher, l1_consistency, promptsrc_consistency_losses)
from .settings import require, setting_errors

__all__ = [
    "PRECISIONS", "ClassPromptBuffers", "ClipPromptModel", "ClipPromptTrainer", "add_trainer_node", "amp_dtype",
    "clamp_depth", "effective_precision", "COOP_DEFAULTS", "ContextSettings", "CoOpModel", "CoOpPromptLearner",
    "DeepPromptSettings", "IVLPModel", "IVLPPromptLearner", "GPA_LOG_LINE", "GaussianPromptAggregator",
    "GPASettings", "PromptSRCModel", "SelfRegulatingTrainer", "gaussian_epoch_weights", "kl_to_teacher",
    "l1_consistency", "promptsrc_consistency_losses", "require", "setting_errors",
    "COCOOP_DEFAULTS", "CoCoOpModel", "CoCoOpSettings", "ConditionalPromptLearner", "build_meta_net",
    "MaPLeModel", "MaPLePromptLearner", "MaPLeSettings",
]
