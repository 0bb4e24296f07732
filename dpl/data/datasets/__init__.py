"""Datasets: Dassl's ``dassl.data.datasets`` surface plus the shared CoOp benchmark routine.

``DATASET_REGISTRY``, ``build_dataset``, ``Datum``, ``DatasetBase`` keep Dassl's names;
``BenchmarkDataset`` is what the loaders in ``datasets/`` build on (split reading, few-shot sampling
and caches, base/new and long-tail subsampling, file checks).
"""
from .base_dataset import DatasetBase
from .benchmark import COOP_DATASETS_DOC, BenchmarkDataset
from .build import DATASET_REGISTRY, build_dataset
from .datum import Datum
from .fewshot_cache import fewshot_splits, portable_cache_path, upstream_cache_path
from .sampling import sample_fewshot
from .splits import (check_image_files, class_folder_items, subfolders, find_missing_files, read_and_split_data, read_classnames, read_split,
                     save_split, split_trainval)
from .subsample import (LONG_TAIL_GROUP_THRESHOLDS, LONG_TAIL_GROUPS, long_tail_groups, long_tail_profile,
                        subsample_classes, subsample_long_tail)

__all__ = [
    "DATASET_REGISTRY", "build_dataset", "Datum", "DatasetBase", "BenchmarkDataset", "COOP_DATASETS_DOC",
    "sample_fewshot", "fewshot_splits", "upstream_cache_path", "portable_cache_path",
    "read_split", "save_split", "read_and_split_data", "split_trainval", "read_classnames",
    "check_image_files", "find_missing_files", "class_folder_items", "subfolders",
    "subsample_classes", "subsample_long_tail", "long_tail_profile", "long_tail_groups",
    "LONG_TAIL_GROUP_THRESHOLDS", "LONG_TAIL_GROUPS",
]
