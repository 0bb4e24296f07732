"""ImageNet-Sketch, test only: ``imagenet-sketch/images/<wnid>/`` + ``classnames.txt``; 1000 classes."""
from dpl.data.datasets import DATASET_REGISTRY, BenchmarkDataset
from dpl.data.datasets.imagenet_folders import read_imagenet_subset


@DATASET_REGISTRY.register()
class ImageNetSketch(BenchmarkDataset):
    dataset_dir = "imagenet-sketch"
    image_subdir = "images"
    data_files = ("classnames.txt",)
    test_only = True
    stem = "imagenet_sketch"
    expected_num_classes = 1000
    expected_counts = {"test": 50889}

    def read_data(self):
        data = read_imagenet_subset(self)
        return data, None, data
