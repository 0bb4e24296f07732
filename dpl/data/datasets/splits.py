"""Split files and split generation (CoOp's schema), and the cheap image-existence check.

Split JSON schema (``split_zhou_<Name>.json``)::

    {"train": [[relative_impath, label, classname], ...], "val": [...], "test": [...]}

Paths are relative to a ``path_prefix`` (the image folder; StanfordCars: the dataset folder), joined
in front on read and stripped on write.

``read_and_split_data`` and ``split_trainval`` draw from Python's global ``random`` exactly as the
upstream routines do, so a regenerated split equals upstream's for the same random state. They run
only when a loader is asked to regenerate a split (``DATASET.REGENERATE_SPLIT``).
"""
import hashlib
import json
import os
import random
from collections import defaultdict

from dpl.utils.errors import InvalidInputError
from dpl.utils.tools import listdir_nohidden, write_json

from .datum import Datum

SPLIT_KEYS = ("train", "val", "test")


def read_split(filepath, path_prefix):
    """``(train, val, test)`` lists of :class:`Datum` read from a CoOp split file."""
    print(f"Reading split from {filepath}")
    try:
        with open(filepath, "r") as f:
            split = json.load(f)
    except json.JSONDecodeError as err:
        raise InvalidInputError(f"Split file {filepath} is not valid JSON ({err}); download it again.") from err
    missing = [key for key in SPLIT_KEYS if key not in split]
    if missing:
        raise InvalidInputError(f"Split file {filepath} has no {missing} entries (expected keys {list(SPLIT_KEYS)}).")
    return tuple(_items_from_rows(split[key], path_prefix, filepath) for key in SPLIT_KEYS)


def _items_from_rows(rows, path_prefix, filepath):
    try:
        return [Datum(impath=os.path.join(path_prefix, rel), label=int(label), classname=cname)
                for rel, label, cname in rows]
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"Split file {filepath}: rows must be [relative_path, label, classname] ({err}).") from err


def relative_path(impath, path_prefix):
    """``impath`` relative to ``path_prefix``; an error when it lies outside it."""
    prefix = path_prefix.rstrip(os.sep) + os.sep
    if impath.startswith(prefix):  # the common case, without relpath's cost (ImageNet lists 1.28M files)
        return impath[len(prefix):].replace(os.sep, "/")
    rel = os.path.relpath(impath, path_prefix)
    if rel.startswith(os.pardir + os.sep) or rel == os.pardir or os.path.isabs(rel):
        raise ValueError(f"Image {impath} is not inside {path_prefix}; it cannot be stored relative to it.")
    return rel.replace(os.sep, "/")


def save_split(train, val, test, filepath, path_prefix, overwrite=False):
    """Write a CoOp split file atomically. An existing file is kept unless ``overwrite``."""
    if os.path.exists(filepath) and not overwrite:
        raise FileExistsError(f"Split file {filepath} already exists; not overwriting it.")
    split = {key: [[relative_path(item.impath, path_prefix), item.label, item.classname] for item in items]
             for key, items in zip(SPLIT_KEYS, (train, val, test))}
    write_json(split, filepath)
    print(f"Saved split to {filepath}")


def read_and_split_data(image_dir, p_trn=0.5, p_val=0.2, ignored=(), new_cnames=None):
    """Split ``image_dir/<category>/*`` per category into train/val/test (upstream's draw order).

    Categories are sorted (label = index); each category's file list is shuffled with the global
    ``random`` and cut at ``round(n * p_trn)`` and ``round(n * p_val)``. ``new_cnames`` renames folders.
    """
    categories = sorted(c for c in listdir_nohidden(image_dir) if c not in ignored)
    p_tst = 1 - p_trn - p_val
    print(f"Splitting into {p_trn:.0%} train, {p_val:.0%} val, and {p_tst:.0%} test")
    new_cnames = new_cnames or {}
    train, val, test = [], [], []
    for label, category in enumerate(categories):
        category_dir = os.path.join(image_dir, category)
        images = [os.path.join(category_dir, name) for name in listdir_nohidden(category_dir)]
        random.shuffle(images)
        n_train, n_val = round(len(images) * p_trn), round(len(images) * p_val)
        if n_train < 1 or n_val < 1 or len(images) - n_train - n_val < 1:
            raise InvalidInputError(f"Category folder {category_dir} has {len(images)} images: too few to split "
                                    f"into train/val/test with p_trn={p_trn}, p_val={p_val}.")
        cname = new_cnames.get(category, category)
        train += [Datum(impath=im, label=label, classname=cname) for im in images[:n_train]]
        val += [Datum(impath=im, label=label, classname=cname) for im in images[n_train:n_train + n_val]]
        test += [Datum(impath=im, label=label, classname=cname) for im in images[n_train + n_val:]]
    return train, val, test


def split_trainval(trainval, p_val=0.2):
    """Per label, shuffle the item indices (global ``random``) and move the first ``round(n*p_val)`` to val."""
    print(f"Splitting trainval into {1 - p_val:.0%} train and {p_val:.0%} val")
    indices = defaultdict(list)
    for idx, item in enumerate(trainval):
        indices[item.label].append(idx)
    train, val = [], []
    for label, idxs in indices.items():
        n_val = round(len(idxs) * p_val)
        if n_val < 1:
            raise InvalidInputError(f"Label {label} has {len(idxs)} trainval items: too few for a val split (p_val={p_val}).")
        random.shuffle(idxs)
        val += [trainval[idx] for idx in idxs[:n_val]]
        train += [trainval[idx] for idx in idxs[n_val:]]
    return train, val


def read_classnames(text_file):
    """``{folder: classname}`` in file order from ImageNet's ``classnames.txt`` (``<wnid> <name words>``)."""
    classnames = {}
    with open(text_file, "r") as f:
        for line in f:
            parts = line.strip().split(" ")
            if parts[0]:
                classnames[parts[0]] = " ".join(parts[1:])
    return classnames


def class_folder_items(class_dir, label, classname):
    """One :class:`Datum` per visible file of ``class_dir``, in sorted order (portable across file systems)."""
    return [Datum(impath=os.path.join(class_dir, name), label=label, classname=classname)
            for name in listdir_nohidden(class_dir, sort=True)]


def subfolders(directory):
    """Sorted names of the visible sub-directories of ``directory``."""
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def content_key(splits, base_dir):
    """A SHA-256 hex digest of the listed items (paths relative to ``base_dir``, labels, class names).

    Used to tie a few-shot cache to the exact split it was drawn from.
    """
    digest = hashlib.sha256()
    for name, items in splits.items():
        digest.update(f"[{name}]\n".encode())
        for item in items:
            digest.update(f"{relative_path(item.impath, base_dir)}\t{item.label}\t{item.classname}\n".encode())
    return digest.hexdigest()


# Directories with at least this many listed files are listed once instead of stat-ing each file.
_LISTDIR_THRESHOLD = 16


def find_missing_files(paths):
    """The subset of ``paths`` that are not files, in input order, with few file-system calls."""
    by_dir = defaultdict(list)
    for path in paths:
        by_dir[os.path.dirname(path)].append(path)
    missing = set()
    for directory, wanted in by_dir.items():
        if len(wanted) < _LISTDIR_THRESHOLD:
            missing.update(p for p in wanted if not os.path.isfile(p))
            continue
        try:
            present = set(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            present = set()
        missing.update(p for p in wanted if os.path.basename(p) not in present)
    return [p for p in paths if p in missing]


def check_image_files(splits, dataset_name, hint=""):
    """Raise one ``FileNotFoundError`` naming the missing images of ``{split_name: items}``, if any."""
    problems = []
    for split_name, items in splits.items():
        missing = find_missing_files([item.impath for item in items or ()])
        if missing:
            problems.append(f"{len(missing)} of {len(items)} {split_name} images, e.g. {missing[0]}")
    if problems:
        raise FileNotFoundError(f"{dataset_name}: image files are missing: " + "; ".join(problems) + ". " + hint)
