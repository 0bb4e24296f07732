"""CoOp (Zhou et al., IJCV'22): learnable text context in front of (or around) the class name.

The context and its model are ``dpl.prompting.coop``; this trainer trains them with cross-entropy only.
"""
from dpl.engine import TRAINER_REGISTRY
from dpl.prompting import COOP_DEFAULTS, ClipPromptTrainer, ContextSettings, CoOpModel, add_trainer_node


@TRAINER_REGISTRY.register()
class CoOp(ClipPromptTrainer):
    """Context Optimization (cfg node ``TRAINER.COOP``)."""

    CFG_NODE = "COOP"
    MODEL_NAME = "prompt_learner"
    SETTINGS = ContextSettings

    @classmethod
    def extend_cfg(cls, cfg):
        add_trainer_node(cfg, "COOP", COOP_DEFAULTS)

    def build_clip_model(self, clip_model, classnames):
        return CoOpModel(clip_model, classnames, self.settings)
