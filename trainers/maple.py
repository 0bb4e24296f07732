"""MaPLe (Khattak et al., CVPR'23): multi-modal prompt learning trained with cross-entropy only.

The vision prompts of every prompted layer are linear projections of that layer's text prompts; the
prompt learner and its model are ``dpl.prompting.maple``.
"""
from dpl.clip import clip_architecture
from dpl.engine import TRAINER_REGISTRY
from dpl.prompting import ClipPromptTrainer, MaPLeModel, MaPLeSettings, add_trainer_node

# Upstream's node, key for key: its YAML files and plugins that read TRAINER.MAPLE keep working.
MAPLE_DEFAULTS = dict(N_CTX=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH=9)


@TRAINER_REGISTRY.register()
class MaPLe(ClipPromptTrainer):
    """Multi-modal prompt learning, cross-entropy only (cfg node ``TRAINER.MAPLE``)."""

    CFG_NODE = "MAPLE"
    MODEL_NAME = "MultiModalPromptLearner"
    SETTINGS = MaPLeSettings

    @classmethod
    def extend_cfg(cls, cfg):
        add_trainer_node(cfg, "MAPLE", MAPLE_DEFAULTS)

    def build_clip_model(self, clip_model, classnames):
        settings = self.settings.fitted_to(clip_architecture(clip_model), self.node_name)
        return MaPLeModel(clip_model, classnames, settings)
