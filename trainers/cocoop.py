"""CoCoOp (Zhou et al., CVPR'22): conditional context optimization, CoOp's context shifted per image.

The conditional prompt learner (context + meta-network) and its model are ``dpl.prompting.cocoop``; this
trainer trains them with cross-entropy only. Evaluation encodes the class prompts of every test image
(its own context), so it costs ``C`` text encodings per image instead of ``C`` per ``test()`` call.
"""
from dpl.engine import TRAINER_REGISTRY
from dpl.prompting import COCOOP_DEFAULTS, ClipPromptTrainer, CoCoOpModel, CoCoOpSettings, add_trainer_node


@TRAINER_REGISTRY.register()
class CoCoOp(ClipPromptTrainer):
    """Conditional Context Optimization (cfg node ``TRAINER.COCOOP``)."""

    CFG_NODE = "COCOOP"
    MODEL_NAME = "prompt_learner"
    SETTINGS = CoCoOpSettings

    @classmethod
    def extend_cfg(cls, cfg):
        add_trainer_node(cfg, "COCOOP", COCOOP_DEFAULTS)

    def build_clip_model(self, clip_model, classnames):
        return CoCoOpModel(clip_model, classnames, self.settings)
