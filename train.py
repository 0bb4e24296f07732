"""CoOp-compatible entry point: same flags, same config merge order, same main flow.

Merge order: defaults < trainers' ``extend_cfg`` < ``--dataset-config-file`` < ``--config-file``
< CLI flags < trailing ``KEY VALUE`` opts. Errors the user causes (unknown config key, wrong type,
missing file, unknown trainer, busy output dir, missing checkpoint, NaN loss) end with one line on
stderr and exit code 1 (2 for command-line/config errors); other exceptions keep their traceback.
"""
import argparse
import os
import sys
from pathlib import Path

import yaml

from dpl.config import get_cfg_default
from dpl.engine import (
    RunLock,
    UserError,
    build_trainer,
    configure_determinism,
    extend_cfg_for_all_trainers,
    output_dir_action,
    skip_message,
)
from dpl.utils import UnknownNameError, close_logger, collect_env_info, set_random_seed, setup_logger

EXIT_RUN_ERROR = 1
EXIT_CONFIG_ERROR = 2


def build_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=str, default="", help="path to dataset")
    parser.add_argument("--output-dir", type=str, default="", help="output directory")
    parser.add_argument(
        "--resume", type=str, default="", help="checkpoint directory (from which the training resumes)"
    )
    parser.add_argument(
        "--seed", type=int, default=-1,
        help="only positive value enables a fixed seed (here 0 counts too: any value >= 0)",
    )
    parser.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    parser.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    parser.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    parser.add_argument("--config-file", type=str, default="", help="path to config file")
    parser.add_argument("--dataset-config-file", type=str, default="", help="path to config file for dataset setup")
    parser.add_argument("--trainer", type=str, default="", help="name of trainer")
    parser.add_argument("--backbone", type=str, default="", help="name of CNN backbone")
    parser.add_argument("--head", type=str, default="", help="name of head")
    parser.add_argument("--eval-only", action="store_true", help="evaluation only")
    parser.add_argument("--model-dir", type=str, default="", help="load model from this directory for eval-only mode")
    parser.add_argument("--load-epoch", type=int, help="load model weights at this epoch for evaluation")
    parser.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    parser.add_argument(
        "opts", default=None, nargs=argparse.REMAINDER, help="modify config options using the command-line"
    )
    return parser


def print_args(args, cfg):
    print("***************")
    print("** Arguments **")
    print("***************")
    for key in sorted(args.__dict__):
        print(f"{key}: {args.__dict__[key]}")
    print("************")
    print("** Config **")
    print("************")
    print(cfg)


def reset_cfg(cfg, args):
    """Copy the CLI flags into ``cfg`` (a flag left at its default changes nothing)."""
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed is not None and args.seed >= 0:  # upstream's `if args.seed:` dropped --seed 0
        cfg.SEED = args.seed
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head
    if args.config_file:
        cfg.CONFIG_NAME = Path(args.config_file).stem


def _merge_file(cfg, path, flag):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path}: no such file")
    cfg.merge_from_file(path)


def setup_cfg(args):
    cfg = get_cfg_default()
    extend_cfg_for_all_trainers(cfg)
    if args.dataset_config_file:
        _merge_file(cfg, args.dataset_config_file, "--dataset-config-file")
    if args.config_file:
        _merge_file(cfg, args.config_file, "--config-file")
    reset_cfg(cfg, args)
    cfg.merge_from_list(args.opts or [])
    cfg.freeze()
    return cfg


def one_line(exc):
    """``exc``'s message on one line.

    A DataLoader worker's error reaches the main process re-raised with the worker's traceback in its
    message; its own message is then the last line (``module.Class: message``). Other multi-line
    messages (YAML parse errors) are joined.
    """
    message = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else str(exc)
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[1].startswith("Original Traceback"):
        last = lines[-1]
        for prefix in (f"{type(exc).__module__}.{type(exc).__qualname__}: ", f"{type(exc).__qualname__}: "):
            last = last[len(prefix):] if last.startswith(prefix) else last
        return last
    return " ".join(lines) or type(exc).__name__


def _config_error(exc):
    """One line for a config mistake (yacs raises KeyError/ValueError/AssertionError with the key in it)."""
    return f"Config error: {one_line(exc)}"


def main(args, cfg=None):
    if cfg is None:
        cfg = setup_cfg(args)
    if cfg.SEED >= 0:
        set_random_seed(cfg.SEED)

    lock = RunLock(cfg.OUTPUT_DIR)
    if not args.eval_only and not args.no_train and output_dir_action(cfg) == "skip":
        print(skip_message(cfg.OUTPUT_DIR))
        return
    lock_note = lock.acquire()  # before the logger: a refused run must not write into the active run's log
    try:
        setup_logger(cfg.OUTPUT_DIR)
        if lock_note:
            print(lock_note)
        if cfg.SEED >= 0:
            print(f"Setting fixed seed: {cfg.SEED}")
        configure_determinism(cfg)
        print_args(args, cfg)
        print("Collecting env info ...")
        print(f"** System info **\n{collect_env_info()}\n")

        trainer = build_trainer(cfg)
        if args.eval_only:
            trainer.load_model(args.model_dir, epoch=args.load_epoch)
            trainer.test()
            return
        if not args.no_train:
            trainer.train()
    finally:
        lock.release()


def cli(argv=None):
    """Run train.py with ``argv``; returns the exit code (user errors: one line on stderr, in the log too)."""
    args = build_parser().parse_args(argv)
    try:
        cfg = setup_cfg(args)  # validate the configuration before anything is written
    except (KeyError, ValueError, AssertionError, TypeError, FileNotFoundError, yaml.YAMLError, UserError) as exc:
        print(_config_error(exc), file=sys.stderr)
        return EXIT_CONFIG_ERROR
    try:
        main(args, cfg)
    except (UserError, UnknownNameError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"Error: {one_line(exc)}", file=sys.stderr)
        return EXIT_RUN_ERROR
    finally:
        close_logger()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
