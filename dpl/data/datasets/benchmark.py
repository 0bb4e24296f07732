"""``BenchmarkDataset``: the one routine every CoOp benchmark loader runs.

A loader in ``datasets/<stem>.py`` subclasses it, registers itself and declares only what is
particular to its dataset::

    @DATASET_REGISTRY.register()
    class DescribableTextures(BenchmarkDataset):
        dataset_dir = "dtd"                                   # folder under DATASET.ROOT
        image_subdir = "images"                               # split paths are relative to it
        split_file = "split_zhou_DescribableTextures.json"    # None: read_data() gives the split
        def generate_split(self):                             # only with DATASET.REGENERATE_SPLIT
            return read_and_split_data(self.image_dir)

Construction (``Loader(cfg)``) then does, in upstream's order:

1. the full train/val/test lists: the split file (``read_split``), or ``read_data()`` for datasets
   whose official split is in their own files; a missing split file is an error that says where to
   get it, unless ``DATASET.REGENERATE_SPLIT`` asks for ``generate_split()`` (written atomically);
2. ``DATASET.NUM_SHOTS``: few-shot train/val from a cache or Dassl's draw (``fewshot_cache``);
3. ``DATASET.SUBSAMPLE_CLASSES``: base/new classes, relabelled;
4. ``DATASET.IMBALANCE_RATIO > 1``: long-tail training profile, seeded with ``SEED``;
5. one cheap check that every listed image exists (an error naming the missing files).

Test-only datasets (``test_only = True``: ImageNetV2/-Sketch/-A/-R) return ``read_data()`` as
``train_x = test`` and ignore the few-shot and subsampling keys, as upstream does.
"""
import os

from dpl.utils.errors import InvalidInputError

from .base_dataset import DatasetBase
from .fewshot_cache import CACHE_DIRNAME, fewshot_splits
from .splits import check_image_files, read_split, save_split
from .subsample import subsample_classes, subsample_long_tail

COOP_DATASETS_DOC = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"


class BenchmarkDataset(DatasetBase):
    """Shared loader of the CoOp benchmark datasets (see the module docstring)."""

    dataset_dir = ""  # folder under DATASET.ROOT
    image_subdir = "images"  # image folder, relative to dataset_dir
    split_file = None  # CoOp split JSON in dataset_dir; None: read_data() returns the official split
    split_prefix_subdir = None  # what split paths are relative to (relative to dataset_dir); None = image_subdir
    data_files = ()  # further files/folders (relative to dataset_dir) read on every load
    source_files = ()  # files read only to regenerate the split (DATASET.REGENERATE_SPLIT)
    fewshot_val = True  # ImageNet: False (its val is its test set; only train is few-shot)
    test_only = False  # ImageNetV2/-Sketch/-A/-R
    stem = ""  # config stem: configs/datasets/<stem>.yaml, the scripts' dataset argument
    expected_counts = {}  # published image counts per split, for dpl.tools.check_data
    expected_num_classes = None

    def __init__(self, cfg):
        self.init_paths(cfg.DATASET.ROOT)
        if not os.path.isdir(self.dataset_dir):
            raise FileNotFoundError(
                f"{self.name}: dataset folder {self.dataset_dir} not found (DATASET.ROOT = {cfg.DATASET.ROOT!r}). "
                f"Prepare it as in CoOp's DATASETS.md ({COOP_DATASETS_DOC}); {self.checker_hint}"
            )
        train, val, test = self.full_splits(cfg)
        train, val, test = self.apply_protocol(cfg, train, val, test)
        self.check_files(train, val, test)
        super().__init__(train_x=train, val=val, test=test)

    @property
    def name(self):
        return type(self).__name__

    @property
    def checker_hint(self):
        return f"`python -m dpl.tools.check_data --root {self.root} {self.stem or self.name}` lists what is missing."

    def init_paths(self, root):
        """Absolute paths of this dataset under ``root`` (Dassl loaders' instance attributes)."""
        cls = type(self)
        self.root = os.path.abspath(os.path.expanduser(root))
        self.dataset_dir = os.path.join(self.root, cls.dataset_dir)
        self.image_dir = os.path.join(self.dataset_dir, cls.image_subdir)
        prefix = cls.image_subdir if cls.split_prefix_subdir is None else cls.split_prefix_subdir
        self.split_prefix = os.path.join(self.dataset_dir, prefix) if prefix else self.dataset_dir
        self.split_path = os.path.join(self.dataset_dir, cls.split_file) if cls.split_file else None
        self.split_fewshot_dir = os.path.join(self.dataset_dir, CACHE_DIRNAME)

    # -- what loaders provide ------------------------------------------------------------------
    def read_data(self):
        """``(train, val, test)`` for loaders without a CoOp split file (``split_file = None``)."""
        raise NotImplementedError(f"{self.name} sets no split_file and must implement read_data()")

    def generate_split(self):
        """A new random ``(train, val, test)`` (global ``random``, upstream's routine)."""
        raise NotImplementedError(f"{self.name} cannot regenerate its split file")

    # -- the shared routine --------------------------------------------------------------------
    def full_splits(self, cfg):
        """The full ``(train, val, test)`` before few-shot and class subsampling."""
        if self.split_path is None:
            return self.read_data()
        if os.path.isfile(self.split_path):
            return read_split(self.split_path, self.split_prefix)
        if not cfg.DATASET.REGENERATE_SPLIT:
            raise FileNotFoundError(
                f"{self.name}: split file {self.split_path} not found. It belongs in {self.dataset_dir}/ "
                f"(next to {type(self).image_subdir}/); upstream publishes {type(self).split_file} through the "
                f"links in CoOp's DATASETS.md ({COOP_DATASETS_DOC}). To write a new random split instead "
                "(results are then not comparable with published ones), set DATASET.REGENERATE_SPLIT True."
            )
        print(f"DATASET.REGENERATE_SPLIT: generating a new random split for {self.name}")
        train, val, test = self.generate_split()
        save_split(train, val, test, self.split_path, self.split_prefix)
        return train, val, test

    def apply_protocol(self, cfg, train, val, test):
        """Few-shot, base/new and long-tail subsampling (module docstring, steps 2-4)."""
        ds = cfg.DATASET
        if self.test_only:
            if ds.NUM_SHOTS >= 1 or ds.SUBSAMPLE_CLASSES != "all" or ds.IMBALANCE_RATIO != 1:
                print(f"{self.name} is a test-only dataset: NUM_SHOTS, SUBSAMPLE_CLASSES and IMBALANCE_RATIO are ignored")
            return train, None, test
        if ds.IMBALANCE_RATIO < 1:
            raise InvalidInputError(f"DATASET.IMBALANCE_RATIO must be >= 1 (1 = balanced), got {ds.IMBALANCE_RATIO}.")
        val_is_test = val is test
        train, val = fewshot_splits(train, val, num_shots=ds.NUM_SHOTS, seed=cfg.SEED,
                                    dataset_dir=self.dataset_dir, fewshot_val=self.fewshot_val)
        train, val, test = subsample_classes(train, val, test, subsample=ds.SUBSAMPLE_CLASSES)
        if ds.IMBALANCE_RATIO > 1:
            train = subsample_long_tail(train, ds.IMBALANCE_RATIO, cfg.SEED)
        return train, (test if val_is_test else val), test

    def check_files(self, train, val, test):
        """One error naming the missing images of the lists used (cheap: one listdir per folder)."""
        if not os.path.isdir(self.image_dir):
            raise FileNotFoundError(f"{self.name}: image folder {self.image_dir} not found. {self.checker_hint}")
        splits = {"test": test}  # test-only datasets: train is test; ImageNet: val is test
        if train is not test:
            splits["train"] = train
        if val is not None and val is not test:
            splits["val"] = val
        check_image_files(splits, self.name, hint=self.checker_hint)
