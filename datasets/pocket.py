"""Pocket: generated coloured shapes on coloured backgrounds ("red shape on white", ...), the offline default dataset.

36 classes = 6 shape colours x 6 background colours (18 base / 18 new; each colour appears in both halves).
The images are generated on first use under ``DATASET.ROOT/pocket`` (see ``dpl.pocket.files``); after
that the loader is an ordinary CoOp loader: split file, few-shot draw and cache, base/new subsampling.
"""
import os

from dpl.data.datasets import DATASET_REGISTRY, BenchmarkDataset
from dpl.pocket import files
from dpl.pocket.shapes import class_names


@DATASET_REGISTRY.register()
class Pocket(BenchmarkDataset):
    dataset_dir = files.DATASET_DIR
    image_subdir = files.IMAGE_SUBDIR
    split_file = files.SPLIT_FILE
    stem = "pocket"
    expected_num_classes = len(class_names())
    expected_counts = {key: count * len(class_names()) for key, count in files.SPLIT_COUNTS.items()}

    def __init__(self, cfg):
        if not cfg.DATASET.ROOT:
            raise ValueError("DATASET.ROOT is empty: set it (or DATA for the scripts) to a folder where "
                             "the pocket dataset can be generated")
        files.ensure_pocket_dataset(os.path.expanduser(cfg.DATASET.ROOT))
        super().__init__(cfg)
