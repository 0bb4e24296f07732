"""ImageNet: ``imagenet/images/{train,val}/<wnid>/`` + ``classnames.txt`` (``<wnid> <class name>``).

1000 classes (500/500), label = index of the wnid in sorted order; the val set is the test set (and
the validation set); only train is few-shot sampled. The layout is validated on every load (no
reuse of a listing made from another layout, unlike upstream's ``preprocessed.pkl``): a flat
``images/val`` folder is an error that says how to sort it.
"""
import os

from dpl.data.datasets import (COOP_DATASETS_DOC, DATASET_REGISTRY, BenchmarkDataset, class_folder_items,
                               read_classnames, subfolders)
from dpl.utils.errors import InvalidInputError


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


@DATASET_REGISTRY.register()
class ImageNet(BenchmarkDataset):
    dataset_dir = "imagenet"
    image_subdir = "images"
    data_files = ("classnames.txt", "images/train", "images/val")
    fewshot_val = False
    stem = "imagenet"
    expected_num_classes = 1000
    expected_counts = {"train": 1281167, "val": 50000, "test": 50000}

    def read_data(self):
        classnames = read_imagenet_classnames(self.dataset_dir, self.name)
        train_dir, val_dir = os.path.join(self.image_dir, "train"), os.path.join(self.image_dir, "val")
        folders = self.class_folders(train_dir, classnames)
        val_folders = self.class_folders(val_dir, classnames)
        if val_folders != folders:
            only = sorted(set(folders) ^ set(val_folders))
            raise InvalidInputError(f"ImageNet: {train_dir} and {val_dir} hold different class folders "
                                    f"({len(only)} differ, e.g. {only[0]!r}); both need one folder per wnid.")
        train = read_class_folders(train_dir, folders, classnames)
        test = read_class_folders(val_dir, folders, classnames)
        return train, test, test

    def class_folders(self, split_dir, classnames):
        if not os.path.isdir(split_dir):
            raise FileNotFoundError(f"ImageNet: {split_dir} not found; extract ILSVRC2012 there (one folder per "
                                    f"wnid). {self.checker_hint}")
        folders = subfolders(split_dir)
        if not folders:
            raise InvalidInputError(f"ImageNet: {split_dir} holds no class folders. The val images must be sorted "
                                    "into one folder per wnid (e.g. with the widely used valprep.sh) before use.")
        check_known_wnids(folders, classnames, split_dir, self.name)
        return folders


def read_imagenet_subset(loader):
    """Items of ``loader.image_dir/<wnid>/`` for the (sorted) wnid folders present, labelled 0..n-1 and
    named with ImageNet's class names (ImageNet-Sketch, -A, -R). Files beside the folders are ignored."""
    classnames = read_imagenet_classnames(loader.dataset_dir, loader.name)
    if not os.path.isdir(loader.image_dir):
        raise FileNotFoundError(f"{loader.name}: image folder {loader.image_dir} not found. {loader.checker_hint}")
    folders = subfolders(loader.image_dir)
    check_known_wnids(folders, classnames, loader.image_dir, loader.name)
    return read_class_folders(loader.image_dir, folders, classnames)
