"""DTD (Describable Textures): ``dtd/images/<category>/*.jpg`` + ``split_zhou_DescribableTextures.json``.

47 classes (24 base / 23 new) in alphabetical folder order.
"""
from dpl.data.datasets import DATASET_REGISTRY, BenchmarkDataset, read_and_split_data


@DATASET_REGISTRY.register()
class DescribableTextures(BenchmarkDataset):
    dataset_dir = "dtd"
    image_subdir = "images"
    split_file = "split_zhou_DescribableTextures.json"
    stem = "dtd"
    expected_num_classes = 47
    expected_counts = {"train": 2820, "val": 1128, "test": 1692}

    def generate_split(self):
        return read_and_split_data(self.image_dir, p_trn=0.5, p_val=0.2)
