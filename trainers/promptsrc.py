"""PromptSRC (Khattak et al., ICCV'23): IVLP prompts + self-regulating consistency + Gaussian prompt aggregation.

``L = CE + L_KL + TEXT_LOSS_WEIGHT * L1_text + IMAGE_LOSS_WEIGHT * L1_image``; the losses, GPA and the
model are ``dpl.prompting.promptsrc``.
"""
from dataclasses import dataclass

import torch.nn.functional as F

from dpl.clip import clip_architecture
from dpl.engine import TRAINER_REGISTRY
from dpl.prompting import (DeepPromptSettings, GPASettings, PromptSRCModel, SelfRegulatingTrainer, add_trainer_node,
                           promptsrc_consistency_losses, require)

PROMPTSRC_DEFAULTS = dict(
    N_CTX_VISION=4,
    N_CTX_TEXT=4,
    CTX_INIT="a photo of a",
    PREC="fp16",
    PROMPT_DEPTH_VISION=9,  # max = the backbone's layers (clamped), min 0
    PROMPT_DEPTH_TEXT=9,  # min 1
    # Floats, though upstream writes 25, 10, 15, 1: dpl's config node merges an int into a float key,
    # so upstream YAML files still merge and 25.5 is accepted too.
    TEXT_LOSS_WEIGHT=25.0,
    IMAGE_LOSS_WEIGHT=10.0,
    GPA_MEAN=15.0,
    GPA_STD=1.0,
)

@dataclass(frozen=True)
class PromptSRCSettings:
    """``TRAINER.PROMPTSRC``: IVLP prompts, the two L1 loss weights and Gaussian prompt aggregation."""

    prompts: DeepPromptSettings
    text_loss_weight: float
    image_loss_weight: float
    gpa: GPASettings

    def __post_init__(self):
        for field in ("text_loss_weight", "image_loss_weight"):
            require(getattr(self, field) >= 0, field, "a loss weight must be >= 0")

    @classmethod
    def from_node(cls, node):
        return cls(prompts=DeepPromptSettings.from_node(node), text_loss_weight=node.TEXT_LOSS_WEIGHT,
                   image_loss_weight=node.IMAGE_LOSS_WEIGHT, gpa=GPASettings.from_node(node))


@TRAINER_REGISTRY.register()
class PromptSRC(SelfRegulatingTrainer):
    """PromptSRC (cfg node ``TRAINER.PROMPTSRC``).

    Logs ``loss_ce``, ``loss_scl_text``, ``loss_scl_image``, ``loss_kl`` (weighted, summing to ``loss``).
    """

    CFG_NODE = "PROMPTSRC"
    MODEL_NAME = "VLPromptLearner"
    SETTINGS = PromptSRCSettings

    @classmethod
    def extend_cfg(cls, cfg):
        add_trainer_node(cfg, "PROMPTSRC", PROMPTSRC_DEFAULTS)

    def build_clip_model(self, clip_model, classnames):
        prompts = self.settings.prompts.fitted_to(clip_architecture(clip_model), self.node_name)
        return PromptSRCModel(clip_model, classnames, prompts)

    def compute_losses(self, images, labels, **teacher_inputs):
        out = self.model.forward_train(images, **teacher_inputs)
        losses = {"loss_ce": F.cross_entropy(out["logits"], labels)}
        losses.update(promptsrc_consistency_losses(
            out["text_features"], out["image_features"], out["logits"], out["teacher_text_features"],
            out["teacher_image_features"], out["teacher_logits"], self.settings.text_loss_weight,
            self.settings.image_loss_weight,
        ))
        return out["logits"], losses
