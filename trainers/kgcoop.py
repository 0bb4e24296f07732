"""KgCoOp (Yao et al., CVPR'23): CoOp plus knowledge-guided context optimization.

``L = CE + W * (1 - mean_c cos(w_c, w_c^clip))`` with ``w_c`` the learned class text feature and
``w_c^clip`` the frozen CLIP feature of the dataset's hand-crafted template (the one
``dpl.clip.CUSTOM_TEMPLATES`` table; upstream KgCoOp kept its own table, e.g. DTD
"a photo of a {}, a type of texture."). Differences from upstream, on purpose: its own
``TRAINER.KGCOOP`` node; ``CTX_INIT`` is a string and honoured (upstream always used "a photo of a");
``CSC`` and ``CLASS_TOKEN_POSITION`` work as in CoOp; ``W`` defaults to 8.0, the value of every
published KgCoOp run (upstream's code default is 1.0 but its scripts pass 8.0); the teacher features
come from the same frozen CLIP (no second copy) and are a non-persistent buffer.

Upstream KgCoOp's YAML files and scripts set ``TRAINER.COOP.*`` (``CTX_INIT: True``, ``W 8.0``): a value
set there is read as if set on ``TRAINER.KGCOOP`` (``UPSTREAM_ALIASES``), with KgCoOp's meaning of a bool
``CTX_INIT`` (``dpl.config.upstream``).
"""
from dataclasses import dataclass

import torch.nn.functional as F

from dpl.clip import dataset_template
from dpl.engine import TRAINER_REGISTRY
from dpl.prompting import COOP_DEFAULTS, ClipPromptTrainer, ContextSettings, CoOpModel, add_trainer_node, require

KGCOOP_DEFAULTS = dict(COOP_DEFAULTS, W=8.0)
COSINE_EPS = 1e-07
# Upstream KgCoOp's configs and scripts put its settings on TRAINER.COOP (with its default W 1.0); a value they
# set is read as ours (dpl.engine.build.adopt_upstream_settings).
UPSTREAM_KEYS = ("N_CTX", "CSC", "CTX_INIT", "PREC", "CLASS_TOKEN_POSITION", "W")


def knowledge_guidance_loss(text_features, frozen_text_features):
    """``1 - mean_c cos(w_c, w_c^clip)`` over the class axis of two ``[C, D]`` feature sets (unweighted)."""
    cosine = F.cosine_similarity(text_features.float(), frozen_text_features.float(), dim=-1, eps=COSINE_EPS)
    return 1.0 - cosine.mean()


@dataclass(frozen=True)
class KgCoOpSettings:
    """``TRAINER.KGCOOP``: CoOp's context settings and the weight ``W`` of the knowledge-guidance loss."""

    context: ContextSettings
    w: float = 8.0

    def __post_init__(self):
        require(self.w >= 0, "w", "the loss weight must be >= 0")

    @classmethod
    def from_node(cls, node):
        return cls(context=ContextSettings.from_node(node), w=node.W)


class KgCoOpModel(CoOpModel):
    """CoOp's model plus ``frozen_text_features`` [C, D] (normalised, hand-crafted template, not checkpointed)."""

    def __init__(self, clip_model, classnames, settings, template):
        super().__init__(clip_model, classnames, settings)
        frozen = self.frozen_class_text_features(classnames, [template])
        self.register_buffer("frozen_text_features", frozen, persistent=False)


@TRAINER_REGISTRY.register()
class KgCoOp(ClipPromptTrainer):
    """Knowledge-guided Context Optimization (cfg node ``TRAINER.KGCOOP``); logs ``loss_ce`` and ``loss_kg``."""

    CFG_NODE = "KGCOOP"
    MODEL_NAME = "prompt_learner"
    SETTINGS = KgCoOpSettings
    UPSTREAM_ALIASES = {f"TRAINER.COOP.{key}": f"TRAINER.KGCOOP.{key}" for key in UPSTREAM_KEYS}

    @classmethod
    def extend_cfg(cls, cfg):
        add_trainer_node(cfg, "KGCOOP", KGCOOP_DEFAULTS)

    def build_clip_model(self, clip_model, classnames):
        template = dataset_template(self.cfg.DATASET.NAME)
        print(f'KgCoOp teacher template: "{template}"')
        return KgCoOpModel(clip_model, classnames, self.settings.context, template)

    def compute_losses(self, images, labels):
        text_features = self.model.encode_text()
        logits = self.model(images, text_features=text_features)
        loss_kg = knowledge_guidance_loss(text_features, self.model.frozen_text_features)
        return logits, {
            "loss_ce": F.cross_entropy(logits.float(), labels),
            "loss_kg": float(self.settings.w) * loss_kg,
        }
