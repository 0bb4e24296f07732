"""PromptSRC (Khattak et al., ICCV'23): IVLP prompts + self-regulating consistency + Gaussian prompt aggregation.

``L = CE + L_KL + TEXT_LOSS_WEIGHT * L1_text + IMAGE_LOSS_WEIGHT * L1_image``; the losses, GPA and the
model are ``dpl.prompting.promptsrc``.
"""
import torch.nn.functional as F

from dpl.engine import TRAINER_REGISTRY
from dpl.prompting import PromptSRCModel, SelfRegulatingTrainer, add_trainer_node, promptsrc_consistency_losses

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

@TRAINER_REGISTRY.register()
class PromptSRC(SelfRegulatingTrainer):
    """PromptSRC (cfg node ``TRAINER.PROMPTSRC``).

    Logs ``loss_ce``, ``loss_scl_text``, ``loss_scl_image``, ``loss_kl`` (weighted, summing to ``loss``).
    """

    CFG_NODE = "PROMPTSRC"
    MODEL_NAME = "VLPromptLearner"

    @classmethod
    def extend_cfg(cls, cfg):
        add_trainer_node(cfg, "PROMPTSRC", PROMPTSRC_DEFAULTS)

    def build_clip_model(self, clip_model, classnames):
        return PromptSRCModel(clip_model, classnames, self.node, key_prefix=f"TRAINER.{self.CFG_NODE}")

    def compute_losses(self, images, labels):
        out = self.model.forward_train(images)
        losses = {"loss_ce": F.cross_entropy(out["logits"], labels)}
        losses.update(promptsrc_consistency_losses(
            out["text_features"], out["image_features"], out["logits"], out["teacher_text_features"],
            out["teacher_image_features"], out["teacher_logits"], self.node.TEXT_LOSS_WEIGHT,
            self.node.IMAGE_LOSS_WEIGHT,
        ))
        return out["logits"], losses
