"""Food101: ``food-101/images/<dish>/`` + ``split_zhou_Food101.json``; 101 classes (51/50)."""
from dpl.data.datasets import DATASET_REGISTRY, BenchmarkDataset, read_and_split_data


@DATASET_REGISTRY.register()
class Food101(BenchmarkDataset):
    dataset_dir = "food-101"
    image_subdir = "images"
    split_file = "split_zhou_Food101.json"
    stem = "food101"
    expected_num_classes = 101
    expected_counts = {"train": 50500, "val": 20200, "test": 30300}

    def generate_split(self):
        return read_and_split_data(self.image_dir)
