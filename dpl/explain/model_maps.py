"""Token maps of a CLIP prompt model on a batch of images and on its class prompts.

A model with importance-weighted token dropout (``DropoutPromptModel``: ``dropout``, ``drop_layers_*``, ``mag``)
is explained with its own settings, layers and alignment module, on its prompted encoders. Any other model is
explained by the frozen CLIP's attention: the global-token and self-attention terms at the layers the method's
default configuration would drop after, with the default probability range, on the unprompted encoders and
hand-crafted class prompts; ``Explanation.source`` says which of the two a picture shows.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from dpl.clip import dataset_template
from dpl.clip.package import TOKENIZER
from dpl.clip.templates import UnknownTemplateError, fill_template
from dpl.clip.text import tokenize
from dpl.drople.token_dropout import TokenDropout
from dpl.engine.errors import UserError

from .maps import ImportanceRecorder

# The frozen-CLIP fallback: the default configuration's prompted depth (9, ViT-B/16's base-to-novel) and
# its probability range, without the alignment term (a frozen CLIP has no alignment module).
FALLBACK_DEPTH = 9
FALLBACK_DROPOUT = TokenDropout(importance="no_mag")
FALLBACK_TEMPLATE = "a photo of a {}."


@dataclass
class TokenDropoutSetup:
    """Where and how a model drops tokens (``mag``: its alignment module or None)."""

    dropout: TokenDropout
    text_layers: frozenset
    vision_layers: frozenset
    mag: Optional[torch.nn.Module]
    before_prompts: bool


@dataclass
class Explanation:
    """Token maps of one batch of images and of the class prompts.

    source:       what the maps come from, in words (the model's token dropout, or the frozen CLIP's attention)
    vision:       {layer: TokenMaps} of the images, ``[N, 1 + P + prompts]`` per map
    text:         {layer: TokenMaps} of the class prompts, ``[C, L]`` per map
    token_labels: the class prompts' tokens up to EOS, as words (learned context: ``[ctx1]`` ...)
    grid:         patches per image side (``P = grid ** 2``)
    predicted:    ``[N]`` the model's predicted class of each image; ``confidence`` its softmax probability
    """

    source: str
    vision: Dict[int, object]
    text: Dict[int, object]
    token_labels: List[List[str]]
    grid: int
    predicted: torch.Tensor
    confidence: torch.Tensor
    fallback: bool = False


def token_dropout_setup(model):
    """The model's ``TokenDropoutSetup``, or None when it drops no tokens (another method, or PERTURBATION none)."""
    dropout = getattr(model, "dropout", None)
    if not isinstance(dropout, TokenDropout) or not dropout.active:
        return None
    text_layers, vision_layers = frozenset(model.drop_layers_text), frozenset(model.drop_layers_vision)
    if not (text_layers or vision_layers):
        return None
    return TokenDropoutSetup(dropout, text_layers, vision_layers, model.mag, model.hooks_before_prompts)


def fallback_setup(model):
    """The frozen-CLIP attention terms at the default configuration's layers (clamped to this backbone)."""
    arch = model.arch
    return TokenDropoutSetup(FALLBACK_DROPOUT, frozenset(range(min(FALLBACK_DEPTH, arch.text_layers))),
                             frozenset(range(min(FALLBACK_DEPTH, arch.vision_layers))), None, False)


def recorder(setup, modality):
    layers = setup.text_layers if modality == "text" else setup.vision_layers
    return ImportanceRecorder(setup.dropout, layers, setup.mag, setup.before_prompts)


@torch.no_grad()
def explain(model, images, classnames, dataset_name="", method=""):
    """``Explanation`` of ``images`` ``[N, 3, H, W]`` (normalised as the model's test transform) for ``model`` (a
    ``ClipPromptModel`` in eval mode, its class prompts those of ``classnames``); ``method``: its trainer's name."""
    if not model.arch.is_vit:
        raise UserError("explain draws the patch tokens of a ViT; this CLIP has a ResNet image encoder "
                        "(use a run on e.g. ViT-B/16)")
    method = method or type(model).__name__
    setup = token_dropout_setup(model)
    images = images.to(model.clip.text_projection.device)
    if setup is None:
        return explain_frozen(model, images, classnames, dataset_name, method)
    vision, text = recorder(setup, "vision"), recorder(setup, "text")
    logits = model.logits(model.encode_image(images, hook=vision), model.encode_text(hook=text))  # = model(images)
    learner = model.prompt_learner
    labels = [token_words(row, learner.n_ctx_text) for row in learner.tokenized]
    source = f"token dropout of {method} (importance: {setup.dropout.importance})"
    return explanation(source, vision, text, labels, model, logits, fallback=False)


def explain_frozen(model, images, classnames, dataset_name, method):
    """The frozen CLIP's attention terms, for a model without token dropout; its own predictions."""
    setup = fallback_setup(model)
    vision, text = recorder(setup, "vision"), recorder(setup, "text")
    logits = model(images)
    model.vision_encoder(images, hook=vision)
    tokens = tokenize(fill_template(hand_template(dataset_name), classnames), model.arch.context_length)
    model.text_encoder.encode_tokens(tokens, hook=text)
    labels = [token_words(row) for row in tokens]
    why = ("drops no tokens: PERTURBATION none or no dropping layer" if isinstance(getattr(model, "dropout", None),
                                                                                  TokenDropout)
           else "has no token dropout")
    source = f"frozen CLIP attention ({method} {why}): global-token and self-attention terms, default probability range"
    return explanation(source, vision, text, labels, model, logits, fallback=True)


def explanation(source, vision, text, labels, model, logits, fallback):
    confidence, predicted = logits.float().softmax(dim=-1).max(dim=-1)
    grid = round(model.arch.num_patches ** 0.5)
    return Explanation(source, vision.maps, text.maps, labels, grid, predicted.cpu(), confidence.cpu(), fallback)


def hand_template(dataset_name):
    """The dataset's hand-crafted CLIP template, or ``"a photo of a {}."`` for a dataset without one."""
    try:
        return dataset_template(dataset_name)
    except UnknownTemplateError:  # a custom dataset
        return FALLBACK_TEMPLATE


def token_words(token_ids, n_ctx=0):
    """The tokens of one tokenised prompt up to and including EOS, as words; positions ``1..n_ctx`` are the
    learned context (``[ctx1]``...), whose vectors are no longer the words they may have started from."""
    ids = token_ids.tolist()
    eos = ids.index(max(ids))  # EOS has the largest id
    words = []
    for position, token in enumerate(ids[:eos + 1]):
        if 1 <= position <= n_ctx:
            words.append(f"[ctx{position}]")
        elif position == 0:
            words.append("<sos>")
        elif position == eos:
            words.append("<eos>")
        else:
            words.append(TOKENIZER.decoder[token].replace("</w>", ""))
    return words
