"""Caltech101: ``caltech-101/101_ObjectCategories/<category>/`` + ``split_zhou_Caltech101.json``.

100 classes (50/50): the background and ``Faces_easy`` folders are not classes; four folders are
renamed to singular, lower-case names.
"""
from dpl.data.datasets import DATASET_REGISTRY, BenchmarkDataset, read_and_split_data

IGNORED_FOLDERS = ("BACKGROUND_Google", "Faces_easy")
NEW_CLASSNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}


@DATASET_REGISTRY.register()
class Caltech101(BenchmarkDataset):
    dataset_dir = "caltech-101"
    image_subdir = "101_ObjectCategories"
    split_file = "split_zhou_Caltech101.json"
    stem = "caltech101"
    expected_num_classes = 100
    expected_counts = {"train": 4128, "val": 1649, "test": 2465}

    def generate_split(self):
        return read_and_split_data(self.image_dir, ignored=IGNORED_FOLDERS, new_cnames=NEW_CLASSNAMES)
