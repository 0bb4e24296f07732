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
import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from dpl.clip import PROMPTSRC_TEMPLATES, clip_architecture, dataset_template
from dpl.drople import (RESIDUAL_DENOMINATORS, AlignmentGuidance, TokenDropout, TokenDropoutHook, mag_alignment_loss,
                        residual_entropies, residual_entropy_loss, residual_lambda)
from dpl.engine import TRAINER_REGISTRY
from dpl.engine.errors import UserError
from dpl.prompting import (DeepPromptSettings, GPASettings, PromptSRCModel, SelfRegulatingTrainer, add_trainer_node,
                           promptsrc_consistency_losses, require)

DPL_DEFAULTS = dict(
    # IVLP prompts (base-to-novel: depth 9/9 as PromptSRC; the official code's vision depth is 6)
    N_CTX_TEXT=4,
    N_CTX_VISION=4,
    CTX_INIT="a photo of a",
    PROMPT_DEPTH_TEXT=9,
    PROMPT_DEPTH_VISION=9,
    PREC="fp16",
    PROMPT_INIT="normal",  # normal (N(0, 0.02^2), IVLP/PromptSRC) | kaiming_uniform (the official code's, a = sqrt(5))
    LEARNABLE_LOGIT_SCALE=False,  # True: the official code's learnable scale (from CLIP's ln 100, clamped to <= ln 100)
    # Importance-weighted token dropout
    IMPORTANCE="full",  # full | no_self | no_cls | no_mag | uniform (fixed rate UNIFORM_P, no importance)
    PERTURBATION="gaussian",  # gaussian (x * (1 + SIGMA * eps), official) | zero (inverted dropout) | none
    SIGMA=0.03,
    P_MIN=0.1,
    P_MAX=0.5,
    UNIFORM_P=0.3,  # midpoint of [P_MIN, P_MAX]: the same mean rate without importance
    # after_prompts: a block's output is perturbed once the next layer's prompts are in place (noise on the prompts
    # too) | before_prompts: the official order, the next prompts overwrite the perturbed prompt positions
    PERTURB_ORDER="after_prompts",
    DROP_LAYERS_TEXT=(),  # layers after which text tokens are perturbed; () = the prompted layers, ["none"] = none
    DROP_LAYERS_VISION=(),
    # Multimodal alignment guidance
    MAG_TOKENS=64,
    MAG_TEMPERATURE=1.0,
    MAG_WEIGHT=30.0,
    MAG_DETACH=False,  # True: the MAG loss trains only the MAG module, not the prompts
    MAG_INIT_A=0.0,  # kaiming_uniform_'s a for the bridge tokens; the official code's is sqrt(5) = 2.2360679774997896
    # Residual entropy
    RES_WEIGHT=0.05,
    RES_LAMBDA=0.1,
    RES_LAMBDA_FIXED=False,
    RES_DENOMINATOR="one_minus_lambda",  # or "official": divide by 0.999 whenever lambda < 1e-3 (epoch 0)
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
PROMPT_INITS = ("normal", "kaiming_uniform")
PERTURB_ORDERS = ("after_prompts", "before_prompts")
LOGIT_SCALE_MAX = math.log(100.0)  # the official learnable scale's upper clamp (before exp), also OpenAI CLIP's value
LOSS_WEIGHTS = ("mag_weight", "res_weight", "text_loss_weight", "image_loss_weight", "kl_weight", "res_lambda")
# PromptSRC's consistency terms under the names this method has always logged.
CONSISTENCY_LOG_NAMES = {"loss_scl_text": "loss_text", "loss_scl_image": "loss_img", "loss_kl": "loss_kl"}


@dataclass(frozen=True)
class DropoutPromptSettings:
    """``TRAINER.DPL``, validated once (field = key in lower case; ``dropout`` holds IMPORTANCE,
    PERTURBATION, P_MIN, P_MAX, SIGMA, UNIFORM_P; ``gpa`` is None unless ``GPA``)."""

    prompts: DeepPromptSettings
    dropout: TokenDropout
    drop_layers_text: tuple
    drop_layers_vision: tuple
    mag_tokens: int
    mag_temperature: float
    mag_weight: float
    mag_detach: bool
    mag_init_a: float
    res_weight: float
    res_lambda: float
    res_lambda_fixed: bool
    res_denominator: str
    perturb_order: str
    prompt_init: str
    learnable_logit_scale: bool
    text_loss_weight: float
    image_loss_weight: float
    kl_weight: float
    teacher_templates: str
    label_smoothing: float
    gpa: Optional[GPASettings]

    def __post_init__(self):
        for field in LOSS_WEIGHTS:
            require(getattr(self, field) >= 0, field, "it must be >= 0")
        require(self.teacher_templates in TEACHER_TEMPLATE_CHOICES, "teacher_templates",
                f"use one of {list(TEACHER_TEMPLATE_CHOICES)}")
        require(0 <= self.label_smoothing < 1, "label_smoothing", "use a value in [0, 1)")
        require(self.res_denominator in RESIDUAL_DENOMINATORS, "res_denominator",
                f"use one of {list(RESIDUAL_DENOMINATORS)}")
        require(self.prompt_init in PROMPT_INITS, "prompt_init", f"use one of {list(PROMPT_INITS)}")
        require(self.perturb_order in PERTURB_ORDERS, "perturb_order", f"use one of {list(PERTURB_ORDERS)}")
        require(self.mag_init_a >= 0, "mag_init_a", "it must be >= 0")
        uses_mag = self.mag_weight > 0 or self.dropout.needs_alignment
        require(self.mag_tokens >= 1 or not uses_mag, "mag_tokens",
                "alignment guidance needs at least one bridge token (or MAG_WEIGHT 0 and an IMPORTANCE without MAG)")

    @classmethod
    def from_node(cls, node):
        dropout = TokenDropout(importance=node.IMPORTANCE, perturbation=node.PERTURBATION, p_min=node.P_MIN,
                               p_max=node.P_MAX, sigma=node.SIGMA, uniform_p=node.UNIFORM_P)
        return cls(
            prompts=DeepPromptSettings.from_node(node), dropout=dropout,
            drop_layers_text=tuple(node.DROP_LAYERS_TEXT), drop_layers_vision=tuple(node.DROP_LAYERS_VISION),
            mag_tokens=node.MAG_TOKENS, mag_temperature=node.MAG_TEMPERATURE, mag_weight=node.MAG_WEIGHT,
            mag_detach=bool(node.MAG_DETACH), mag_init_a=float(node.MAG_INIT_A), res_weight=node.RES_WEIGHT,
            res_lambda=node.RES_LAMBDA, res_lambda_fixed=bool(node.RES_LAMBDA_FIXED),
            res_denominator=node.RES_DENOMINATOR, perturb_order=node.PERTURB_ORDER, prompt_init=node.PROMPT_INIT,
            learnable_logit_scale=bool(node.LEARNABLE_LOGIT_SCALE), text_loss_weight=node.TEXT_LOSS_WEIGHT,
            image_loss_weight=node.IMAGE_LOSS_WEIGHT, kl_weight=node.KL_WEIGHT,
            teacher_templates=node.TEACHER_TEMPLATES, label_smoothing=node.LABEL_SMOOTHING,
            gpa=GPASettings.from_node(node) if node.GPA else None,
        )


def resolve_layers(requested, prompted_depth, num_layers, field):
    """The layer indices of ``requested``: empty = the prompted layers ``0 .. prompted_depth - 1``,
    ``["none"]`` = no layer (e.g. dropout in one modality only), else layer indices of this backbone.
    A bad list is a ``SettingError`` of ``field``."""
    requested = list(requested)
    if not requested:
        return frozenset(range(prompted_depth))
    if [str(layer).lower() for layer in requested] == ["none"]:
        return frozenset()
    require(all(isinstance(layer, int) and not isinstance(layer, bool) for layer in requested), field,
            "give layer indices (e.g. [0, 1, 2]), [] or ['none']")
    bad = [layer for layer in requested if not 0 <= layer < num_layers]
    require(not bad, field, f"layers {bad} are outside 0..{num_layers - 1} of this backbone")
    return frozenset(requested)


class DropoutPromptModel(PromptSRCModel):
    """PromptSRC model + the MAG module and token dropout; ``forward_train`` perturbs tokens (training only).

    ``settings``: ``DropoutPromptSettings`` whose prompts are fitted to this CLIP.
    """

    def __init__(self, clip_model, classnames, settings, templates):
        super().__init__(clip_model, classnames, settings.prompts, templates=templates)
        if not self.arch.is_vit:
            raise UserError("DropoutPrompt drops tokens inside a ViT: set MODEL.BACKBONE.NAME to e.g. ViT-B/16")
        learner = self.prompt_learner
        depth_text = 1 + (0 if learner.deep_text is None else learner.deep_text.shape[0])
        depth_vision = 0 if learner.vision is None else learner.vision.shape[0]
        self.dropout = settings.dropout
        self.drop_layers_text = resolve_layers(settings.drop_layers_text, depth_text, self.arch.text_layers,
                                               "drop_layers_text")
        self.drop_layers_vision = resolve_layers(settings.drop_layers_vision, depth_vision, self.arch.vision_layers,
                                                 "drop_layers_vision")
        # The alignment loss pairs vision layer l with text layer l for l < min(prompted depths).
        self.mag_layers = frozenset(range(min(depth_text, depth_vision))) if settings.mag_weight > 0 else frozenset()
        require(settings.mag_weight == 0 or self.mag_layers, "mag_weight",
                "MAG pairs prompted vision and text layers, but PROMPT_DEPTH_VISION/N_CTX_VISION leave none: "
                "set MAG_WEIGHT 0 or add vision prompts")
        self.detach_mag = settings.mag_detach
        self.hooks_before_prompts = settings.perturb_order == "before_prompts"
        self.mag = None
        if self.mag_layers or self.dropout.needs_alignment:
            self.mag = AlignmentGuidance(settings.mag_tokens, self.arch.vision_width, self.arch.text_width,
                                         settings.mag_temperature, settings.mag_init_a)
            self.mag.to(clip_model.text_projection.device)
        if settings.prompt_init == "kaiming_uniform":
            kaiming_uniform_prompts(learner)
        # the official code's learnable scale (log space, fp32), starting at CLIP's own (ln 100 for OpenAI's
        # weights, the official init; a pocket or test CLIP keeps its smaller one); None: frozen CLIP's
        self.log_logit_scale = None
        if settings.learnable_logit_scale:
            start = clip_model.logit_scale.detach().float().clamp(max=LOGIT_SCALE_MAX)
            self.log_logit_scale = nn.Parameter(start.clone())

    @property
    def logit_scale(self):
        """The student's scale: the learnable one clamped to <= 100 (official), else frozen CLIP's."""
        if self.log_logit_scale is None:
            return self.frozen_logit_scale
        return self.log_logit_scale.clamp(max=LOGIT_SCALE_MAX).exp()

    def make_hooks(self):
        """(text hook, vision hook) for one training forward pass; (None, None) in eval mode."""
        if not self.training:
            return None, None

        def hook(drop_layers):
            return TokenDropoutHook(self.dropout, drop_layers, self.mag, self.mag_layers, self.detach_mag,
                                    before_prompts=self.hooks_before_prompts)

        return hook(self.drop_layers_text), hook(self.drop_layers_vision)

    def forward_train(self, images, **teacher_inputs):
        """PromptSRC's student/teacher outputs under token dropout (``teacher_inputs``: see ``PromptSRCModel``), plus
        ``vision_mag_features`` and ``text_mag_features``: the MAG features per MAG layer ([B, K, D] / [C, K, D];
        empty in eval mode)."""
        text_hook, vision_hook = self.make_hooks()
        out = super().forward_train(images, text_hook=text_hook, vision_hook=vision_hook, **teacher_inputs)
        out["vision_mag_features"] = vision_hook.mag_features if vision_hook else []
        out["text_mag_features"] = text_hook.mag_features if text_hook else []
        return out


@torch.no_grad()
def kaiming_uniform_prompts(learner):
    """The official code's deep prompt init, ``kaiming_uniform_(a=sqrt(5))`` of its tensors: each text layer's
    ``[n_ctx, width]`` (bound 1/sqrt(width): 0.044 at 512) and the vision prompts' ``[depth, n_ctx, width]`` as one
    tensor (bound 1/sqrt(n_ctx * width): 0.018 at 4 x 768). The layer-0 text context keeps CTX_INIT's words."""
    if learner.deep_text is not None:
        for layer in learner.deep_text:
            nn.init.kaiming_uniform_(layer, a=math.sqrt(5))
    if learner.vision is not None:
        nn.init.kaiming_uniform_(learner.vision, a=math.sqrt(5))


@TRAINER_REGISTRY.register()
class DropoutPrompt(SelfRegulatingTrainer):
    """Dropout Prompt Learning (cfg node ``TRAINER.DPL``)."""

    CFG_NODE = "DPL"
    MODEL_NAME = "VLPromptLearner"
    SETTINGS = DropoutPromptSettings

    @classmethod
    def extend_cfg(cls, cfg):
        add_trainer_node(cfg, "DPL", DPL_DEFAULTS)

    def build_clip_model(self, clip_model, classnames):
        settings = self.settings
        if settings.teacher_templates == "dataset":
            templates = [dataset_template(self.cfg.DATASET.NAME)]
        else:
            templates = PROMPTSRC_TEMPLATES
        prompts = settings.prompts.fitted_to(clip_architecture(clip_model), self.node_name)
        return DropoutPromptModel(clip_model, classnames, dataclasses.replace(settings, prompts=prompts), templates)

    # --- the training step
    def residual_lambda(self):
        """lambda of the current (0-based) epoch; a function of the epoch only, so resume recomputes it."""
        settings = self.settings
        return residual_lambda(self.epoch, self.max_epoch, settings.res_lambda, settings.res_lambda_fixed)

    def compute_losses(self, images, labels, **teacher_inputs):
        settings, model = self.settings, self.model
        out = model.forward_train(images, **teacher_inputs)
        text, image, logits = out["text_features"], out["image_features"], out["logits"]
        entropy_v, entropy_t = residual_entropies(image, out["teacher_image_features"], text,
                                                  out["teacher_text_features"], model.logit_scale,
                                                  self.residual_lambda(), settings.res_denominator)
        consistency = promptsrc_consistency_losses(
            text, image, logits, out["teacher_text_features"], out["teacher_image_features"], out["teacher_logits"],
            settings.text_loss_weight, settings.image_loss_weight, settings.kl_weight)
        losses = {"loss_ce": F.cross_entropy(logits.float(), labels, label_smoothing=settings.label_smoothing)}
        losses.update({CONSISTENCY_LOG_NAMES[name]: value for name, value in consistency.items()})
        losses["loss_re"] = residual_entropy_loss(entropy_v, entropy_t, settings.res_weight)
        if model.mag_layers:
            losses["loss_mag"] = settings.mag_weight * mag_alignment_loss(
                out["vision_mag_features"], out["text_mag_features"], labels)
        else:  # MAG_WEIGHT 0: still logged, so every run has the same columns
            losses["loss_mag"] = logits.new_zeros(())
        return logits, losses

    def forward_backward(self, batch):
        summary = super().forward_backward(batch)
        summary["lambda"] = self.residual_lambda()
        return summary
