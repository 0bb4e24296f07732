"""ImageNet-A, test only: ``imagenet-adversarial/imagenet-a/<wnid>/`` (200 of ImageNet's classes) +
``classnames.txt`` (ImageNet's). Labels are re-indexed 0..199 in sorted wnid order and the class
names are ImageNet's, so the text side uses exactly these 200 names."""
from dpl.data.datasets import DATASET_REGISTRY, BenchmarkDataset
from dpl.data.datasets.imagenet_folders import read_imagenet_subset


@DATASET_REGISTRY.register()
class ImageNetA(BenchmarkDataset):
    dataset_dir = "imagenet-adversarial"
    image_subdir = "imagenet-a"
    data_files = ("classnames.txt",)
    test_only = True
    stem = "imagenet_a"
    expected_num_classes = 200
    expected_counts = {"test": 7500}

    def read_data(self):
        data = read_imagenet_subset(self)
        return data, None, data
