"""What upstream Dassl-based ``train.py`` files define beyond this project's trainer nodes, so their trainers,
YAML files and script options run here.

Upstream repositories define their trainers' nodes in ``extend_cfg`` of their own ``train.py``, which a
plugin does not run (``dpl.plugins``). The nodes of CoOp, CoCoOp, MaPLe, IVLP and PromptSRC are this
project's own trainers' nodes, with the upstream keys and defaults (``extend_cfg_for_all_trainers`` adds them
even when a plugin replaces the trainer). ``add_upstream_nodes`` adds the rest, with the upstream defaults:
KgCoOp's ``TRAINER.COOP.W`` and ``ALPHA``, MaPLe's ``TRAINER.VPT`` node and KgCoOp's ``LOSS`` node (from
ProGrad).

One key has different types across upstream repositories: KgCoOp declares ``TRAINER.COOP.CTX_INIT`` (and
``TRAINER.COCOOP.CTX_INIT``) a bool, where True means "initialise the context from 'a photo of a'", while
CoOp declares the init words. ``translated_value`` turns KgCoOp's bools into the words KgCoOp uses
(True -> ``"a photo of a"``, False -> ``""``) as they are merged, so each repository's YAML files and
options mean what they meant there, and the key keeps one type.
"""

KGCOOP_CTX_INIT_WORDS = "a photo of a"  # what upstream KgCoOp initialises from whenever CTX_INIT is True

# {node: {key: default}} that only upstream train.py files define (no trainer of this project reads them).
UPSTREAM_TRAINER_KEYS = {
    "COOP": dict(ALPHA=1.0, W=1.0),  # KgCoOp's (W: its loss weight, 8.0 in all its scripts; ALPHA: unused)
    "VPT": dict(N_CTX_VISION=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH_VISION=1),  # MaPLe's repo
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
    for name, defaults in UPSTREAM_TRAINER_KEYS.items():
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
