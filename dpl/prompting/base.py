"""What every CLIP prompt trainer shares: ``ClipPromptTrainer`` and the model pieces it builds on.

``ClipPromptModel`` holds a frozen CLIP, the prompted encoders of ``dpl.clip`` and the learnable parts
of a method. Its checkpointed state is its *learnable* tensors only (parameters with
``requires_grad`` and the persistent buffers of modules that own one); class-dependent prompt parts
and frozen references (teacher features) are non-persistent buffers, so ``.to()`` moves them and a
checkpoint trained on base classes loads into a model built for new classes.

``ClipPromptTrainer(TrainerX)`` builds CLIP (``dpl.clip.load_clip``), checks ``INPUT.SIZE``,
handles precision (``PREC`` fp32 / fp16 / amp; CPU runs fp32), optimizes and checkpoints the
learnable tensors only, logs every loss component and encodes the class text features once per
``test()`` call (the engine steps the LR schedule once per epoch). A model whose image features are
frozen CLIP's (``FROZEN_IMAGE_FEATURES``) is evaluated through the image feature cache
(``dpl.evaluation.feature_cache``): a test set's images are encoded once per sweep. A method subclasses
it and implements ``build_clip_model(clip_model, classnames)`` and, if it trains with more than
cross-entropy, ``compute_losses(images, labels)``.
"""
import contextlib
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from dpl.clip import (
    ClassPrompts,
    PromptedTextEncoder,
    PromptedVisionEncoder,
    clip_architecture,
    fill_template,
    load_clip_with_info,
    tokenize,
)
from dpl.config import CfgNode
from dpl.engine import TrainerX
from dpl.engine.errors import CheckpointMismatchError, UserError
from dpl.evaluation.feature_cache import (CACHE_HIT, CACHE_MISS, CACHE_OFF, CacheEntry, cache_folder,
                                          describe_transform, feature_description, image_entries,
                                          rows_in_split_order)
from dpl.metrics import compute_accuracy
from dpl.utils import count_num_param, load_pretrained_weights
from dpl.utils.torchtools import loader_batches

from .settings import setting_errors

PRECISIONS = ("fp16", "fp32", "amp")
FROZEN_TEXT_CHUNK = 1024  # prompts per call when encoding hand-crafted prompts


# ----- config helpers -------------------------------------------------------------------------------
def add_trainer_node(cfg, name, defaults):
    """Add ``cfg.TRAINER.<name>`` with ``defaults`` (a dict) unless it exists (idempotent for subclasses)."""
    if name not in cfg.TRAINER:
        cfg.TRAINER[name] = CfgNode(dict(defaults))


def clamp_depth(requested, available, key):
    """``requested`` prompt depth, clamped to the ``available`` transformer layers with one log line."""
    if requested > available:
        print(f"{key} = {requested} exceeds the backbone's {available} layers: using {available}")
        return available
    return requested


# ----- precision ------------------------------------------------------------------------------------
def effective_precision(requested, device):
    """The precision a run uses: ``requested`` on CUDA, fp32 elsewhere (one log line when it differs)."""
    if requested not in PRECISIONS:
        raise UserError(f"PREC {requested!r} is not one of {list(PRECISIONS)}")
    if requested != "fp32" and device.type != "cuda":
        print(f"PREC {requested} is not supported on {device.type}: using fp32")
        return "fp32"
    return requested


def amp_dtype(device):
    """bf16 where the device supports it (no loss scaling needed), else fp16."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


# ----- model pieces ---------------------------------------------------------------------------------
class ClassPromptBuffers(nn.Module):
    """The frozen, class-dependent parts of ``dpl.clip.ClassPrompts`` as non-persistent buffers.

    Buffers follow ``.to()`` and are never checkpointed (they are rebuilt from the current class
    names), which is what lets a base-class checkpoint evaluate on new classes.
    """

    def __init__(self, class_prompts: ClassPrompts):
        super().__init__()
        # Tensors live in the buffers only (so .to() moves every copy); the spec keeps the rest.
        self.spec = dataclasses.replace(
            class_prompts, tokenized=None, prefix=None, suffix=None, gather_index=None, ctx_vectors=None
        )
        self.register_buffer("tokenized", class_prompts.tokenized, persistent=False)  # [C, L]
        self.register_buffer("prefix", class_prompts.prefix, persistent=False)  # [C, 1, D]
        self.register_buffer("suffix", class_prompts.suffix, persistent=False)  # [C, L-1-n_ctx, D]
        self.register_buffer("gather_index", class_prompts.gather_index, persistent=False)  # [C, L]
        # Positions up to the last EOS (EOS = argmax id), read once here: a hook crops its work to them
        # without waiting for the device in every training step.
        self.active_length = int(class_prompts.tokenized.argmax(dim=-1).max()) + 1

    @property
    def n_ctx(self):
        return self.spec.n_ctx

    def assemble(self, ctx):
        """Prompt embeddings ``[C, L, D]`` from a ``[n_ctx, D]`` or ``[C, n_ctx, D]`` context."""
        current = dataclasses.replace(
            self.spec, tokenized=self.tokenized, prefix=self.prefix, suffix=self.suffix, gather_index=self.gather_index
        )
        return current.assemble(ctx)


class ClipPromptModel(nn.Module):
    """A frozen CLIP with the prompted encoders; subclasses add learnable parts and ``encode_text``.

    ``forward(images, text_features=None)`` returns logits ``[B, C]``; pass ``text_features``
    (normalised ``[C, D]``) to reuse class features encoded once (evaluation). ``forward`` is
    ``logits_from_image_features(encode_image(images), text_features)``, so a model whose image features
    are frozen CLIP's (``FROZEN_IMAGE_FEATURES``) gives the same logits from features cached on disk.
    """

    # True for a model whose encode_image is frozen CLIP's, unprompted and unhooked (CoOp, ZeroshotCLIP,
    # CoCoOp): its evaluations may then read the features from dpl.evaluation.feature_cache.
    FROZEN_IMAGE_FEATURES = False

    def __init__(self, clip_model):
        super().__init__()
        self.clip = clip_model.requires_grad_(False).eval()
        self.arch = clip_architecture(clip_model)
        self.text_encoder = PromptedTextEncoder(clip_model)
        self.vision_encoder = PromptedVisionEncoder(clip_model)

    # --- what the checkpoint holds
    def learnable_state_dict(self):
        """Learnable parameters and the persistent buffers of modules that own one (detached)."""
        learnable = {}
        for module_name, module in self.named_modules():
            own_params = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
            if not own_params:
                continue
            prefix = f"{module_name}." if module_name else ""
            learnable.update({prefix + n: p.detach() for n, p in own_params})
            learnable.update(
                {prefix + n: b.detach() for n, b in module.named_buffers(recurse=False)
                 if n not in module._non_persistent_buffers_set}
            )
        return dict(sorted(learnable.items()))

    def load_learnable_state_dict(self, state_dict):
        """Copy saved learnable tensors in; ``CheckpointMismatchError`` on missing/unexpected keys or shapes."""
        own = self.learnable_state_dict()
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        resized = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
        if missing or unexpected or resized:
            details = [f"{label}: {keys}" for label, keys in
                       (("missing", missing), ("unexpected", unexpected), ("shape differs", resized)) if keys]
            raise CheckpointMismatchError(
                "the checkpoint's learnable tensors do not fit this model (" + "; ".join(details) + "); "
                "was it saved by another trainer or with other prompt settings (N_CTX, depths, CSC)?"
            )
        with torch.no_grad():
            for name, tensor in own.items():
                tensor.copy_(state_dict[name])

    def learnable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def configure_text_encoder(self, chunk_size=0, checkpoint=False):
        """Encode class prompts ``chunk_size`` at a time (0 = all) and/or with activation checkpointing.

        Same features and gradients as the plain path; bounds the text tower's memory for many classes.
        """
        self.text_encoder = PromptedTextEncoder(self.clip, chunk_size=chunk_size, checkpoint=checkpoint)

    def train(self, mode=True):
        """Switch the learnable parts; the frozen CLIP always stays in eval mode (ResNet batch-norm stats)."""
        super().train(mode)
        self.clip.eval()
        return self

    def half_frozen_weights(self):
        """CLIP's fp16 mode: the frozen weights in half precision; learnable tensors stay fp32."""
        from dpl.clip.package import clip

        clip.model.convert_weights(self.clip)

    # --- features and logits
    @property
    def frozen_logit_scale(self):
        """Frozen CLIP's scale: what a frozen teacher's logits use, whatever the student's is."""
        return self.clip.logit_scale.exp().float()

    @property
    def logit_scale(self):
        """The scale of the model's logits (frozen CLIP's unless a method learns its own)."""
        return self.frozen_logit_scale

    def encode_text(self):
        """Normalised class text features ``[C, D]`` (float32)."""
        raise NotImplementedError(f"{type(self).__name__} must implement encode_text()")

    def encode_image(self, images):
        """Normalised image features ``[B, D]`` (float32); default: the frozen encoder without prompts."""
        return F.normalize(self.vision_encoder(images).float(), dim=-1)

    @torch.no_grad()
    def encode_frozen_text(self, texts, normalize=True):
        """Features ``[N, D]`` (float32) of hand-crafted prompt texts by the frozen text encoder.

        Encoded in chunks of ``FROZEN_TEXT_CHUNK`` prompts (one call for small sets, bounded memory for
        e.g. 60 templates x 1000 ImageNet classes).
        """
        tokens = tokenize(texts, self.arch.context_length).to(self.clip.token_embedding.weight.device)
        encoder = PromptedTextEncoder(self.clip, chunk_size=FROZEN_TEXT_CHUNK)
        features = encoder.encode_tokens(tokens).float()
        return F.normalize(features, dim=-1) if normalize else features

    @torch.no_grad()
    def frozen_class_text_features(self, classnames, templates, normalize_each=False):
        """Normalised ``[C, D]`` class features: the mean over ``templates`` of the frozen text features.

        ``normalize_each=False`` averages raw features (PromptSRC's teacher), ``True`` averages
        normalised ones (CoOp's ZeroshotCLIP2 ensemble). With one template both are ``norm(f)``.
        """
        texts = [text for template in templates for text in fill_template(template, classnames)]
        features = self.encode_frozen_text(texts, normalize=normalize_each)  # [T * C, D]
        features = features.reshape(len(templates), len(classnames), -1)
        return F.normalize(features.mean(dim=0), dim=-1)

    @property
    def has_frozen_image_features(self):
        """Whether ``encode_image`` is frozen CLIP's, so cached features stand for it (a subclass that
        overrides ``encode_image`` or ``forward`` never qualifies, whatever it inherits)."""
        return (self.FROZEN_IMAGE_FEATURES and type(self).encode_image is ClipPromptModel.encode_image
                and type(self).forward is ClipPromptModel.forward)

    def logits(self, image_features, text_features):
        return self.logit_scale * image_features @ text_features.t()

    def logits_from_image_features(self, image_features, text_features=None):
        """Logits ``[B, C]`` of normalised image features ``[B, E]`` (what ``forward`` does after encoding)."""
        if text_features is None:
            text_features = self.encode_text()
        return self.logits(image_features, text_features)

    def forward(self, images, text_features=None):
        return self.logits_from_image_features(self.encode_image(images), text_features)


# ----- the trainer ----------------------------------------------------------------------------------
class ClipPromptTrainer(TrainerX):
    """Shared CLIP prompt-trainer machinery (not registered itself).

    Subclasses set ``CFG_NODE`` (their ``cfg.TRAINER`` node, which holds ``PREC``), ``MODEL_NAME``
    (the checkpoint sub-directory) and ``SETTINGS`` (the typed settings class of their node, see
    ``dpl.prompting.settings``), define ``extend_cfg`` and implement ``build_clip_model``;
    ``compute_losses`` defaults to cross-entropy.
    """

    CFG_NODE = None
    MODEL_NAME = "prompt_learner"
    SETTINGS = None  # a class with ``from_node(node)``; None: the trainer reads no setting but PREC

    @classmethod
    def config_nodes(cls):
        """``(CFG_NODE,)``: a prompt trainer reads its own node only (None while ``CFG_NODE`` is unset)."""
        return (cls.CFG_NODE,) if cls.CFG_NODE else None

    @classmethod
    def node_of(cls, cfg):
        return cfg.TRAINER[cls.CFG_NODE]

    @property
    def node(self):
        return self.node_of(self.cfg)

    @property
    def node_name(self):
        return f"TRAINER.{self.CFG_NODE}"

    def check_cfg(self, cfg):
        """Validate the node once, before anything is built: ``PREC``, then ``self.settings`` (typed)."""
        prec = self.node_of(cfg).PREC
        if prec not in PRECISIONS:
            raise UserError(f"TRAINER.{self.CFG_NODE}.PREC is {prec!r}; use one of {list(PRECISIONS)}")
        if cfg.INPUT.TEACHER_VIEW != "same" and type(self).extra_train_inputs is ClipPromptTrainer.extra_train_inputs:
            raise UserError(f"INPUT.TEACHER_VIEW is {cfg.INPUT.TEACHER_VIEW!r}, but {type(self).__name__} has no "
                            "frozen image teacher to show it (PromptSRC and DropoutPrompt have): leave it at 'same'")
        self.settings = self.read_settings(cfg)

    @classmethod
    def read_settings(cls, cfg):
        """The node as ``SETTINGS`` (None without one); a bad value is one ``UserError`` naming its key."""
        if cls.SETTINGS is None:
            return None
        node = cls.node_of(cfg)
        with setting_errors(f"TRAINER.{cls.CFG_NODE}", node):
            return cls.SETTINGS.from_node(node)

    # --- building
    def build_model(self):
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        self.precision = effective_precision(self.node.PREC, self.device)
        self.autocast_dtype = amp_dtype(self.device) if self.precision == "amp" else None
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        clip_model, self.weights_info = load_clip_with_info(cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.PATH,
                                                            self.device)
        print(f"CLIP weights: {self.weights_info.describe()}")
        self.check_input_size(clip_model)
        print(f"Building {type(self).__name__} model")
        with setting_errors(self.node_name, self.node):  # settings checked against this backbone
            self.model = self.build_clip_model(clip_model, classnames)
        self.configure_text_encoding(cfg.MODEL)
        if self.precision == "fp16":
            self.model.half_frozen_weights()
        self.model.to(self.device)
        if cfg.MODEL.INIT_WEIGHTS:
            load_pretrained_weights(self.model, cfg.MODEL.INIT_WEIGHTS)
        params = self.model.learnable_parameters()
        if not params:  # zero-shot: nothing to optimise or checkpoint
            self.model.eval()
            return
        names = sorted(self.model.learnable_state_dict())
        print(f"Parameters to be updated: {names}")
        print(f"# learnable parameters: {count_num_param(params=params):,}")
        from dpl.optim import build_lr_scheduler, build_optimizer

        self.optim = build_optimizer(params, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model(self.MODEL_NAME, self.model, self.optim, self.sched)
        if self.autocast_dtype == torch.float16:
            self.scaler = torch.amp.GradScaler(self.device.type)

    def configure_text_encoding(self, model_cfg):
        """Apply ``MODEL.TEXT_CHUNK_SIZE`` / ``MODEL.TEXT_CHECKPOINT`` (off by default) to the text encoder."""
        chunk_size, checkpoint = model_cfg.TEXT_CHUNK_SIZE, bool(model_cfg.TEXT_CHECKPOINT)
        if chunk_size < 0:
            raise UserError(f"MODEL.TEXT_CHUNK_SIZE is {chunk_size}; use 0 (all prompts at once) or a positive "
                            "number of prompts per chunk")
        if chunk_size or checkpoint:
            print(f"Text encoding: chunks of {chunk_size or 'all'} prompts, activation checkpointing "
                  f"{'on' if checkpoint else 'off'}")
            self.model.configure_text_encoder(chunk_size, checkpoint)

    def check_input_size(self, clip_model):
        resolution = clip_model.visual.input_resolution
        size = tuple(self.cfg.INPUT.SIZE)
        if size != (resolution, resolution):
            raise UserError(
                f"INPUT.SIZE {size} does not match the input resolution {resolution} of CLIP "
                f"{self.cfg.MODEL.BACKBONE.NAME or self.cfg.MODEL.BACKBONE.PATH}: set INPUT.SIZE "
                f'"({resolution}, {resolution})"'
            )

    def build_clip_model(self, clip_model, classnames):
        """The method's ``ClipPromptModel`` for ``classnames`` (CLIP is float32, on ``self.device``).

        A ``SettingError`` raised here (a setting this backbone cannot take) names the node's key.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement build_clip_model()")

    # --- checkpoints: learnable tensors only
    def checkpoint_state_dict(self, name):
        return self._models[name].learnable_state_dict()

    def load_checkpoint_state_dict(self, name, state_dict):
        self._models[name].load_learnable_state_dict(state_dict)

    def load_model(self, directory, epoch=None):
        """Load the learnable tensors (class-dependent buffers stay those of the current classes)."""
        try:
            super().load_model(directory, epoch)
        except CheckpointMismatchError as exc:
            where = f"{directory} (epoch {epoch})" if epoch is not None else directory
            raise CheckpointMismatchError(f"cannot load {where} into {type(self).__name__}: {exc}") from exc

    # --- training step
    def autocast(self):
        """Autocast context for ``PREC amp`` (a no-op otherwise)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def compute_losses(self, images, labels):
        """``(logits [B, C], {name: loss tensor})``; the total loss is the sum of the components."""
        logits = self.model(images)
        return logits, {"loss_ce": F.cross_entropy(logits.float(), labels)}

    def extra_train_inputs(self, batch):
        """Keyword inputs of ``compute_losses`` besides images and labels (none here)."""
        return {}

    def forward_backward(self, batch):
        images, labels = self.parse_batch_train(batch)
        with self.autocast():
            logits, components = self.compute_losses(images, labels, **self.extra_train_inputs(batch))
        loss = sum(components.values())
        self.backward_and_update(loss, components)
        logged = {"loss": loss}
        if len(components) > 1:
            logged.update(components)
        logged["acc"] = compute_accuracy(logits, labels)[0]
        # one device-to-host copy for every logged number, not one wait per value
        values = torch.stack([torch.as_tensor(v, device=loss.device).detach().float().reshape(()) for v in logged.values()])
        return dict(zip(logged, values.tolist()))

    def backward_and_update(self, loss, components):
        if self.scaler is None:
            self.model_backward_and_update(loss, components=components)
            return
        self.model_zero_grad()
        self.check_finite(loss, components)
        self.scaler.scale(loss).backward()
        for name in self.get_model_names():
            self.scaler.step(self._optims[name])
        self.scaler.update()

    # --- evaluation: class text features once per test() call, frozen image features from the cache
    def test(self, split=None):
        self.set_model_mode("eval")
        with torch.no_grad(), self.autocast():
            self._eval_text_features = self.model.encode_text()
        try:
            return super().test(split)
        finally:
            self._eval_text_features = None

    def model_inference(self, input):
        with self.autocast():
            return self.model(input, text_features=getattr(self, "_eval_text_features", None))

    def evaluate_loader(self, data_loader, split):
        """The engine's evaluation loop; for a model with frozen image features, through the feature cache
        (``dpl.evaluation.feature_cache``): a hit reads no image, a miss encodes them and caches the features.
        Both give the evaluator the logits ``forward`` gives, batch by batch, in the loader's order.

        On several processes each evaluates its shard. A hit needs the file on every process (else all of
        them encode); on a miss every shard's features are gathered in split order and rank 0 writes them.
        """
        entry = self.feature_cache_entry(data_loader, split)
        if entry is None:
            details = super().evaluate_loader(data_loader, split)
            return dict(details, feature_cache=CACHE_OFF) if self.model.has_frozen_image_features else details
        features = entry.read()
        if all(self.world.all_gather_objects(features is not None)):
            print(f"Image features of the {entry.num_images} {split} images: read from the cache {entry.path}")
            self.evaluate_cached_features(data_loader, features)
            return {"feature_cache": CACHE_HIT}
        shard = self.evaluate_keeping_features(data_loader)
        shards = self.world.all_gather_objects(shard)  # every process's (indices, features)
        features = rows_in_split_order(shards, entry.num_images) if self.world.is_main else None
        if features is not None and entry.write(features):
            print(f"Image features of the {entry.num_images} {split} images: written to the cache {entry.path}")
        return {"feature_cache": CACHE_MISS}

    def feature_cache_entry(self, data_loader, split):
        """The cache entry of ``data_loader``'s images, or None when this evaluation does not use the cache:
        ``TEST.IMAGE_FEATURE_CACHE`` False or ``$DPL_FEATURE_CACHE`` off, a model whose image features are
        not frozen CLIP's (prompted vision, ``MODEL.INIT_WEIGHTS``), a trainer reading or running test batches
        its own way, a loader of another kind, or an image that is missing (the plain loop reports it)."""
        from dpl.data.data_manager import DatasetWrapper  # (the data stack only where an evaluation needs it)

        folder = cache_folder()
        wrapper = data_loader.dataset
        weights = getattr(self, "weights_info", None)  # what build_model loaded (a trainer of its own may not say)
        plain_loop = (type(self).model_inference is ClipPromptTrainer.model_inference
                      and type(self).parse_batch_test is ClipPromptTrainer.parse_batch_test)
        if not (self.cfg.TEST.IMAGE_FEATURE_CACHE and folder is not None and self.model.has_frozen_image_features
                and not self.cfg.MODEL.INIT_WEIGHTS and weights is not None and plain_loop
                and isinstance(wrapper, DatasetWrapper) and data_loader.batch_sampler is not None):
            return None
        try:
            images = image_entries(wrapper.data_source)
        except OSError:
            return None
        precision = self.precision if self.autocast_dtype is None else f"{self.precision} {self.autocast_dtype}"
        reader = f"{type(wrapper).__module__}.{type(wrapper).__qualname__}"
        description = feature_description(weights.sha256, self.cfg.DATASET.NAME, split, images,
                                          describe_transform(wrapper.transform), reader, precision, self.device.type)
        return CacheEntry(folder, description)

    def evaluate_cached_features(self, data_loader, features):
        """The evaluation loop over cached rows ``features`` ``[N, D]``: the loader's batches of indices (no
        image is read), the datums' labels."""
        datums = data_loader.dataset.data_source
        for indices in data_loader.batch_sampler:
            rows = features[indices].to(self.device)  # [B, D]
            labels = torch.tensor([datums[i].label for i in indices], device=self.device)  # [B]
            with self.autocast():
                output = self.model.logits_from_image_features(rows, self._eval_text_features)
            self.evaluator.process(output, labels)

    def evaluate_keeping_features(self, data_loader):
        """The engine's loop (``model_inference`` split in its two steps), keeping each batch's image
        features: ``(dataset indices [n], features [n, D] float32 on the CPU)`` of this process's shard."""
        indices, kept = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, self.model.arch.embed_dim)]
        with loader_batches(data_loader) as batches:
            for batch in batches:
                images, labels = self.parse_batch_test(batch)
                with self.autocast():
                    features = self.model.encode_image(images)  # [B, D]
                    output = self.model.logits_from_image_features(features, self._eval_text_features)
                self.evaluator.process(output, labels)
                indices.append(torch.as_tensor(batch["index"], dtype=torch.long))
                kept.append(features.float().cpu())
        return torch.cat(indices), torch.cat(kept)
