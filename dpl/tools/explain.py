"""``python -m dpl.tools.explain``: pictures of what token dropout protects in a trained run.

    python -m dpl.tools.explain --model-dir RUN                     # 4 test images of the run's dataset
    python -m dpl.tools.explain --model-dir RUN --images a.jpg b.jpg --layer 3
    python -m dpl.tools.explain --model-dir RUN --dataset-config-file configs/datasets/dtd.yaml  # another dataset
    python -m dpl.tools.explain --dataset-config-file configs/datasets/dtd.yaml --root DATA --backbone ViT-B/16

For a DropoutPrompt run it draws, per image, the per-patch maps of the three importance terms (global-token
attention, maximal self-attention, alignment guidance), the combined importance and the drop probability, and
for the class prompts a bar chart of each token's importance and drop probability: the numbers its training
step computes, on the clean forward pass (see ``dpl.explain.maps``). A run of another method, or no run (the
frozen CLIP of ``--backbone``), is drawn from the frozen CLIP's attention, and the output says so.

Writes ``vision_<layer>.png``, ``text_<layer>.png`` and the arrays behind them, ``maps_<layer>.npz``, to
``--out`` (default ``RUN/explain``, or ``./explain`` without a run) and prints their paths. Headless (Agg).
Errors are one line on stderr, exit 1.
"""
import argparse
import contextlib
import io
import os
import sys

import numpy as np
import torch
import torchvision.transforms as T
import yaml

from dpl.config.node import CfgNode
from dpl.data.data_manager import read_image
from dpl.engine import UserError, build_trainer
from dpl.explain.figures import (image_figure, layer_title, map_arrays, patch_grid, select_modalities, text_figure,
                                 vision_panels)
from dpl.explain.model_maps import explain
from dpl.plugins import load_plugins, plugin_paths
from dpl.results import plots
from dpl.results.errors import ResultsError
from dpl.results.identity import default_config
from dpl.results.layout import EXPLAIN_DIR
from dpl.results.runs import latest_checkpoints, read_checkpoint
from dpl.utils import UnknownNameError
from dpl.utils.tools import atomic_open

FROZEN_TRAINER = "ZeroshotCLIP"  # what builds the frozen CLIP when no run is given
MAX_IMAGES = 12  # rows of one figure
EXIT_INTERRUPTED = 130  # as shells report a process stopped by SIGINT


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: give a number >= 1")
    return value


def palette_size(text):
    value = int(text)
    if value != 0 and not 2 <= value <= 256:
        raise argparse.ArgumentTypeError(f"{text}: a PNG palette holds 2 to 256 colours (0: full colour)")
    return value


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default="", help="a trained run's folder (its latest checkpoint is drawn)")
    p.add_argument("--load-epoch", type=int, help="the checkpoint of this epoch instead of the latest")
    p.add_argument("--images", nargs="+", default=[], metavar="FILE", help="image files (default: the test split)")
    p.add_argument("--num-images", type=int, default=4, help="test images to draw without --images (default 4)")
    p.add_argument("--num-classes", type=int, default=4, help="class prompts in the text chart (default 4)")
    p.add_argument("--layer", default="mean", help="a dropping layer, or 'mean' over them (default)")
    p.add_argument("--out", default="", help="output folder (default RUN/explain, or ./explain)")
    p.add_argument("--root", default="", help="dataset root (default: the run's)")
    p.add_argument("--classes", choices=("base", "new", "all"), help="class subset (default: the run's)")
    p.add_argument("--dataset-config-file", default="",
                   help="the dataset (default: the run's; without a run: required, drawn by the frozen CLIP)")
    p.add_argument("--backbone", default="pocket", help="without a run: the CLIP (default pocket)")
    p.add_argument("--dpi", type=positive_int, default=120, help="resolution of the PNG files (default 120)")
    p.add_argument("--palette", type=palette_size, default=0, metavar="N",
                   help="PNG files of at most N colours (e.g. 64: a few times smaller, for documents)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where CUDA is available")
    p.add_argument("--plugin", action="append", default=[], metavar="PATH", help="as train.py's --plugin")
    return p


# ----- the model ---------------------------------------------------------------------------------------------
def latest_run_checkpoints(model_dir):
    """``{model folder name: (path, contents)}`` of a run's latest checkpoints, read once."""
    if not os.path.isdir(model_dir):
        raise UserError(f"--model-dir {model_dir}: no such folder")
    paths = latest_checkpoints(model_dir)
    if not paths:
        raise UserError(f"--model-dir {model_dir}: no checkpoint here (a model folder with a 'checkpoint' file); "
                        "give the folder of a run that trained, e.g. output/.../seed1")
    return {os.path.basename(os.path.dirname(path)): (path, read_checkpoint(path)) for path in paths}


def run_config(checkpoints):
    """The config a run's checkpoint recorded (every checkpoint of this code base holds it)."""
    path, checkpoint = next(iter(checkpoints.values()))
    config = checkpoint.get("config")
    if not isinstance(config, dict):
        raise UserError(f"{path} records no config (written by other code): explain cannot rebuild its model")
    cfg = default_config()
    try:
        cfg.merge_from_other_cfg(CfgNode(config))
    except KeyError as exc:  # a trainer or dataset node of a plugin that is not loaded
        raise UserError(f"{path}: its config has a key this code does not define ({exc}); load the "
                        "plugin that defines it with --plugin PATH") from None
    return cfg


def frozen_config(args):
    """The frozen CLIP of ``--backbone`` on the dataset of ``--dataset-config-file``."""
    if not args.dataset_config_file:
        raise UserError("give --model-dir RUN, or --dataset-config-file (and --root) for the frozen CLIP")
    cfg = default_config()
    merge_dataset_config(cfg, args.dataset_config_file)
    cfg.TRAINER.NAME, cfg.MODEL.BACKBONE.NAME = FROZEN_TRAINER, args.backbone
    return cfg


def merge_dataset_config(cfg, path):
    if not os.path.isfile(path):
        raise UserError(f"--dataset-config-file {path}: no such file")
    try:
        cfg.merge_from_file(path)
    except (KeyError, ValueError, yaml.YAMLError) as exc:
        raise UserError(f"--dataset-config-file {path}: {exc}") from None


def build_model(args):
    """``(trainer, cfg)`` with the run's model loaded (or the frozen CLIP), in eval mode; build logs are muted."""
    load_plugins(plugin_paths(args.plugin))
    checkpoints = latest_run_checkpoints(args.model_dir) if args.model_dir else {}
    cfg = run_config(checkpoints) if checkpoints else frozen_config(args)
    if args.model_dir and args.dataset_config_file:  # a trained model on another dataset (cross-dataset)
        merge_dataset_config(cfg, args.dataset_config_file)
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.classes:
        cfg.DATASET.SUBSAMPLE_CLASSES = args.classes
    if args.cpu:
        cfg.USE_CUDA = False
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.freeze()
    with contextlib.redirect_stdout(io.StringIO()):
        trainer = build_trainer(cfg)
        if checkpoints and args.load_epoch is not None:
            trainer.load_model(args.model_dir, epoch=args.load_epoch)
        elif checkpoints:  # the latest, a mid-epoch one too: a run in progress can be drawn
            for name, (_, checkpoint) in checkpoints.items():
                trainer.load_checkpoint_state_dict(name, checkpoint["state_dict"])
    trainer.model.eval()
    return trainer, cfg


# ----- the images --------------------------------------------------------------------------------------------
def check_counts(args):
    if args.images and len(args.images) > MAX_IMAGES or not 1 <= args.num_images <= MAX_IMAGES:
        count = f"--images gives {len(args.images)}" if args.images else f"--num-images {args.num_images}"
        raise UserError(f"{count}: a figure holds 1 to {MAX_IMAGES} images; draw more in several commands")
    if args.num_classes < 1:
        raise UserError(f"--num-classes {args.num_classes}: chart at least one class prompt")


def chosen_images(args, dataset):
    """``[(path, label or None)]``: ``--images``, else the first test image of each class, then the next ones."""
    if args.images:
        return [(path, None) for path in args.images]
    seen, first_of_class, others = set(), [], []
    for item in dataset.test:
        (others if item.label in seen else first_of_class).append(item)
        seen.add(item.label)
    return [(item.impath, item.label) for item in (first_of_class + others)[:args.num_images]]


def load_images(paths, transform):
    """``(model inputs [N, 3, H, W], pictures [N, H, W, 3] in [0, 1])``: the test transform, and its output with
    the normalisation undone (what the model sees, as a picture)."""
    inputs = torch.stack([transform(read_image(path)) for path in paths])
    normalize = next((t for t in getattr(transform, "transforms", []) if isinstance(t, T.Normalize)), None)
    pictures = inputs
    if normalize is not None:
        mean, std = torch.tensor(normalize.mean)[:, None, None], torch.tensor(normalize.std)[:, None, None]
        pictures = inputs * std + mean
    return inputs, pictures.clamp(0, 1).permute(0, 2, 3, 1).numpy()


# ----- the figures -------------------------------------------------------------------------------------------
def layer_choice(text):
    if text == "mean":
        return "mean"
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--layer {text!r}: give a layer index or 'mean'") from None


def captions(chosen, explanation, classnames):
    lines = []
    for (path, label), predicted, confidence in zip(chosen, explanation.predicted, explanation.confidence):
        first = f"true: {classnames[label]}" if label is not None else os.path.basename(path)
        lines.append(f"{first}\npredicted: {classnames[predicted]} ({confidence:.2f})")
    return lines


def text_rows(chosen, explanation, limit):
    """The class prompts to chart: the images' true classes (else predicted ones), each once, at most ``limit``."""
    classes = [label if label is not None else int(p) for (_, label), p in zip(chosen, explanation.predicted)]
    return list(dict.fromkeys(classes))[:limit]


def write_figures(explanation, pictures, chosen, classnames, layer, num_classes, out_dir, plt, dpi=120,
                  palette=0):
    """The PNG files and the ``.npz`` of the arrays drawn (``vision/<name>`` ``[N, grid, grid]``, ``text/<name>``
    ``[C, L]`` with ``text/eligible`` and ``text/tokens``; names as ``map_arrays``); their paths."""
    selected = select_modalities(explanation, layer)  # before anything is written
    tag = "mean" if layer == "mean" else f"layer{layer}"
    heading = f"{explanation.source}; {layer_title(None if layer == 'mean' else layer)}"
    written, arrays = [], {}
    if "vision" in selected:
        vision = selected["vision"]
        fig = image_figure(pictures, vision_panels(vision, explanation.grid),
                           captions(chosen, explanation, classnames), heading, plt)
        written.append(plots.save_figure(fig, out_dir, f"vision_{tag}.png", plt, dpi, palette))
        arrays.update({f"vision/{name}": patch_grid(values, explanation.grid)
                       for name, values in map_arrays(vision).items()})
    if "text" in selected:
        text = selected["text"]
        fig = text_figure(explanation.token_labels, text, text_rows(chosen, explanation, num_classes), classnames,
                          heading, plt)
        written.append(plots.save_figure(fig, out_dir, f"text_{tag}.png", plt, dpi, palette))
        arrays.update({f"text/{name}": values.numpy() for name, values in map_arrays(text).items()})
        arrays["text/eligible"] = text.eligible.numpy()
        length = text.probability.shape[1]
        arrays["text/tokens"] = np.array([words + [""] * (length - len(words)) for words in explanation.token_labels])
    path = os.path.join(out_dir, f"maps_{tag}.npz")
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return written + [path]


def precision_note(trainer):
    """A note when the maps are computed at another precision than the run trained at (e.g. fp16 on a GPU,
    drawn here on a CPU in fp32), else None."""
    trained = trainer.node.PREC if hasattr(trainer, "node") else None
    if trained is None or trained == trainer.precision:
        return None
    return f"note: computed in {trainer.precision} on {trainer.device.type}; the run's PREC is {trained}"


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        plt = plots.import_pyplot()  # before any work: a missing matplotlib fails at once
        layer = layer_choice(args.layer)
        check_counts(args)
        trainer, cfg = build_model(args)
        dataset = trainer.dm.dataset
        chosen = chosen_images(args, dataset)
        inputs, pictures = load_images([path for path, _ in chosen], trainer.dm.tfm_test)
        with trainer.autocast():  # PREC amp: the half-precision attention the training step sees
            explanation = explain(trainer.model, inputs, dataset.classnames, cfg.DATASET.NAME, cfg.TRAINER.NAME)
        out_dir = args.out or (os.path.join(args.model_dir, EXPLAIN_DIR) if args.model_dir else EXPLAIN_DIR)
        os.makedirs(out_dir, exist_ok=True)
        for note in (f"note: {explanation.source}" if explanation.fallback else None, precision_note(trainer)):
            if note:
                print(note)
        for path in write_figures(explanation, pictures, chosen, dataset.classnames, layer, args.num_classes,
                                  out_dir, plt, args.dpi, args.palette):
            print(path)
    except (UserError, ResultsError, UnknownNameError, OSError) as exc:  # OSError: unreadable or unwritable paths
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # every file is written whole or not at all: the same command redraws them
        print("Interrupted: the files printed above are complete; run the same command again for all", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
