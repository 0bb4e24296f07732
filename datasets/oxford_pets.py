"""Oxford-IIIT Pets: ``oxford_pets/images/*.jpg``, ``annotations/{trainval,test}.txt`` +
``split_zhou_OxfordPets.json``; 37 classes (19/18) in annotation order, lower-case breed names."""
import os

from dpl.data.datasets import DATASET_REGISTRY, BenchmarkDataset, Datum, split_trainval


@DATASET_REGISTRY.register()
class OxfordPets(BenchmarkDataset):
    dataset_dir = "oxford_pets"
    image_subdir = "images"
    split_file = "split_zhou_OxfordPets.json"
    source_files = ("annotations/trainval.txt", "annotations/test.txt")
    stem = "oxford_pets"
    expected_num_classes = 37
    expected_counts = {"train": 2944, "val": 736, "test": 3669}

    def generate_split(self):
        train, val = split_trainval(self.read_annotations("trainval.txt"), p_val=0.2)
        return train, val, self.read_annotations("test.txt")

    def read_annotations(self, split_file):
        """Lines ``<Breed_name>_<n> <class id> <species> <breed id>``; the class name is the breed, lower-cased."""
        items = []
        with open(os.path.join(self.dataset_dir, "annotations", split_file)) as f:
            for line in f:
                if not line.strip() or line.startswith("#"):
                    continue
                imname, label = line.split()[:2]
                breed = "_".join(imname.split("_")[:-1]).lower()
                items.append(Datum(impath=os.path.join(self.image_dir, imname + ".jpg"), label=int(label) - 1,
                                   classname=breed))
        return items
