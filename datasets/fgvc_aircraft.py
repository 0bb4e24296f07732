"""FGVC-Aircraft: ``fgvc_aircraft/`` (the ``data/`` folder of fgvc-aircraft-2013b) with ``images/``,
``variants.txt`` and the official ``images_variant_{train,val,test}.txt`` split (no CoOp split file).

100 classes (50/50) in ``variants.txt`` order.
"""
import os

from dpl.data.datasets import DATASET_REGISTRY, BenchmarkDataset, Datum
from dpl.utils.errors import InvalidInputError

SPLIT_FILES = ("images_variant_train.txt", "images_variant_val.txt", "images_variant_test.txt")


@DATASET_REGISTRY.register()
class FGVCAircraft(BenchmarkDataset):
    dataset_dir = "fgvc_aircraft"
    image_subdir = "images"
    data_files = ("variants.txt",) + SPLIT_FILES
    stem = "fgvc_aircraft"
    expected_num_classes = 100
    expected_counts = {"train": 3334, "val": 3333, "test": 3333}

    def read_data(self):
        for name in self.data_files:
            if not os.path.isfile(os.path.join(self.dataset_dir, name)):
                raise FileNotFoundError(f"FGVCAircraft: {os.path.join(self.dataset_dir, name)} not found; it ships in "
                                        f"the data/ folder of fgvc-aircraft-2013b. {self.checker_hint}")
        with open(os.path.join(self.dataset_dir, "variants.txt")) as f:
            label_of = {line.strip(): i for i, line in enumerate(f) if line.strip()}
        return tuple(self.read_variant_file(name, label_of) for name in SPLIT_FILES)

    def read_variant_file(self, name, label_of):
        """Lines ``<image id> <variant name with spaces>``."""
        items = []
        with open(os.path.join(self.dataset_dir, name)) as f:
            for line in f:
                if not line.strip():
                    continue
                image_id, variant = line.strip().split(" ", 1)
                if variant not in label_of:
                    raise InvalidInputError(f"FGVCAircraft: {name} lists variant {variant!r} that variants.txt lacks")
                items.append(Datum(impath=os.path.join(self.image_dir, image_id + ".jpg"), label=label_of[variant],
                                   classname=variant))
        return items
