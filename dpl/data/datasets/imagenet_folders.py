"""Reading ImageNet-style class folders (``<wnid>/`` per class, ``classnames.txt``): ImageNet and its variants."""
import os

from dpl.utils.errors import InvalidInputError

from .benchmark import COOP_DATASETS_DOC
from .splits import class_folder_items, read_classnames, subfolders


def read_imagenet_classnames(dataset_dir, name):
    """``{wnid: class name}`` from ``<dataset_dir>/classnames.txt`` (an error saying where to get it)."""
    path = os.path.join(dataset_dir, "classnames.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: {path} not found. It is ImageNet's class-name list (`<wnid> <name>` per "
                                f"line), published through CoOp's DATASETS.md ({COOP_DATASETS_DOC}).")
    return read_classnames(path)


def check_known_wnids(folders, classnames, where, name):
    unknown = [f for f in folders if f not in classnames]
    if unknown:
        raise InvalidInputError(f"{name}: {len(unknown)} class folders of {where} are not in classnames.txt "
                                f"(e.g. {unknown[0]!r}); is this the right folder?")


def read_class_folders(split_dir, folders, classnames):
    """Items of ``split_dir/<folder>/`` with label = position of the folder in ``folders``."""
    items = []
    for label, folder in enumerate(folders):
        items += class_folder_items(os.path.join(split_dir, folder), label, classnames[folder])
    return items


def read_imagenet_subset(loader):
    """Items of ``loader.image_dir/<wnid>/`` for the (sorted) wnid folders present, labelled 0..n-1 and
    named with ImageNet's class names (ImageNet-Sketch, -A, -R). Files beside the folders are ignored."""
    classnames = read_imagenet_classnames(loader.dataset_dir, loader.name)
    if not os.path.isdir(loader.image_dir):
        raise FileNotFoundError(f"{loader.name}: image folder {loader.image_dir} not found. {loader.checker_hint}")
    folders = subfolders(loader.image_dir)
    check_known_wnids(folders, classnames, loader.image_dir, loader.name)
    return read_class_folders(loader.image_dir, folders, classnames)
