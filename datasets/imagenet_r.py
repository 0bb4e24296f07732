"""ImageNet-R, test only: ``imagenet-rendition/imagenet-r/<wnid>/`` (200 of ImageNet's classes) +
``classnames.txt`` (ImageNet's); labels re-indexed 0..199 in sorted wnid order, ImageNet class names."""
from dpl.data.datasets import DATASET_REGISTRY, BenchmarkDataset
from dpl.data.datasets.imagenet_folders import read_imagenet_subset


@DATASET_REGISTRY.register()
class ImageNetR(BenchmarkDataset):
    dataset_dir = "imagenet-rendition"
    image_subdir = "imagenet-r"
    data_files = ("classnames.txt",)
    test_only = True
    stem = "imagenet_r"
    expected_num_classes = 200
    expected_counts = {"test": 30000}

    def read_data(self):
        data = read_imagenet_subset(self)
        return data, None, data
