"""EuroSAT: ``eurosat/2750/<Class>/`` + ``split_zhou_EuroSAT.json``; 10 classes (5/5) with
descriptive class names (``AnnualCrop`` -> ``Annual Crop Land``)."""
from dpl.data.datasets import DATASET_REGISTRY, BenchmarkDataset, read_and_split_data

NEW_CLASSNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@DATASET_REGISTRY.register()
class EuroSAT(BenchmarkDataset):
    dataset_dir = "eurosat"
    image_subdir = "2750"
    split_file = "split_zhou_EuroSAT.json"
    stem = "eurosat"
    expected_num_classes = 10
    expected_counts = {"train": 13500, "val": 5400, "test": 8100}

    def generate_split(self):
        return read_and_split_data(self.image_dir, new_cnames=NEW_CLASSNAMES)
