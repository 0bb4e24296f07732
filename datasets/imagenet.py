"""ImageNet: ``imagenet/images/{train,val}/<wnid>/`` + ``classnames.txt`` (``<wnid> <class name>``).

1000 classes (500/500), label = index of the wnid in sorted order; the val set is the test set (and
the validation set); only train is few-shot sampled. The layout is validated on every load (no
reuse of a listing made from another layout, unlike upstream's ``preprocessed.pkl``): a flat
``images/val`` folder is an error that says how to sort it.
"""
import os

from dpl.data.datasets import DATASET_REGISTRY, BenchmarkDataset, subfolders
from dpl.data.datasets.imagenet_folders import check_known_wnids, read_class_folders, read_imagenet_classnames
from dpl.utils.errors import InvalidInputError


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
