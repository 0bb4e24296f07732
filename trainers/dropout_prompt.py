"""DropoutPrompt: Dropout Prompt Learning (DroPLe, Chen et al. 2025, arXiv 2512.07234), CLIP only.

Built on the PromptSRC/IVLP base (independent text and vision deep prompts, frozen-CLIP teachers).
During training only, tokens inside both prompted encoders are perturbed after the configured layers,
with a per-token probability that falls with the token's importance (global-token attention, maximal
self-attention to other tokens, attention from K learnable bridge tokens). The loss per step is

    CE + TEXT_LOSS_WEIGHT * L1_text + IMAGE_LOSS_WEIGHT * L1_image + KL_WEIGHT * KL
       - RES_WEIGHT * (H_v + H_t) + MAG_WEIGHT * L_MAG

logged as ``loss_ce``, ``loss_text``, ``loss_img``, ``loss_kl``, ``loss_re``, ``loss_mag`` (each the
weighted term, so ``loss`` is their sum) and ``lambda``. Inference is the plain prompted model.
The method's components are ``dpl.drople``; ``docs/METHOD.md`` is the
specification (official code: AdamW 2e-4; the shipped configs use PromptSRC's SGD recipe, see the YAML).
"""
import torch.nn.functional as F

from dpl.clip import PROMPTSRC_TEMPLATES, dataset_template
from dpl.engine import TRAINER_REGISTRY
from dpl.engine.errors import UserError
from dpl.drople import (AlignmentGuidance, TokenDropout, TokenDropoutHook, mag_alignment_loss, residual_entropies,
                        residual_entropy_loss, residual_lambda)
from dpl.prompting import PromptSRCModel, SelfRegulatingTrainer, add_trainer_node, kl_to_teacher, l1_consistency

DPL_DEFAULTS = dict(
    # IVLP prompts (base-to-novel: depth 9/9 as PromptSRC; the official code's vision depth is 6)
    N_CTX_TEXT=4,
    N_CTX_VISION=4,
    CTX_INIT="a photo of a",
    PROMPT_DEPTH_TEXT=9,
    PROMPT_DEPTH_VISION=9,
    PREC="fp16",
    # Importance-weighted token dropout
    IMPORTANCE="full",  # full | no_self | no_cls | no_mag | uniform (fixed rate UNIFORM_P, no importance)
    PERTURBATION="gaussian",  # gaussian (x * (1 + SIGMA * eps), official) | zero (inverted dropout) | none
    SIGMA=0.03,
    P_MIN=0.1,
    P_MAX=0.5,
    UNIFORM_P=0.3,  # midpoint of [P_MIN, P_MAX]: the same mean rate without importance
    DROP_LAYERS_TEXT=(),  # layers after which text tokens are perturbed; () = the prompted layers, ["none"] = none
    DROP_LAYERS_VISION=(),
    # Multimodal alignment guidance
    MAG_TOKENS=64,
    MAG_TEMPERATURE=1.0,
    MAG_WEIGHT=30.0,
    MAG_DETACH=False,  # True: the MAG loss trains only the MAG module, not the prompts
    # Residual entropy
    RES_WEIGHT=0.05,
    RES_LAMBDA=0.1,
    RES_LAMBDA_FIXED=False,
    # Self-consistency with the frozen CLIP (official weights; PromptSRC's KL weight is 1)
    TEXT_LOSS_WEIGHT=25.0,
    IMAGE_LOSS_WEIGHT=10.0,
    KL_WEIGHT=2.5,
    TEACHER_TEMPLATES="promptsrc",  # promptsrc (60-template mean) | dataset (DATASET.NAME's hand template)
    LABEL_SMOOTHING=0.0,
    # Gaussian prompt aggregation as PromptSRC's (not part of DroPLe: off by default)
    GPA=False,
    GPA_MEAN=15.0,
    GPA_STD=1.0,
)
TEACHER_TEMPLATE_CHOICES = ("promptsrc", "dataset")


def token_dropout_from(node):
    """``TokenDropout`` settings of a ``TRAINER.DPL`` node."""
    return TokenDropout(
        importance=node.IMPORTANCE, perturbation=node.PERTURBATION, p_min=node.P_MIN, p_max=node.P_MAX,
        sigma=node.SIGMA, uniform_p=node.UNIFORM_P,
    )


def resolve_layers(requested, prompted_depth, num_layers, key):
    """The layer indices of ``requested``: empty = the prompted layers ``0 .. prompted_depth - 1``,
    ``["none"]`` = no layer (e.g. dropout in one modality only), else layer indices of this backbone."""
    requested = list(requested)
    if not requested:
        return frozenset(range(prompted_depth))
    if [str(layer).lower() for layer in requested] == ["none"]:
        return frozenset()
    if not all(isinstance(layer, int) and not isinstance(layer, bool) for layer in requested):
        raise UserError(f"{key} = {requested}: give layer indices (e.g. [0, 1, 2]), [] or ['none']")
    bad = [layer for layer in requested if not 0 <= layer < num_layers]
    if bad:
        raise UserError(f"{key} = {requested} has layers {bad} outside 0..{num_layers - 1} of this backbone")
    return frozenset(requested)


class DropoutPromptModel(PromptSRCModel):
    """PromptSRC model + the MAG module and the token-dropout settings; ``make_hooks()`` for a training step."""

    def __init__(self, clip_model, classnames, node, templates, key_prefix="TRAINER.DPL"):
        super().__init__(clip_model, classnames, node, key_prefix, templates=templates)
        if not self.arch.is_vit:
            raise UserError("DropoutPrompt drops tokens inside a ViT: set MODEL.BACKBONE.NAME to e.g. ViT-B/16")
        learner = self.prompt_learner
        depth_text = 1 + (0 if learner.deep_text is None else learner.deep_text.shape[0])
        depth_vision = 0 if learner.vision is None else learner.vision.shape[0]
        self.dropout = token_dropout_from(node)
        self.drop_layers_text = resolve_layers(
            node.DROP_LAYERS_TEXT, depth_text, self.arch.text_layers, f"{key_prefix}.DROP_LAYERS_TEXT")
        self.drop_layers_vision = resolve_layers(
            node.DROP_LAYERS_VISION, depth_vision, self.arch.vision_layers, f"{key_prefix}.DROP_LAYERS_VISION")
        # The alignment loss pairs vision layer l with text layer l for l < min(prompted depths).
        self.mag_layers = frozenset(range(min(depth_text, depth_vision))) if node.MAG_WEIGHT > 0 else frozenset()
        if node.MAG_WEIGHT > 0 and not self.mag_layers:
            raise UserError(f"{key_prefix}.MAG_WEIGHT > 0 pairs prompted vision and text layers, but "
                            f"PROMPT_DEPTH_VISION/N_CTX_VISION leave none: set MAG_WEIGHT 0 or add vision prompts")
        self.detach_mag = bool(node.MAG_DETACH)
        self.mag = None
        if self.mag_layers or self.dropout.needs_alignment:
            self.mag = AlignmentGuidance(node.MAG_TOKENS, self.arch.vision_width, self.arch.text_width,
                                         node.MAG_TEMPERATURE).to(clip_model.text_projection.device)

    def make_hooks(self):
        """(text hook, vision hook) for one training forward pass; (None, None) in eval mode."""
        if not self.training:
            return None, None

        def hook(drop_layers):
            return TokenDropoutHook(self.dropout, drop_layers, self.mag, self.mag_layers, self.detach_mag)

        return hook(self.drop_layers_text), hook(self.drop_layers_vision)


@TRAINER_REGISTRY.register()
class DropoutPrompt(SelfRegulatingTrainer):
    """Dropout Prompt Learning (cfg node ``TRAINER.DPL``)."""

    CFG_NODE = "DPL"
    MODEL_NAME = "VLPromptLearner"

    @classmethod
    def extend_cfg(cls, cfg):
        add_trainer_node(cfg, "DPL", DPL_DEFAULTS)

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        node = self.node_of(cfg)
        if node.TEACHER_TEMPLATES not in TEACHER_TEMPLATE_CHOICES:
            raise UserError(f"TRAINER.DPL.TEACHER_TEMPLATES is {node.TEACHER_TEMPLATES!r}; "
                            f"use one of {list(TEACHER_TEMPLATE_CHOICES)}")
        try:
            token_dropout_from(node)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
        for key in ("MAG_WEIGHT", "RES_WEIGHT", "TEXT_LOSS_WEIGHT", "IMAGE_LOSS_WEIGHT", "KL_WEIGHT", "RES_LAMBDA"):
            if node[key] < 0:
                raise UserError(f"TRAINER.DPL.{key} is {node[key]}; it must be >= 0")
        if not 0 <= node.LABEL_SMOOTHING < 1:
            raise UserError(f"TRAINER.DPL.LABEL_SMOOTHING is {node.LABEL_SMOOTHING}; use a value in [0, 1)")

    def build_clip_model(self, clip_model, classnames):
        node = self.node
        if node.TEACHER_TEMPLATES == "dataset":
            templates = [dataset_template(self.cfg.DATASET.NAME)]
        else:
            templates = PROMPTSRC_TEMPLATES
        return DropoutPromptModel(clip_model, classnames, node, templates, key_prefix=f"TRAINER.{self.CFG_NODE}")

    def build_gpa(self):
        return super().build_gpa() if self.node.GPA else None  # DroPLe has no GPA; PromptSRC's is optional here

    # --- the training step
    def residual_lambda(self):
        """lambda of the current (0-based) epoch; a function of the epoch only, so resume recomputes it."""
        node = self.node
        return residual_lambda(self.epoch, self.max_epoch, node.RES_LAMBDA, node.RES_LAMBDA_FIXED)

    def compute_losses(self, images, labels):
        node, model = self.node, self.model
        text_hook, vision_hook = model.make_hooks()
        out = model.forward_train(images, text_hook=text_hook, vision_hook=vision_hook)
        text, image, logits = out["text_features"], out["image_features"], out["logits"]
        teacher_text, teacher_image = out["teacher_text_features"], out["teacher_image_features"]
        lam = self.residual_lambda()
        entropy_v, entropy_t = residual_entropies(image, teacher_image, text, teacher_text, model.logit_scale, lam)
        losses = {
            "loss_ce": F.cross_entropy(logits.float(), labels, label_smoothing=node.LABEL_SMOOTHING),
            "loss_text": node.TEXT_LOSS_WEIGHT * l1_consistency(text, teacher_text),
            "loss_img": node.IMAGE_LOSS_WEIGHT * l1_consistency(image, teacher_image),
            "loss_kl": node.KL_WEIGHT * kl_to_teacher(logits, out["teacher_logits"]),
            "loss_re": residual_entropy_loss(entropy_v, entropy_t, node.RES_WEIGHT),
        }
        if model.mag_layers:
            losses["loss_mag"] = node.MAG_WEIGHT * mag_alignment_loss(
                vision_hook.mag_features, text_hook.mag_features, labels)
        else:  # MAG_WEIGHT 0: still logged, so every run has the same columns
            losses["loss_mag"] = logits.new_zeros(())
        self._last_lambda = lam
        return logits, losses

    def forward_backward(self, batch):
        summary = super().forward_backward(batch)
        summary["lambda"] = self._last_lambda
        return summary
