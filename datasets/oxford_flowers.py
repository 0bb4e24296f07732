"""Oxford Flowers-102: ``oxford_flowers/jpg/image_#####.jpg``, ``imagelabels.mat``,
``cat_to_name.json`` + ``split_zhou_OxfordFlowers.json``; 102 classes (51/51)."""
import os
import random
from collections import defaultdict

from dpl.data.datasets import DATASET_REGISTRY, BenchmarkDataset, Datum
from dpl.utils.errors import InvalidInputError
from dpl.utils.tools import read_json


@DATASET_REGISTRY.register()
class OxfordFlowers(BenchmarkDataset):
    dataset_dir = "oxford_flowers"
    image_subdir = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"
    source_files = ("imagelabels.mat", "cat_to_name.json")
    stem = "oxford_flowers"
    expected_num_classes = 102
    expected_counts = {"train": 4093, "val": 1633, "test": 2463}

    def generate_split(self):
        """Per class (in order of first appearance in imagelabels.mat): shuffle, then 50% / 20% / 30%."""
        from scipy.io import loadmat

        impaths_by_label = defaultdict(list)
        for i, label in enumerate(loadmat(os.path.join(self.dataset_dir, "imagelabels.mat"))["labels"][0]):
            impaths_by_label[int(label)].append(os.path.join(self.image_dir, f"image_{i + 1:05d}.jpg"))
        cat_to_name = read_json(os.path.join(self.dataset_dir, "cat_to_name.json"))
        print("Splitting data into 50% train, 20% val, and 30% test")
        train, val, test = [], [], []
        for label, impaths in impaths_by_label.items():
            random.shuffle(impaths)
            n_train, n_val = round(len(impaths) * 0.5), round(len(impaths) * 0.2)
            if n_train < 1 or n_val < 1 or len(impaths) - n_train - n_val < 1:
                raise InvalidInputError(f"OxfordFlowers: class {label} has {len(impaths)} images, too few to split")
            items = [Datum(impath=p, label=label - 1, classname=cat_to_name[str(label)]) for p in impaths]
            train += items[:n_train]
            val += items[n_train:n_train + n_val]
            test += items[n_train + n_val:]
        return train, val, test
