"""List or clear the image feature cache: ``python -m dpl.tools.feature_cache {list,clear} [--dataset NAME]``.

The folder is ``$DPL_FEATURE_CACHE`` (else ``$XDG_CACHE_HOME/dpl/image_features``, else
``~/.cache/dpl/image_features``); what it holds is described in ``dpl.evaluation.feature_cache``.
``list`` prints one line per file (dataset, split, images, size, created, the weights' SHA-256 prefix,
path); ``clear`` removes every file, or those of one dataset (``--dataset``, its ``DATASET.NAME``).
Exit status 0, or 1 with one ``feature_cache: ...`` line (cache off, not a folder, no such dataset).
"""
import argparse
import sys
from pathlib import Path

from dpl.evaluation.feature_cache import CACHE_ENV, OFF_VALUE, SUFFIX, cache_files, cache_folder

PROG = "feature_cache"


class CommandError(Exception):
    """One line for the user; exit status 1."""


def _folder():
    folder = cache_folder()
    if folder is None:
        raise CommandError(f"the image feature cache is off ({CACHE_ENV}={OFF_VALUE}): unset {CACHE_ENV} "
                           "or point it at a folder")
    if folder.exists() and not folder.is_dir():
        raise CommandError(f"{folder} is not a folder: point {CACHE_ENV} at the cache folder")
    return folder


def _size(num_bytes):
    for unit in ("B", "KiB", "MiB"):
        if num_bytes < 1024:
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} GiB"


def _line(file):
    if file.meta is None:
        return f"(unusable: {file.problem})  {_size(file.size)}  {file.path}"
    meta = file.meta
    return (f"{meta.get('dataset')}  {meta.get('split')}  {meta.get('num_images')} images  {_size(file.size)}  "
            f"{meta.get('created')}  weights {str(meta.get('weights_sha256'))[:12]}  {file.path}")


def list_files(folder):
    files = cache_files(folder) if folder.is_dir() else []
    for file in files:
        print(_line(file))
    total = sum(file.size for file in files)
    print(f"{len(files)} file{'s' * (len(files) != 1)}, {_size(total)} in {folder}")


def _leftover_temp_files(folder):
    # atomic_open's temporary names: what a writer killed mid-write (SIGKILL) leaves behind
    return [path for path in Path(folder).glob(f".*{SUFFIX}.*.tmp") if path.is_file()]


def clear_files(folder, dataset=None):
    files = cache_files(folder) if folder.is_dir() else []
    if dataset is not None:
        chosen = [file for file in files if file.meta is not None and file.meta.get("dataset") == dataset]
        if not chosen:
            cached = sorted({str(file.meta.get("dataset")) for file in files if file.meta is not None})
            raise CommandError(f"no cached features of dataset {dataset!r} in {folder} "
                               f"(cached: {', '.join(cached) or 'none'}); the name is DATASET.NAME, e.g. "
                               "DescribableTextures")
        paths = [file.path for file in chosen]
    else:
        paths = [file.path for file in files] + _leftover_temp_files(folder)
    size = 0
    for path in paths:
        try:
            size += path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue  # removed by another process meanwhile
    print(f"removed {len(paths)} file{'s' * (len(paths) != 1)} ({_size(size)}) from {folder}")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m dpl.tools.feature_cache", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="one line per cached evaluation set")
    clear = commands.add_parser("clear", help="remove every cached file, or those of --dataset")
    clear.add_argument("--dataset", default=None, help="only this dataset (its DATASET.NAME, e.g. DescribableTextures)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        folder = _folder()
        if args.command == "list":
            list_files(folder)
        else:
            clear_files(folder, args.dataset)
    except CommandError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # no permission to read or remove
        print(f"{PROG}: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
