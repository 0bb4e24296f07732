"""SUN397: ``sun397/SUN397/<letter>/<name>[/<sub>]/*.jpg`` + ``split_zhou_SUN397.json``.

397 classes (199/198) in ``ClassName.txt`` order; names are the path parts after the letter folder,
reversed (``/b/balcony/exterior`` -> ``exterior balcony``).
"""
import os

from dpl.data.datasets import DATASET_REGISTRY, BenchmarkDataset, Datum, split_trainval


def scene_name(class_path):
    """``"b/balcony/exterior"`` -> ``"exterior balcony"``."""
    return " ".join(class_path.split("/")[1:][::-1])


@DATASET_REGISTRY.register()
class SUN397(BenchmarkDataset):
    dataset_dir = "sun397"
    image_subdir = "SUN397"
    split_file = "split_zhou_SUN397.json"
    source_files = ("ClassName.txt", "Training_01.txt", "Testing_01.txt")
    stem = "sun397"
    expected_num_classes = 397
    expected_counts = {"train": 15880, "val": 3970, "test": 19850}

    def generate_split(self):
        with open(os.path.join(self.dataset_dir, "ClassName.txt")) as f:
            label_of = {line.strip()[1:]: i for i, line in enumerate(f) if line.strip()}
        trainval = self.read_partition("Training_01.txt", label_of)
        train, val = split_trainval(trainval, p_val=0.2)
        return train, val, self.read_partition("Testing_01.txt", label_of)

    def read_partition(self, name, label_of):
        """Lines ``/<letter>/<class path>/<image>.jpg``."""
        items = []
        with open(os.path.join(self.dataset_dir, name)) as f:
            for line in f:
                rel = line.strip()[1:]
                if rel:
                    class_path = os.path.dirname(rel)
                    items.append(Datum(impath=os.path.join(self.image_dir, rel), label=label_of[class_path],
                                       classname=scene_name(class_path)))
        return items
