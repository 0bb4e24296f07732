"""Zero-shot CLIP (CoOp's ``zsclip.py``): hand-crafted prompts, no training (``--eval-only``).

``ZeroshotCLIP`` uses the dataset's template from ``dpl.clip.CUSTOM_TEMPLATES``; ``ZeroshotCLIP2``
ensembles CoOp's 7 ``IMAGENET_TEMPLATES_SELECT`` plus the dataset template (except for ImageNet,
as upstream): normalised per-template features are averaged and re-normalised. The template list
is built per instance (upstream extended a class-level list in place, so templates piled up
across instances). Config: ``configs/trainers/ZeroshotCLIP/*.yaml`` (input settings, backbone and
``TRAINER.ZSCLIP.PREC``); upstream's habit of passing ``CoOp/vit_b16.yaml`` works as well (a
``TRAINER.COOP`` setting such as the ``*_ctxv1`` files' ``CTX_INIT`` is ignored with a note in the log).
"""
from dpl.clip import IMAGENET_TEMPLATES_SELECT, dataset_template
from dpl.engine import TRAINER_REGISTRY
from dpl.engine.errors import UserError
from dpl.prompting import ClipPromptModel, ClipPromptTrainer, add_trainer_node

ZSCLIP_DEFAULTS = dict(PREC="fp16")


class ZeroShotModel(ClipPromptModel):
    """Frozen CLIP with fixed class text features ``text_features`` [C, D] (a non-persistent buffer)."""

    FROZEN_IMAGE_FEATURES = True

    def __init__(self, clip_model, classnames, templates):
        super().__init__(clip_model)
        self.templates = list(templates)
        features = self.frozen_class_text_features(classnames, self.templates, normalize_each=True)
        self.register_buffer("text_features", features, persistent=False)

    def encode_text(self):
        return self.text_features


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(ClipPromptTrainer):
    """CLIP with the dataset's hand-crafted prompt (cfg node ``TRAINER.ZSCLIP``: ``PREC``)."""

    CFG_NODE = "ZSCLIP"
    TRAINING_FREE = True  # CoOp's zeroshot.sh passes CoOp's YAML files: their TRAINER.COOP keys are a note

    @classmethod
    def extend_cfg(cls, cfg):
        add_trainer_node(cfg, "ZSCLIP", ZSCLIP_DEFAULTS)

    def templates(self):
        return [dataset_template(self.cfg.DATASET.NAME)]

    def build_clip_model(self, clip_model, classnames):
        templates = self.templates()
        print(f"Prompt templates: {templates}")
        return ZeroShotModel(clip_model, classnames, templates)

    def forward_backward(self, batch):
        raise UserError(f"{type(self).__name__} has nothing to train: run it with --eval-only")


@TRAINER_REGISTRY.register()
class ZeroshotCLIP2(ZeroshotCLIP):
    """Zero-shot CLIP with an ensemble of CoOp's 7 selected ImageNet templates (+ the dataset template)."""

    def templates(self):
        templates = list(IMAGENET_TEMPLATES_SELECT)
        if self.cfg.DATASET.NAME != "ImageNet":
            templates.append(dataset_template(self.cfg.DATASET.NAME))
        return templates
