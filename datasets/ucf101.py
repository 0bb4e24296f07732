"""UCF101 (middle frames): ``ucf101/UCF-101-midframes/<Action_Name>/*.jpg``, ``ucfTrainTestlist/`` +
``split_zhou_UCF101.json``; 101 classes (51/50) in ``classInd.txt`` order, CamelCase action names
split with underscores (``ApplyEyeMakeup`` -> ``Apply_Eye_Makeup``)."""
import os
import re

from dpl.data.datasets import DATASET_REGISTRY, BenchmarkDataset, Datum, split_trainval


def underscored(action):
    """``"ApplyEyeMakeup"`` -> ``"Apply_Eye_Makeup"``."""
    return "_".join(re.findall("[A-Z][^A-Z]*", action))


@DATASET_REGISTRY.register()
class UCF101(BenchmarkDataset):
    dataset_dir = "ucf101"
    image_subdir = "UCF-101-midframes"
    split_file = "split_zhou_UCF101.json"
    source_files = ("ucfTrainTestlist/classInd.txt", "ucfTrainTestlist/trainlist01.txt",
                    "ucfTrainTestlist/testlist01.txt")
    stem = "ucf101"
    expected_num_classes = 101
    expected_counts = {"train": 7639, "val": 1898, "test": 3783}

    def generate_split(self):
        label_of = {}
        with open(os.path.join(self.dataset_dir, "ucfTrainTestlist", "classInd.txt")) as f:
            for line in f:
                if line.strip():
                    label, action = line.split()
                    label_of[action] = int(label) - 1
        trainval = self.read_list("trainlist01.txt", label_of)
        train, val = split_trainval(trainval, p_val=0.2)
        return train, val, self.read_list("testlist01.txt", label_of)

    def read_list(self, name, label_of):
        """Lines ``<Action>/v_<Action>_gXX_cYY.avi [label]``: the middle frame is the ``.jpg`` of that name."""
        items = []
        with open(os.path.join(self.dataset_dir, "ucfTrainTestlist", name)) as f:
            for line in f:
                if line.strip():
                    action, video = line.split()[0].split("/")
                    folder = underscored(action)
                    items.append(Datum(impath=os.path.join(self.image_dir, folder, video.replace(".avi", ".jpg")),
                                       label=label_of[action], classname=folder))
        return items
