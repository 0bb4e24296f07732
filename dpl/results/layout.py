"""Where each protocol's runs live under the output root: the one definition the scripts, the protocol
runner and the result parser share.

Upstream layout (CoOp, KgCoOp, PromptSRC), ``TAG`` = the config folder of a run::

    base2new   <out>/base2new/{train_base,test_new}/<dataset>/shots_<K>/<Trainer>/<TAG>/seed<S>
    xd / dg    <out>/<source>/<Trainer>/<TAG>/seed<S>                 training on the source
               <out>/evaluation/<Trainer>/<TAG>/<dataset>/seed<S>     evaluation on a target
    few-shot   <out>/few_shot/<dataset>/<Trainer>/<TAG>/seed<S>
    long-tail  <out>/long_tail/imb<R>/{train_base,test_new}/<dataset>/shots_<K>/<Trainer>/<TAG>/seed<S>
    zero-shot  <out>/<Trainer>/<TAG>/<dataset>                         (CoOp's zeroshot.sh)

Inside a run folder: ``log.txt``, ``results.json`` and one folder per registered model holding Dassl's
``model.pth.tar-<epoch>`` / ``model-best.pth.tar``, our ``model-last.pth.tar`` and ``checkpoint``, a
one-line file naming the latest of them.

``TAG`` is the config name (base2new, long-tail, zero-shot) or ``<config>_<K>shots`` (xd, few-shot),
exactly as upstream. A run whose experiment differs from what the config and the protocol define gets
``@<variant>`` appended to its config folder: the name a user gives (the ``TAG`` environment variable
of the scripts) or a readable summary of the changed keys, e.g.
``vit_b16_c2_ep20_batch4_4+4ctx@IMPORTANCE=uniform``. ``DATASET.NUM_SHOTS`` is never part of a
variant: it is the ``shots_<K>`` / ``_<K>shots`` part of the path (``all`` for a run on all images).
"""
import hashlib
import os
import re

# The protocols' datasets, in the canonical column order (CoOp's dataset config stems).
BASE2NEW_DATASETS = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
    "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101",
)
XD_TARGETS = BASE2NEW_DATASETS[1:]
DG_TARGETS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
PROTOCOL_DATASETS = {
    "base2new": BASE2NEW_DATASETS,
    "fewshot": BASE2NEW_DATASETS,
    "longtail": BASE2NEW_DATASETS[1:],  # the official long-tail code covers the 10 non-ImageNet sets
    "xd": XD_TARGETS,
    "dg": DG_TARGETS,
}

# Trainers that do not train: deterministic, they run once (the first seed's folder) and that run stands
# for every seed in the tables. The trainer classes say it themselves (``TRAINING_FREE``, which the
# protocol runs read); this is the tables' copy, which must not import torch (a test keeps them equal).
TRAINING_FREE_TRAINERS = ("ZeroshotCLIP", "ZeroshotCLIP2")

CHECKPOINT_POINTER = "checkpoint"
BEST_NAME = "model-best.pth.tar"
LAST_NAME = "model-last.pth.tar"

VARIANT_SEPARATOR = "@"
MAX_VARIANT_LENGTH = 96
SHOTS_KEY = "DATASET.NUM_SHOTS"
EVALUATION_DIR = "evaluation"
# The folders the figure tools write inside an output tree by default (python -m dpl.tools.curves / explain):
# never runs, so result readers pass over them without a word.
CURVES_DIR = "curves"
EXPLAIN_DIR = "explain"
FIGURE_DIRS = frozenset({CURVES_DIR, EXPLAIN_DIR})
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_SHOTS_TAG = re.compile(r"(.+)_(\d+|all)shots")


# ----- the config folder and its variant -------------------------------------------------------------

def config_folder(tag, variant=""):
    """``tag`` or ``tag@variant``."""
    return f"{tag}{VARIANT_SEPARATOR}{variant}" if variant else tag


def split_config_folder(name):
    """``(tag, variant)`` of a config folder name (variant ``""`` for the upstream layout)."""
    tag, _, variant = name.partition(VARIANT_SEPARATOR)
    return tag, variant


def shots_tag(config_name, shots):
    """Upstream's ``<cfg>_<K>shots`` (cross-dataset and few-shot folders)."""
    return f"{config_name}_{shots}shots"


def split_shots_tag(tag):
    """``(config name, shots)`` of ``<cfg>_<K>shots`` (shots ``"all"`` for ``<cfg>_allshots``), or None."""
    match = _SHOTS_TAG.fullmatch(tag)
    if not match:
        return None
    return match.group(1), (match.group(2) if match.group(2) == "all" else int(match.group(2)))


def safe_name(text):
    """``text`` with every run of characters outside ``[A-Za-z0-9._+-]`` replaced by ``-``."""
    return _UNSAFE.sub("-", str(text)).strip("-") or "-"


def _value_text(key, value):
    if key == "MODEL.BACKBONE.PATH" and value:
        value = os.path.splitext(os.path.basename(os.path.normpath(str(value))))[0]
    elif isinstance(value, (list, tuple)):
        value = "-".join(str(v) for v in value) if value else "none"
    elif value == "":
        value = "none"
    return safe_name(value)


def _short_names(keys):
    """The shortest dotted suffix of each key that no other key in ``keys`` shares."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(other != key and ".".join(other.split(".")[-n:]) == suffix for other in keys):
                break
        names[key] = suffix
    return names


def variant_name(changes, tag=""):
    """The ``@`` suffix of a run: ``tag`` when given, else the changed keys as ``KEY=value`` items.

    ``changes`` maps dotted config keys to their new values (``DATASET.NUM_SHOTS`` is ignored: it is
    part of the path). Keys are named by their shortest unambiguous suffix and sorted by full key, so
    the same overrides in any order give the same name; a name longer than ``MAX_VARIANT_LENGTH`` is
    cut and ends with a hash of the full text, so different changes never share a name.
    """
    if tag:
        return safe_name(tag)
    keys = sorted(k for k in changes if k != SHOTS_KEY)
    if not keys:
        return ""
    short = _short_names(keys)
    text = ",".join(f"{safe_name(short[k])}={_value_text(k, changes[k])}" for k in keys)
    if len(text) > MAX_VARIANT_LENGTH:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        text = f"{text[:MAX_VARIANT_LENGTH - 9].rstrip(',=-')}~{digest}"
    return text


# ----- checkpoint files ------------------------------------------------------------------------------

def checkpoint_name(epoch):
    """Dassl's file name for the checkpoint written after (1-based) ``epoch``."""
    return f"model.pth.tar-{epoch}"


def latest_checkpoint_path(model_dir):
    """The file named by ``model_dir/checkpoint`` (None when there is no pointer file)."""
    pointer = os.path.join(model_dir, CHECKPOINT_POINTER)
    if not os.path.isfile(pointer):
        return None
    with open(pointer, "r") as f:
        name = f.readline().strip()
    return os.path.join(model_dir, name) if name else None


# ----- run folders per protocol ----------------------------------------------------------------------

def base2new_dir(root, part, dataset, shots, trainer, folder, seed):
    """``root/<part>/<dataset>/shots_<K>/<Trainer>/<folder>/seed<S>`` (base2new and long-tail roots)."""
    return os.path.join(root, part, dataset, f"shots_{shots}", trainer, folder, f"seed{seed}")


def source_dir(output, source, trainer, folder, seed):
    """Cross-dataset / domain generalisation training run on ``source``."""
    return os.path.join(output, source, trainer, folder, f"seed{seed}")


def evaluation_dir(output, trainer, folder, dataset, seed):
    """Cross-dataset / domain generalisation evaluation on ``dataset``."""
    return os.path.join(output, EVALUATION_DIR, trainer, folder, dataset, f"seed{seed}")


def few_shot_dir(output, dataset, trainer, folder, seed):
    return os.path.join(output, "few_shot", dataset, trainer, folder, f"seed{seed}")


def long_tail_root(output, ratio):
    """``<out>/long_tail/imb<R>``, named without a trailing ``.0`` (``imb10`` for 10 and 10.0)."""
    return os.path.join(output, "long_tail", f"imb{float(ratio):g}")


def zeroshot_dir(output, trainer, folder, dataset):
    """CoOp's ``zeroshot.sh`` layout."""
    return os.path.join(output, trainer, folder, dataset)


def protocol_root(protocol, output, ratio=10):
    """The folder a protocol table is read from."""
    return {
        "base2new": os.path.join(output, "base2new"),
        "xd": output,
        "dg": output,
        "fewshot": os.path.join(output, "few_shot"),
        "longtail": long_tail_root(output, ratio),
    }[protocol]
