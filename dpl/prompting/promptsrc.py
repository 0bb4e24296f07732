"""PromptSRC's building blocks (Khattak et al., ICCV'23): self-regulating losses and Gaussian prompt aggregation.

Per step, with ``txt_f``/``img_f`` the normalised prompted features and ``logits = s * img_f @ txt_f^T``:
``TEXT_LOSS_WEIGHT * mean|txt_f - t^zs| + IMAGE_LOSS_WEIGHT * mean|img_f - i^zs| + L_KL`` on top of CE,
``t^zs`` the normalised mean of the frozen text features over the 60 PromptSRC templates
(a non-persistent buffer), ``i^zs`` the frozen image features of the same batch (prompts off, no grad),
``L_KL = sum p_zs (log p_zs - log p) / (B * C)``. Gaussian prompt aggregation (GPA) keeps
``sum_e g(e) * theta_e`` over epochs ``e = 1..MAX_EPOCH`` (``g`` = normalised pdf of
``N(GPA_MEAN, GPA_STD^2)``) for the learnable prompt tensors only, in fp32, as checkpointed trainer
state, and loads it into the prompts after the last epoch.

``SelfRegulatingTrainer`` is the trainer base of PromptSRC and DropoutPrompt: GPA through the epochs,
in the checkpoints and at resume, and the frozen image teacher's input: the student's batch, or under
``INPUT.TEACHER_VIEW clean`` its own fixed view, whose features are computed once per training image
(``TeacherFeatureCache``).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dpl.clip import PROMPTSRC_TEMPLATES
from dpl.engine.errors import UserError

from .base import ClipPromptTrainer
from .ivlp import IVLPModel
from .settings import require
from .teacher_cache import TeacherFeatureCache

GPA_LOG_LINE = "Using GPA model for final inference..."


# ----- losses ---------------------------------------------------------------------------------------
def l1_consistency(features, teacher_features):
    """Mean absolute difference of two feature sets of the same shape."""
    return F.l1_loss(features.float(), teacher_features.float(), reduction="mean")


def kl_to_teacher(logits, teacher_logits):
    """``KL(softmax(teacher) || softmax(logits))`` summed over ``[B, C]`` and divided by ``B * C``."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float(), dim=-1)
    return F.kl_div(log_p, log_p_teacher, reduction="sum", log_target=True) / logits.numel()


def promptsrc_consistency_losses(text_features, image_features, logits, teacher_text_features,
                                 teacher_image_features, teacher_logits, text_weight, image_weight, kl_weight=1.0):
    """The weighted self-regulating terms, keyed as logged: ``loss_scl_text``, ``loss_scl_image``, ``loss_kl``.

    text [C, D] and image [B, D] features normalised, logits [B, C]; teachers of the same shapes.
    """
    return {
        "loss_scl_text": text_weight * l1_consistency(text_features, teacher_text_features),
        "loss_scl_image": image_weight * l1_consistency(image_features, teacher_image_features),
        "loss_kl": kl_weight * kl_to_teacher(logits, teacher_logits),
    }


# ----- Gaussian prompt aggregation ------------------------------------------------------------------
@dataclass(frozen=True)
class GPASettings:
    """Gaussian prompt aggregation: keys ``GPA_MEAN`` and ``GPA_STD`` (epochs, 1-based)."""

    gpa_mean: float = 15.0
    gpa_std: float = 1.0

    def __post_init__(self):
        require(self.gpa_std > 0, "gpa_std", "need a positive standard deviation (in epochs)")

    @classmethod
    def from_node(cls, node):
        return cls(gpa_mean=node.GPA_MEAN, gpa_std=node.GPA_STD)


def gaussian_epoch_weights(num_epochs, mean, std):
    """``[num_epochs]`` float64: pdf of ``N(mean, std^2)`` at epochs ``1..num_epochs``, normalised to sum 1."""
    if num_epochs < 1 or std <= 0:
        raise ValueError(f"GPA needs at least one epoch and a positive std (got {num_epochs} and {std})")
    epochs = torch.arange(1, num_epochs + 1, dtype=torch.float64)
    pdf = torch.exp(-0.5 * ((epochs - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
    if pdf.sum() <= 0:  # every epoch is many std away from the mean: the pdf underflows
        raise ValueError(f"the GPA weights vanish: every one of the {num_epochs} epochs is too many stds from the mean")
    return pdf / pdf.sum()


class GaussianPromptAggregator:
    """Running ``sum_e g(e) * theta_e`` of named tensors, in fp32, with a checkpointable state.

    ``add(epoch, tensors)`` with the 0-based epoch that just ended; ``aggregate()`` the sum so far;
    ``load_into(tensors)`` copies it into the given (parameter) tensors.
    """

    def __init__(self, num_epochs, mean, std):
        self.weights = gaussian_epoch_weights(num_epochs, mean, std)
        self.sums = {}
        self.epochs = []

    def add(self, epoch, tensors):
        if not 0 <= epoch < len(self.weights):
            raise ValueError(f"epoch {epoch} is outside the {len(self.weights)} GPA epochs")
        if epoch in self.epochs:
            raise ValueError(f"epoch {epoch} was already aggregated")
        weight = float(self.weights[epoch])
        for name, tensor in tensors.items():
            value = tensor.detach().float()
            previous = self.sums.get(name)
            self.sums[name] = value * weight if previous is None else previous.to(value.device) + value * weight
        self.epochs.append(epoch)

    def aggregate(self):
        return {name: value.clone() for name, value in self.sums.items()}

    @torch.no_grad()
    def load_into(self, tensors):
        missing = sorted(set(tensors) - set(self.sums))
        if missing:
            raise ValueError(f"no aggregate for {missing}")
        for name, tensor in tensors.items():
            tensor.copy_(self.sums[name].to(device=tensor.device, dtype=tensor.dtype))

    def state_dict(self):
        return {"weights": self.weights.clone(), "sums": self.aggregate(), "epochs": list(self.epochs)}

    def load_state_dict(self, state):
        saved = state["weights"].to(self.weights)
        if saved.shape != self.weights.shape or not torch.allclose(saved, self.weights, rtol=0, atol=1e-12):
            raise UserError(
                "the checkpoint's GPA weights differ from this run's (OPTIM.MAX_EPOCH, GPA_MEAN or GPA_STD "
                "changed): resume with the settings of the interrupted run"
            )
        self.sums = {name: value.float() for name, value in state["sums"].items()}
        self.epochs = list(state["epochs"])


# ----- model and trainer base -----------------------------------------------------------------------
class PromptSRCModel(IVLPModel):
    """IVLP model + ``teacher_text_features`` [C, D] (normalised 60-template mean, not checkpointed)."""

    def __init__(self, clip_model, classnames, settings, templates=PROMPTSRC_TEMPLATES):
        super().__init__(clip_model, classnames, settings)
        teacher = self.frozen_class_text_features(classnames, templates, normalize_each=False)
        self.register_buffer("teacher_text_features", teacher, persistent=False)

    @torch.no_grad()
    def zero_shot_image_features(self, images):
        """Normalised ``[B, D]`` features of the frozen image encoder with prompts off."""
        return F.normalize(self.vision_encoder(images).float(), dim=-1)

    def forward_train(self, images, text_hook=None, vision_hook=None, teacher_images=None, teacher_image_features=None):
        """Student and teacher features/logits of one training batch (a dict of tensors). The frozen teacher
        sees ``teacher_images`` when given (``INPUT.TEACHER_VIEW clean``), else the student's ``images``;
        ``teacher_image_features`` (normalised ``[B, D]``, e.g. cached) replace that forward pass."""
        text_features = self.encode_text(hook=text_hook)  # [C, D]
        image_features = self.encode_image(images, hook=vision_hook)  # [B, D]
        if teacher_image_features is None:
            teacher_image_features = self.zero_shot_image_features(images if teacher_images is None else teacher_images)
        return {
            "text_features": text_features,
            "image_features": image_features,
            "logits": self.logits(image_features, text_features),
            "teacher_text_features": self.teacher_text_features,
            "teacher_image_features": teacher_image_features,
            "teacher_logits": self.frozen_logit_scale * teacher_image_features @ self.teacher_text_features.t(),
        }


class SelfRegulatingTrainer(ClipPromptTrainer):
    """A ``ClipPromptTrainer`` with PromptSRC's optional Gaussian prompt aggregation (not registered itself).

    Its settings hold ``gpa``: ``GPASettings``, or None to run without GPA.
    """

    def build_model(self):
        super().build_model()
        self.gpa = self.build_gpa()
        self.teacher_features = self.build_teacher_feature_cache()

    def build_teacher_feature_cache(self):
        """A ``TeacherFeatureCache`` over the training set when the teacher's view is fixed (``clean``), else None."""
        if self.cfg.INPUT.TEACHER_VIEW != "clean":
            return None
        from dpl.data.transforms.transforms import clean_view_transform  # the data stack only where a view is set
        from dpl.evaluation.feature_cache import describe_transform

        weights = getattr(self, "weights_info", None)
        key = {"weights_sha256": weights.sha256 if weights is not None else None,
               "view": describe_transform(clean_view_transform(self.cfg)), "precision": self.precision}
        print("Frozen image teacher: clean-view features are computed once per training image and reused")
        return TeacherFeatureCache(len(self.dm.dataset.train_x), key, self.device)

    def extra_train_inputs(self, batch):
        """The frozen teacher's input under ``INPUT.TEACHER_VIEW clean``: its features of each item's ``img_teacher``
        (from the cache, encoding only the images it has not seen), or the images when the batch has no ``index``."""
        if "img_teacher" not in batch:
            return {}
        images = batch["img_teacher"]
        if self.teacher_features is None or "index" not in batch:
            return {"teacher_images": images.to(self.device)}

        def encode(rows):
            rows_images = images if len(rows) == len(images) else images[rows]
            return self.model.zero_shot_image_features(rows_images.to(self.device))

        return {"teacher_image_features": self.teacher_features.lookup(batch["index"], encode)}

    def build_gpa(self):
        """The prompt aggregator of ``settings.gpa`` (None without GPA)."""
        gpa = self.settings.gpa
        if gpa is None:
            return None
        try:
            return GaussianPromptAggregator(self.max_epoch, gpa.gpa_mean, gpa.gpa_std)
        except ValueError as exc:
            raise UserError(f"{self.node_name}.GPA_MEAN {gpa.gpa_mean} / GPA_STD {gpa.gpa_std} over "
                            f"OPTIM.MAX_EPOCH {self.max_epoch}: {exc}") from None

    def gpa_tensors(self):
        """The tensors GPA aggregates: the learnable prompt parameters, named as in the checkpoint."""
        return {f"prompt_learner.{name}": p for name, p in self.model.prompt_learner.named_parameters()
                if p.requires_grad}

    def after_epoch(self):
        """Aggregate this epoch's prompts; after the last epoch use the aggregate (before it is saved)."""
        if self.gpa is not None:
            self.gpa.add(self.epoch, self.gpa_tensors())
            if self.epoch + 1 == self.max_epoch:
                print(GPA_LOG_LINE)
                self.gpa.load_into(self.gpa_tensors())
        super().after_epoch()

    def get_trainer_state(self):
        state = super().get_trainer_state()
        if self.gpa is not None:
            state["gpa"] = self.gpa.state_dict()
        if self.teacher_features is not None:
            # every process fills its own cache (the images of its shards): keep each one, as its RNG streams
            state["teacher_features"] = self.world.all_gather_objects(self.teacher_features.state_dict())
        return state

    def set_trainer_state(self, state):
        if (self.gpa is not None) != ("gpa" in state):
            saved = "with" if "gpa" in state else "without"
            raise UserError(f"the checkpoint was trained {saved} prompt aggregation (GPA): resume with the same "
                            f"setting as the run that wrote it")
        super().set_trainer_state(state)
        if self.gpa is not None:
            self.gpa.load_state_dict(state["gpa"])
        caches = state.get("teacher_features")
        if self.teacher_features is not None and caches is not None and len(caches) == self.world.size:
            self.teacher_features.load_state_dict(caches[self.world.rank])
