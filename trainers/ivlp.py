"""IVLP: independent vision-language deep prompts trained with cross-entropy only.

The prompts and their model are ``dpl.prompting.ivlp`` (the base of PromptSRC and DropoutPrompt too).
"""
from dpl.engine import TRAINER_REGISTRY
from dpl.clip import clip_architecture
from dpl.prompting import ClipPromptTrainer, DeepPromptSettings, IVLPModel, add_trainer_node

IVLP_DEFAULTS = dict(
    N_CTX_VISION=2, N_CTX_TEXT=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH_VISION=9, PROMPT_DEPTH_TEXT=9
)


@TRAINER_REGISTRY.register()
class IVLP(ClipPromptTrainer):
    """Independent V-L prompting, cross-entropy only (cfg node ``TRAINER.IVLP``)."""

    CFG_NODE = "IVLP"
    MODEL_NAME = "VLPromptLearner"
    SETTINGS = DeepPromptSettings

    @classmethod
    def extend_cfg(cls, cfg):
        add_trainer_node(cfg, "IVLP", IVLP_DEFAULTS)

    def build_clip_model(self, clip_model, classnames):
        prompts = self.settings.fitted_to(clip_architecture(clip_model), self.node_name)
        return IVLPModel(clip_model, classnames, prompts)
