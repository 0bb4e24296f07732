"""Stanford Cars: ``stanford_cars/{cars_train,cars_test}/``, ``devkit/`` mats +
``split_zhou_StanfordCars.json`` whose paths are relative to ``stanford_cars/`` itself.

196 classes (98/98) in annotation order; names reordered to ``"<year> <make model>"``.
"""
import os

from dpl.data.datasets import DATASET_REGISTRY, BenchmarkDataset, Datum, split_trainval


def year_first(classname):
    """``"AM General Hummer SUV 2000"`` -> ``"2000 AM General Hummer SUV"``."""
    words = classname.split(" ")
    return " ".join([words[-1]] + words[:-1])


@DATASET_REGISTRY.register()
class StanfordCars(BenchmarkDataset):
    dataset_dir = "stanford_cars"
    image_subdir = "cars_train"
    split_prefix_subdir = ""  # split paths start with cars_train/ or cars_test/
    split_file = "split_zhou_StanfordCars.json"
    data_files = ("cars_test",)
    source_files = ("devkit/cars_train_annos.mat", "devkit/cars_meta.mat", "cars_test_annos_withlabels.mat")
    stem = "stanford_cars"
    expected_num_classes = 196
    expected_counts = {"train": 6509, "val": 1635, "test": 8041}

    def generate_split(self):
        meta = os.path.join(self.dataset_dir, "devkit", "cars_meta.mat")
        trainval = self.read_annotations("cars_train", os.path.join(self.dataset_dir, "devkit", "cars_train_annos.mat"), meta)
        test = self.read_annotations("cars_test", os.path.join(self.dataset_dir, "cars_test_annos_withlabels.mat"), meta)
        train, val = split_trainval(trainval, p_val=0.2)
        return train, val, test

    def read_annotations(self, image_subdir, anno_file, meta_file):
        from scipy.io import loadmat

        annotations = loadmat(anno_file)["annotations"][0]
        class_names = loadmat(meta_file)["class_names"][0]
        items = []
        for anno in annotations:
            label = int(anno["class"][0, 0]) - 1
            items.append(Datum(impath=os.path.join(self.dataset_dir, image_subdir, str(anno["fname"][0])),
                               label=label, classname=year_first(str(class_names[label][0]))))
        return items
