"""The CLIP layer: weight resolution and loading, prompted encoders, tokenisation helpers, templates."""
from dpl.clip.prompted import (
    ClipArchitecture,
    LayerHook,
    PromptedTextEncoder,
    PromptedVisionEncoder,
    TokenLayout,
    attention_probs,
    block_with_attention,
    clip_architecture,
    is_vit,
)
from dpl.clip.templates import (
    CUSTOM_TEMPLATES,
    IMAGENET_TEMPLATES,
    IMAGENET_TEMPLATES_SELECT,
    PROMPTSRC_TEMPLATES,
    dataset_template,
    fill_template,
)
from dpl.clip.text import ClassPrompts, bpe_ids, build_class_prompts, class_text, tokenize
from dpl.clip.weights import (
    CACHE_ENV,
    WeightsInfo,
    available_backbones,
    clip_cache_dir,
    load_clip,
    load_clip_with_info,
    read_clip_state_dict,
    resolve_clip_weights,
    weights_sha256,
)

__all__ = [
    "CACHE_ENV", "CUSTOM_TEMPLATES", "ClassPrompts", "ClipArchitecture", "IMAGENET_TEMPLATES",
    "IMAGENET_TEMPLATES_SELECT", "LayerHook", "PROMPTSRC_TEMPLATES", "PromptedTextEncoder",
    "PromptedVisionEncoder", "TokenLayout", "attention_probs", "available_backbones", "block_with_attention", "bpe_ids", "build_class_prompts",
    "class_text", "clip_architecture", "clip_cache_dir", "dataset_template", "fill_template", "is_vit",
    "load_clip", "load_clip_with_info", "read_clip_state_dict", "resolve_clip_weights", "tokenize", "WeightsInfo",
    "weights_sha256",
]
