"""``train.py``: the CoOp-compatible entry point (same flags, same config merge order, same main flow).

Merge order: defaults < trainers' ``extend_cfg`` < ``--dataset-config-file`` < ``--config-file``
< CLI flags < trailing ``KEY VALUE`` opts. Before anything is written, the run's identity
(``dpl.results.identity``) is compared with what ``--output-dir`` holds: a finished run of the same
experiment reruns its final test (``TRAIN.IF_EXISTS skip``: left alone), an unfinished one resumes,
a folder of another experiment is refused. SIGINT / SIGTERM / SIGUSR2 stop the run at the next step boundary
with its last checkpoint written (``dpl.engine.interrupts``).

Started by ``torchrun --nproc_per_node N``, the N processes train one run data-parallel
(``dpl.engine.distributed``): rank 0 decides nothing alone (every process reads the folder before rank 0
writes to it), then rank 0 alone prints, logs and writes; the others print only their errors, prefixed
with their rank.

Exit codes: 0 done; 1 a run error the user causes (data, weights, checkpoints, output folder, NaN
loss, a full disk): one line on stderr and in the log; 2 a command-line or config error (nothing
written); 130 / 143 / 140 stopped by SIGINT / SIGTERM / SIGUSR2 (run the same command again to continue). Other
exceptions are bugs and keep their traceback.
"""
import argparse
import contextlib
import errno
import os
import shlex
import signal
import sys
from pathlib import Path

import yaml

from dpl.config import get_cfg_default
from dpl.data.data_manager import check_global_batch
from dpl.engine import (
    OutputDirClaim,
    RunInterrupted,
    StopRequests,
    UserError,
    build_trainer,
    configure_determinism,
    extend_cfg_for_all_trainers,
)
from dpl.engine.build import adopt_upstream_settings, check_trainer_nodes
from dpl.engine.distributed import SINGLE_PROCESS, process_group, world_from_environment
from dpl.plugins import configure_run, gpu_required_line, load_plugins, plugin_paths
from dpl.results import identity as run_identity
from dpl.results import runs as run_states
from dpl.results import schema as results_schema
from dpl.utils import UnknownNameError, close_logger, collect_env_info, set_random_seed, setup_logger

EXIT_RUN_ERROR = 1
EXIT_CONFIG_ERROR = 2
EXIT_INTERRUPTED_SIGINT = 128 + signal.SIGINT  # as shells report a process stopped by the signal
EXIT_INTERRUPTED_SIGTERM = 128 + signal.SIGTERM
# What a config mistake raises (yacs: KeyError/ValueError/AssertionError naming the key) ...
CONFIG_ERRORS = (KeyError, ValueError, AssertionError, TypeError, FileNotFoundError, yaml.YAMLError, UserError)
# ... and what a run error the user can fix raises (a full or read-only disk: see ``disk_error_line``).
RUN_ERRORS = (UserError, UnknownNameError, FileNotFoundError, NotADirectoryError, PermissionError)
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


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
        "--plugin", action="append", default=[], metavar="PATH",
        help="trainer/dataset .py file or Dassl-style checkout to load (repeatable; also $DPL_PLUGINS)",
    )
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


def print_provenance(identity, code):
    """The run's id, the code and the command in the log (``results.json`` records them too)."""
    commit = code["git_commit"] or "not a git checkout"
    edits = ", with local edits" if code["git_dirty"] else ""
    print(f"Run id: {run_identity.run_id(identity)} (what defines the experiment is in results.json's identity)")
    print(f"Code: dpl {code['dpl_version']} (git {commit}{edits})")
    print(f"Command: {' '.join(shlex.quote(arg) for arg in sys.argv)} (in {os.getcwd()})")


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
    load_plugins(plugin_paths(args.plugin))  # before the defaults: a plugin may replace a trainer
    cfg = get_cfg_default()
    extend_cfg_for_all_trainers(cfg)
    if args.dataset_config_file:
        _merge_file(cfg, args.dataset_config_file, "--dataset-config-file")
    if args.config_file:
        _merge_file(cfg, args.config_file, "--config-file")
    reset_cfg(cfg, args)
    cfg.merge_from_list(args.opts or [])
    adopt_upstream_settings(cfg)  # values set under upstream names, where the trainer reads them
    check_trainer_nodes(cfg)  # refuses settings the trainer would ignore; main() logs the notes
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


def config_error_line(exc):
    """One line for a config mistake (yacs raises KeyError/ValueError/AssertionError with the key in it)."""
    return f"Config error: {one_line(exc)}"


def identity_of(args, cfg):
    """The identity of the run ``args``/``cfg`` ask for: an evaluation names the model it evaluates."""
    if not args.eval_only:
        return run_identity.run_identity(cfg)
    model = run_states.model_reference(args.model_dir, args.load_epoch) if args.model_dir else run_identity.UNTRAINED
    return run_identity.run_identity(cfg, model=model)


def main(args, cfg=None, stops=None, world=SINGLE_PROCESS):
    if cfg is None:
        cfg = setup_cfg(args)
    identity = identity_of(args, cfg)
    claim = OutputDirClaim(cfg, identity, evaluating=args.eval_only)  # decided before anything is built
    world.barrier()  # every process decided on the folder as it was, before rank 0 writes to it
    if claim.skip and not args.no_train:
        print(claim.skip_message())
        return
    if cfg.SEED >= 0:
        set_random_seed(cfg.SEED)  # on every process: the model starts the same everywhere

    # the lock before the logger: a refused run must not write into the active run's log
    with claim if world.is_main else contextlib.nullcontext():
        if world.is_main:
            setup_logger(cfg.OUTPUT_DIR)
        for note in configure_run(cfg) + check_trainer_nodes(cfg) + claim.notes:
            print(note)
        if cfg.SEED >= 0:
            print(f"Setting fixed seed: {cfg.SEED}")
        configure_determinism(cfg)
        print_args(args, cfg)
        print("Collecting env info ...")
        print(f"** System info **\n{collect_env_info()}\n")
        code = results_schema.code_version()
        print_provenance(identity, code)

        if world.distributed:
            print(f"Processes: {world.size} (torchrun), {world.backend}; the log is rank 0's")
        with world.main_first():  # rank 0 writes what the others then read (the few-shot split cache)
            trainer = build_trainer(cfg)
        trainer.run_identity, trainer.code_version, trainer.output_claim = identity, code, claim
        if stops is not None:
            trainer.stops = stops
        if args.eval_only:
            trainer.load_model(args.model_dir, epoch=args.load_epoch)
            trainer.test()
            return
        if not args.no_train:
            trainer.train()


def interrupted_line(exc, output_dir):
    """One line for a run stopped by a signal: what is kept and how to continue."""
    on_disk = run_states.latest_checkpoints(output_dir) if os.path.isdir(output_dir) else []
    last = exc.saved or (on_disk[0] if on_disk else "")
    kept = f"its last checkpoint {last} is kept" if last else "no checkpoint of it was written yet"
    return f"Interrupted by {exc.signal_name}: {kept}; run the same command again to continue"


def disk_error_line(exc):
    """One line for a full or read-only disk hit where no code turned it into a ``UserError``."""
    where = f"Cannot write {exc.filename}: " if exc.filename is not None else ""
    return f"Error: {where}{exc.strerror}"


def user_error_exit(exc):
    """``(one line, exit code)`` for a run error the user can fix; None for a bug (it keeps its traceback)."""
    gpu_line = gpu_required_line(exc)
    if gpu_line:
        return gpu_line, EXIT_RUN_ERROR
    if isinstance(exc, RUN_ERRORS):
        return f"Error: {one_line(exc)}", EXIT_RUN_ERROR
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:  # EACCES/EPERM arrive as PermissionError
        return disk_error_line(exc), EXIT_RUN_ERROR
    return None


def check_processes(args, cfg, world):
    """What a run on several processes needs: a seed (every process draws the same few-shot sample, data
    order and initial weights from it) and, for training, a global batch that divides among them."""
    if not world.distributed:
        return
    if cfg.SEED < 0:
        raise UserError(f"a run on {world.size} processes needs a fixed seed (--seed N or SEED N): each process "
                        "draws the few-shot sample and the data order from it")
    if not args.eval_only:
        check_global_batch(cfg.DATALOADER.TRAIN_X.BATCH_SIZE, world.size)


@contextlib.contextmanager
def printing_as(world):
    """Rank 0 prints (and logs); the other processes print nothing to stdout, so that the output of
    ``torchrun`` reads as one run's. Errors (stderr) stay every process's own."""
    if world.is_main:
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def rank_prefix(world):
    return f"[rank {world.rank}] " if not world.is_main else ""


def cli(argv=None):
    """Run train.py with ``argv``; returns the exit code (user errors: one line on stderr, in the log too)."""
    args = build_parser().parse_args(argv)
    try:
        cfg = setup_cfg(args)  # validate the configuration before anything is written
        world = world_from_environment()  # set by torchrun
        check_processes(args, cfg, world)
    except CONFIG_ERRORS as exc:
        print(config_error_line(exc), file=sys.stderr)
        return EXIT_CONFIG_ERROR
    try:
        with StopRequests() as stops, process_group(world, cfg.USE_CUDA) as joined, printing_as(world):
            main(args, cfg, stops, world=joined)
    except RunInterrupted as exc:
        if world.is_main:  # every process stopped at the same step; one line says so
            print(interrupted_line(exc, cfg.OUTPUT_DIR), file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        known = user_error_exit(exc)
        if known is None:
            raise
        print(rank_prefix(world) + known[0], file=sys.stderr)
        return known[1]
    finally:
        close_logger()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
