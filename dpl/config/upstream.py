"""The config nodes that upstream Dassl-based ``train.py`` files define, so their trainers and YAML files run here.

Upstream repositories define their trainers' nodes in ``extend_cfg`` of their own ``train.py``, which a
plugin does not run (``dpl.plugins``). ``add_upstream_nodes`` adds every node and key those files define
(CoOp, CoCoOp, MaPLe, IVLP, VPT and PromptSRC as in the CoOp / MaPLe / PromptSRC repositories; KgCoOp's
``TRAINER.COOP.W`` / ``ALPHA`` and its ``LOSS`` node) with the upstream defaults, after the project's
trainers added theirs: a key a project trainer already defines keeps the project's default.

One key has different types across upstream repositories: KgCoOp declares ``TRAINER.COOP.CTX_INIT`` (and
``TRAINER.COCOOP.CTX_INIT``) a bool, where True means "initialise the context from 'a photo of a'", while
CoOp declares the init words. ``translated_value`` turns KgCoOp's bools into the words KgCoOp uses
(True -> ``"a photo of a"``, False -> ``""``) as they are merged, so each repository's YAML files and
options mean what they meant there, and the key keeps one type.
"""
KGCOOP_CTX_INIT_WORDS = "a photo of a"  # what upstream KgCoOp initialises from whenever CTX_INIT is True

UPSTREAM_TRAINER_NODES = {
    "COOP": dict(N_CTX=16, CSC=False, CTX_INIT="", PREC="fp16", CLASS_TOKEN_POSITION="end",
                 ALPHA=1.0, W=1.0),  # ALPHA, W: KgCoOp's
    "COCOOP": dict(N_CTX=16, CTX_INIT="", PREC="fp16"),
    "MAPLE": dict(N_CTX=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH=9),
    "IVLP": dict(N_CTX_VISION=2, N_CTX_TEXT=2, CTX_INIT="a photo of a", PREC="fp16",
                 PROMPT_DEPTH_VISION=9, PROMPT_DEPTH_TEXT=9),
    "VPT": dict(N_CTX_VISION=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH_VISION=1),
    "PROMPTSRC": dict(N_CTX_VISION=4, N_CTX_TEXT=4, CTX_INIT="a photo of a", PREC="fp16",
                      PROMPT_DEPTH_VISION=9, PROMPT_DEPTH_TEXT=9, TEXT_LOSS_WEIGHT=25.0,
                      IMAGE_LOSS_WEIGHT=10.0, GPA_MEAN=15.0, GPA_STD=1.0),
}
# KgCoOp's train.py (from ProGrad): read by none of its trainers, but its scripts and YAML files may set them.
UPSTREAM_LOSS_NODE = dict(GM=False, NAME="", ALPHA=0.0, T=1.0, LAMBDA=1.0)

# Keys that take a bool in one upstream repository and words in another: {key: {bool: words}}.
BOOL_AS_WORDS = {
    "TRAINER.COOP.CTX_INIT": {True: KGCOOP_CTX_INIT_WORDS, False: ""},
    "TRAINER.COCOOP.CTX_INIT": {True: KGCOOP_CTX_INIT_WORDS, False: ""},
}


def add_upstream_nodes(cfg):
    """Add the upstream nodes and keys ``cfg`` lacks (module docstring); returns ``cfg``."""
    for name, defaults in UPSTREAM_TRAINER_NODES.items():
        _add_missing(cfg.TRAINER, name, defaults)
    _add_missing(cfg, "LOSS", UPSTREAM_LOSS_NODE)
    return cfg


def _add_missing(parent, name, defaults):
    if name not in parent:
        parent[name] = type(parent)()  # the tree's own node class
    node = parent[name]
    for key, value in defaults.items():
        if key not in node:
            node[key] = value


def translated_value(full_key, value):
    """``value`` as merged into ``full_key``: a bool where upstream words are expected becomes those words."""
    table = BOOL_AS_WORDS.get(full_key)
    if table is not None and isinstance(value, bool):
        return table[value]
    return value
