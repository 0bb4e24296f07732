"""Each of the 15 loaders on a synthetic folder in its upstream layout, through the cfg path."""
import io
import random
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml

from datagen import DATASET_NAMES, STEMS, dataset_cfg, expected_classnames, make_dataset, split_sizes
from dpl.data import DataManager
from dpl.data.datasets import DATASET_REGISTRY, build_dataset
from dpl.project import PROJECT_ROOT, import_project_modules

N_CLASSES = 4
PER_CLASS = 6
TEST_ONLY = {"imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("DATA")
    for stem in STEMS:
        make_dataset(root, stem, n_classes=N_CLASSES, per_class=PER_CLASS)
    return root


def _quiet_build(cfg):
    with redirect_stdout(io.StringIO()):
        return build_dataset(cfg)


@pytest.mark.parametrize("stem", STEMS)
def test_config_file_names_the_registered_class(stem):
    cfg = yaml.safe_load((PROJECT_ROOT / "configs" / "datasets" / f"{stem}.yaml").read_text())
    assert cfg == {"DATASET": {"NAME": DATASET_NAMES[stem]}}
    import_project_modules()
    assert DATASET_NAMES[stem] in DATASET_REGISTRY


@pytest.mark.parametrize("stem", STEMS)
def test_full_dataset_class_names_label_order_and_sizes(data_root, stem):
    ds = _quiet_build(dataset_cfg(data_root, stem))
    assert ds.classnames == expected_classnames(stem, N_CLASSES)
    assert ds.num_classes == N_CLASSES
    sizes = {"train": len(ds.train_x), "val": len(ds.val or []), "test": len(ds.test)}
    assert sizes == split_sizes(stem, N_CLASSES, PER_CLASS)
    # the label of every test image agrees with its class name
    assert all(ds.lab2cname[item.label] == item.classname for item in ds.test)


@pytest.mark.parametrize("stem", sorted(set(STEMS) - TEST_ONLY))
def test_base_new_through_datamanager(data_root, stem):
    names = expected_classnames(stem, N_CLASSES)
    for subsample, expected in (("base", names[:2]), ("new", names[2:])):
        random.seed(1)
        cfg = dataset_cfg(data_root, stem, num_shots=2, subsample=subsample, seed=1)
        with redirect_stdout(io.StringIO()):
            dm = DataManager(cfg)
        assert dm.dataset.classnames == expected
        assert dm.num_classes == 2
        assert len(dm.dataset.train_x) == 2 * 2
        assert {item.label for item in dm.dataset.test} == {0, 1}
        batch = next(iter(dm.train_loader_x))
        assert batch["img"].shape[1:] == (3, 32, 32)


@pytest.mark.parametrize("stem", sorted(TEST_ONLY))
def test_test_only_datasets_ignore_fewshot(data_root, stem):
    ds = _quiet_build(dataset_cfg(data_root, stem, num_shots=2, subsample="base"))
    assert ds.train_x is ds.test and ds.val is None and ds.num_classes == N_CLASSES


def test_imagenet_a_r_reindex_a_subset_with_imagenet_names(data_root):
    ds = _quiet_build(dataset_cfg(data_root, "imagenet_a"))
    listed = (Path(data_root) / "imagenet-adversarial" / "classnames.txt").read_text().splitlines()
    assert len(listed) == 2 * N_CLASSES  # the full ImageNet list; only half the wnids have folders
    assert sorted({item.label for item in ds.test}) == list(range(N_CLASSES))
    assert ds.classnames == [line.split(" ", 1)[1] for line in listed[1::2]]


def test_imagenet_val_is_test_and_only_train_is_fewshot(data_root):
    random.seed(1)
    ds = _quiet_build(dataset_cfg(data_root, "imagenet", num_shots=1, seed=1))
    assert ds.val is ds.test and len(ds.train_x) == N_CLASSES
    assert len(ds.test) == split_sizes("imagenet", N_CLASSES, PER_CLASS)["test"]


def test_imagenet_flat_val_folder_is_rejected(tmp_path):
    dataset_dir = make_dataset(tmp_path, "imagenet", n_classes=2, per_class=3)
    val = dataset_dir / "images" / "val"
    for image in list(val.rglob("*.JPEG")):
        image.rename(val / image.name)
    for folder in [p for p in val.iterdir() if p.is_dir()]:
        folder.rmdir()
    with pytest.raises(ValueError, match="no class folders"):
        _quiet_build(dataset_cfg(tmp_path, "imagenet"))


def test_fgvc_label_order_is_variants_file_order(data_root):
    ds = _quiet_build(dataset_cfg(data_root, "fgvc_aircraft"))
    variants = (Path(data_root) / "fgvc_aircraft" / "variants.txt").read_text().split("\n")[:N_CLASSES]
    assert ds.classnames == variants and variants != sorted(variants)


def test_stanford_cars_split_paths_are_relative_to_dataset_dir(data_root):
    ds = _quiet_build(dataset_cfg(data_root, "stanford_cars"))
    assert all(Path(item.impath).parent.name == "cars_test" for item in ds.test)
    assert ds.classnames[0] == "2000 AM General Hummer SUV"


def test_caltech_ignored_folders_are_not_classes(data_root):
    ds = _quiet_build(dataset_cfg(data_root, "caltech101"))
    assert not any("BACKGROUND" in item.impath or "Faces_easy" in item.impath for item in ds.test + ds.train_x)
