"""Hand-crafted prompt templates: one table per purpose, shared by every trainer.

Sources (facts, restated): CoOp's zero-shot ``CUSTOM_TEMPLATES`` (keyed by ``DATASET.NAME``), the
80 templates of CLIP's ImageNet prompt-engineering notebook, the 7-template selection of CoOp's
``ZeroshotCLIP2``, and PromptSRC's 60-template text-teacher list.
"""
import difflib

from dpl.clip.text import class_text
from dpl.utils.errors import UserError

# CoOp trainers/zsclip.py table; Pocket is the project's embedded dataset.
CUSTOM_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
    "Pocket": "a photo of a {}.",
}

# CLIP's ImageNet prompt-engineering notebook (80 templates, notebook order).
IMAGENET_TEMPLATES = [
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
]

# CoOp's ZeroshotCLIP2 selection.
IMAGENET_TEMPLATES_SELECT = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]

# PromptSRC's frozen text teacher (same list for every dataset): "a photo of a {}." first, then the
# 80 notebook templates without their own "a photo of a {}." (index 39), cut to 60 in total.
_PHOTO_OF_A = IMAGENET_TEMPLATES.index("a photo of a {}.")
PROMPTSRC_TEMPLATES = (
    ["a photo of a {}."] + IMAGENET_TEMPLATES[:_PHOTO_OF_A] + IMAGENET_TEMPLATES[_PHOTO_OF_A + 1:]
)[:60]


class UnknownTemplateError(UserError, KeyError):
    """``DATASET.NAME`` has no hand-crafted template (a ``KeyError``: the table is keyed by dataset name)."""


def dataset_template(dataset_name):
    """The single hand-crafted template of ``DATASET.NAME`` (one-line error naming the closest known name)."""
    if dataset_name in CUSTOM_TEMPLATES:
        return CUSTOM_TEMPLATES[dataset_name]
    close = difflib.get_close_matches(dataset_name, CUSTOM_TEMPLATES, n=1, cutoff=0.0)
    raise UnknownTemplateError(
        f"no hand-crafted template for DATASET.NAME {dataset_name!r} (do you mean {close[0]!r}?); "
        f"known: {sorted(CUSTOM_TEMPLATES)}"
    )


def fill_template(template, classnames):
    """``template`` filled with each class name (underscores become spaces)."""
    return [template.format(class_text(name)) for name in classnames]
