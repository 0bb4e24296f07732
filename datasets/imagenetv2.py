"""ImageNetV2 (matched frequency), test only: ``imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/``
+ ``classnames.txt`` (ImageNet's; line i names folder i)."""
import os

from dpl.data.datasets import DATASET_REGISTRY, BenchmarkDataset, class_folder_items
from dpl.data.datasets.imagenet_folders import read_imagenet_classnames


@DATASET_REGISTRY.register()
class ImageNetV2(BenchmarkDataset):
    dataset_dir = "imagenetv2"
    image_subdir = "imagenetv2-matched-frequency-format-val"
    data_files = ("classnames.txt",)
    test_only = True
    stem = "imagenetv2"
    expected_num_classes = 1000
    expected_counts = {"test": 10000}

    def read_data(self):
        classnames = list(read_imagenet_classnames(self.dataset_dir, self.name).values())
        data = []
        for label, classname in enumerate(classnames):
            class_dir = os.path.join(self.image_dir, str(label))
            if not os.path.isdir(class_dir):
                raise FileNotFoundError(f"ImageNetV2: class folder {class_dir} not found (expected folders 0.."
                                        f"{len(classnames) - 1}, one per line of classnames.txt). {self.checker_hint}")
            data += class_folder_items(class_dir, label, classname)
        return data, None, data
