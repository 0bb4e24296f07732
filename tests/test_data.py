"""The shared data logic: Dassl's few-shot draw, caches, base/new, long tail, errors, loaders, transforms."""
import math
import os
import pickle
import random
import sys
import types
from collections import Counter

import pytest
import torch

from datagen import dataset_cfg, make_dataset
from dpl.data import DataManager, DatasetWrapper, build_data_loader
from dpl.data.datasets import (Datum, build_dataset, long_tail_groups, long_tail_profile, portable_cache_path,
                               read_split, sample_fewshot, save_split, subsample_classes, subsample_long_tail,
                               upstream_cache_path)
from dpl.data.transforms import build_transform


def _paths(items):
    return [item.impath for item in items]


@pytest.fixture
def dtd_root(tmp_path):
    make_dataset(tmp_path, "dtd", n_classes=4, per_class=10)
    return tmp_path


def _build(root, **kw):
    return build_dataset(dataset_cfg(root, "dtd", **kw))


def _dassl_draw(train, val, num_shots):
    """An independent transcription of Dassl's draw: per label in order of first appearance, items in
    source order, one random.sample per label (none when too few); train first, then val with min(K, 4)."""
    def draw(source, k):
        labels, by_label = [], {}
        for item in source:
            if item.label not in by_label:
                labels.append(item.label)
                by_label[item.label] = []
            by_label[item.label].append(item)
        out = []
        for label in labels:
            items = by_label[label]
            out.extend(random.sample(items, k) if len(items) >= k else items)
        return out
    return draw(train, num_shots), draw(val, min(num_shots, 4))


# -- few-shot ------------------------------------------------------------------------------------

def test_fewshot_reproduces_dassl_draw_sequence(dtd_root):
    full = _build(dtd_root)
    random.seed(3)
    expected_train, expected_val = _dassl_draw(full.train_x, full.val, 2)
    random.seed(3)
    ds = _build(dtd_root, num_shots=2, seed=3)
    assert _paths(ds.train_x) == _paths(expected_train)
    assert _paths(ds.val) == _paths(expected_val)


def test_fewshot_same_seed_same_sample_other_seed_other_sample(dtd_root, tmp_path_factory):
    other_root = tmp_path_factory.mktemp("copy")
    make_dataset(other_root, "dtd", n_classes=4, per_class=10)

    def sample(root, seed):
        random.seed(seed)  # train.py's set_random_seed(cfg.SEED)
        rels = [os.path.relpath(p, root) for p in _paths(_build(root, num_shots=2, seed=seed).train_x)]
        return rels

    assert sample(dtd_root, 1) == sample(other_root, 1)  # drawn twice, independently (no shared cache)
    assert sample(dtd_root, 1) != sample(dtd_root, 2)


def test_fewshot_counts_and_val_cap(dtd_root):
    random.seed(1)
    ds = _build(dtd_root, num_shots=5, seed=1)
    assert Counter(item.label for item in ds.train_x) == {0: 5, 1: 5, 2: 5, 3: 5}
    # val has 2 per class (< min(5, 4)): all kept
    assert Counter(item.label for item in ds.val) == {0: 2, 1: 2, 2: 2, 3: 2}


def test_sample_fewshot_repeat_and_disabled():
    items = [Datum(f"/x/{i}.jpg", label=i % 2) for i in range(6)]
    assert sample_fewshot(items, num_shots=-1) is items
    random.seed(0)
    out = sample_fewshot(items, num_shots=5, repeat=True)
    assert Counter(item.label for item in out) == {0: 5, 1: 5}


def test_portable_cache_is_written_reused_and_relative(dtd_root):
    random.seed(1)
    first = _build(dtd_root, num_shots=2, seed=1)
    cache_files = os.listdir(dtd_root / "dtd" / "split_fewshot")
    assert len(cache_files) == 1 and cache_files[0].startswith("dpl-v1_shot_2-seed_1_")
    text = (dtd_root / "dtd" / "split_fewshot" / cache_files[0]).read_text()
    assert str(dtd_root) not in text  # relative paths only
    random.seed(12345)  # another global state: the cache, not the draw, decides
    second = _build(dtd_root, num_shots=2, seed=1)
    assert _paths(second.train_x) == _paths(first.train_x)


def test_portable_cache_is_keyed_by_split_content(dtd_root):
    random.seed(1)
    _build(dtd_root, num_shots=2, seed=1)
    split_path = dtd_root / "dtd" / "split_zhou_DescribableTextures.json"
    train, val, test = read_split(str(split_path), str(dtd_root / "dtd" / "images"))
    os.remove(split_path)
    save_split(train[1:], val, test, str(split_path), str(dtd_root / "dtd" / "images"))  # a different split
    random.seed(1)
    _build(dtd_root, num_shots=2, seed=1)
    assert len(os.listdir(dtd_root / "dtd" / "split_fewshot")) == 2


def test_negative_seed_writes_no_cache(dtd_root):
    _build(dtd_root, num_shots=2, seed=-1)
    assert not (dtd_root / "dtd" / "split_fewshot").exists()


@pytest.fixture
def fake_dassl(monkeypatch):
    """A stand-in ``dassl.data.datasets.base_dataset.Datum`` (Dassl's attribute layout) to pickle with."""
    class Datum:  # noqa: D401  (mirrors Dassl's class: plain attributes behind properties)
        def __init__(self, impath="", label=0, domain=0, classname=""):
            self._impath, self._label, self._domain, self._classname = impath, label, domain, classname

    Datum.__module__ = "dassl.data.datasets.base_dataset"
    Datum.__qualname__ = "Datum"
    names = ["dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["dassl.data.datasets.base_dataset"].Datum = Datum
    return Datum


def _write_upstream_pickle(path, fake_datum_cls, train, val, old_root, new_root):
    def convert(items):  # absolute paths recorded on "another machine"
        return [fake_datum_cls(str(item.impath).replace(str(new_root), old_root), item.label, 0, item.classname)
                for item in items]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"train": convert(train), "val": convert(val)}, f, protocol=pickle.HIGHEST_PROTOCOL)


def test_upstream_pickle_cache_is_read_without_dassl(dtd_root, fake_dassl, monkeypatch):
    full = _build(dtd_root)
    random.seed(7)
    chosen_train, chosen_val = _dassl_draw(full.train_x, full.val, 2)
    pkl = dtd_root / "dtd" / "split_fewshot" / "shot_2-seed_1.pkl"
    _write_upstream_pickle(pkl, fake_dassl, chosen_train, chosen_val, "/home/someone/DATA", dtd_root)
    for name in ["dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"]:
        monkeypatch.delitem(sys.modules, name)  # reading must not need Dassl
    before = pkl.read_bytes()
    random.seed(999)
    ds = _build(dtd_root, num_shots=2, seed=1)
    assert _paths(ds.train_x) == _paths(chosen_train)  # re-rooted at the current DATA folder
    assert _paths(ds.val) == _paths(chosen_val)
    assert pkl.read_bytes() == before
    assert os.listdir(pkl.parent) == ["shot_2-seed_1.pkl"]  # no cache of ours written beside it


def test_upstream_pickle_with_other_globals_is_refused(dtd_root):
    pkl = dtd_root / "dtd" / "split_fewshot" / "shot_2-seed_1.pkl"
    pkl.parent.mkdir(parents=True)
    with open(pkl, "wb") as f:
        pickle.dump({"train": [Counter()], "val": []}, f)
    with pytest.raises(ValueError, match="refusing to load collections.Counter"):
        _build(dtd_root, num_shots=2, seed=1)


def test_our_cache_name_never_matches_an_upstream_name(tmp_path):
    ours = os.path.basename(portable_cache_path(str(tmp_path), 16, 1, "ab" * 32))
    upstream = os.path.basename(upstream_cache_path(str(tmp_path), 16, 1))
    assert upstream == "shot_16-seed_1.pkl"
    assert ours != upstream and not ours.startswith("shot_") and not ours.endswith(".pkl")


# -- base / new -----------------------------------------------------------------------------------

def test_subsample_base_new_relabels_and_splits_ceil_half():
    items = [Datum(f"/x/{c}_{i}.jpg", label=c, classname=f"c{c}") for c in range(5) for i in range(2)]
    base, = subsample_classes(items, subsample="base")
    new, = subsample_classes(items, subsample="new")
    assert sorted({(d.label, d.classname) for d in base}) == [(0, "c0"), (1, "c1"), (2, "c2")]
    assert sorted({(d.label, d.classname) for d in new}) == [(0, "c3"), (1, "c4")]
    with pytest.raises(ValueError, match="SUBSAMPLE_CLASSES"):
        subsample_classes(items, subsample="novel")


def test_subsample_through_cfg(dtd_root, capsys):
    base = _build(dtd_root, subsample="base")
    assert "SUBSAMPLE BASE CLASSES!" in capsys.readouterr().out
    new = _build(dtd_root, subsample="new")
    assert base.classnames == ["banded", "blotchy"] and new.classnames == ["braided", "bubbly"]
    assert {d.label for d in new.test} == {0, 1}


# -- long tail ------------------------------------------------------------------------------------

def test_long_tail_profile_formula():
    assert long_tail_profile(60, 24, 10)[:6] == [60, 55, 50, 45, 41, 37]
    assert long_tail_profile(60, 24, 10)[-1] == 6
    assert long_tail_profile(5, 3, 100) == [5, 1, 1]


def test_long_tail_has_requested_ratio_and_is_seeded():
    train = [Datum(f"/x/{c}_{i}.jpg", label=c, classname=f"c{c}") for c in range(6) for i in range(40 - c)]
    lt = subsample_long_tail(train, ratio=10, seed=1)
    counts = Counter(item.label for item in lt)
    assert max(counts.values()) / min(counts.values()) == 10
    # ranks follow descending frequency: class 0 (40 images) keeps most
    assert [counts[c] for c in range(6)] == long_tail_profile(40, 6, 10)
    assert _paths(subsample_long_tail(train, 10, seed=1)) == _paths(lt)
    assert _paths(subsample_long_tail(train, 10, seed=2)) != _paths(lt)


def test_long_tail_after_base_subsampling_through_cfg(tmp_path):
    make_dataset(tmp_path, "dtd", n_classes=6, per_class=20)
    random.seed(1)
    ds = build_dataset(dataset_cfg(tmp_path, "dtd", subsample="base", DATASET__IMBALANCE_RATIO=5.0))
    counts = Counter(item.label for item in ds.train_x)
    assert len(counts) == 3 and max(counts.values()) / min(counts.values()) == 5
    groups = long_tail_groups(ds.train_x)
    assert [groups[label] for label in sorted(groups)] == ["many", "medium", "few"]


# -- errors ---------------------------------------------------------------------------------------

def test_missing_split_file_names_file_and_source(tmp_path):
    make_dataset(tmp_path, "dtd", n_classes=3, per_class=5, write_split=False)
    with pytest.raises(FileNotFoundError) as err:
        build_dataset(dataset_cfg(tmp_path, "dtd"))
    message = str(err.value)
    assert "split_zhou_DescribableTextures.json" in message and str(tmp_path / "dtd") in message
    assert "DATASETS.md" in message and "REGENERATE_SPLIT" in message
    random.seed(0)
    ds = build_dataset(dataset_cfg(tmp_path, "dtd", DATASET__REGENERATE_SPLIT=True))
    assert (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").is_file() and ds.num_classes == 3


def test_missing_image_is_named_before_training(dtd_root):
    victim = dtd_root / "dtd" / "images" / "bubbly" / "bubbly_0010.jpg"
    victim.unlink()
    with pytest.raises(FileNotFoundError, match="bubbly_0010.jpg"):
        _build(dtd_root)


def test_unknown_dataset_name_suggests_closest(dtd_root):
    cfg = dataset_cfg(dtd_root, "dtd")
    cfg.DATASET.NAME = "DescribableTexture"
    with pytest.raises(ValueError, match=r"do you mean \[DescribableTextures\]"):
        build_dataset(cfg)


def test_unreadable_image_error_names_file(dtd_root):
    bad = dtd_root / "dtd" / "images" / "banded" / "banded_0001.jpg"
    bad.write_bytes(b"not an image")
    cfg = dataset_cfg(dtd_root, "dtd")
    wrapper = DatasetWrapper(cfg, [Datum(str(bad), 0)], transform=None)
    with pytest.raises(OSError, match="banded_0001.jpg"):
        wrapper[0]


def test_empty_loader_is_an_actionable_error(dtd_root):
    with pytest.raises(ValueError, match="split is empty"):
        build_data_loader(dataset_cfg(dtd_root, "dtd"), data_source=[], batch_size=4)


# -- DataManager ----------------------------------------------------------------------------------

def test_datamanager_batches_and_properties(dtd_root):
    random.seed(1)
    dm = DataManager(dataset_cfg(dtd_root, "dtd", num_shots=2, subsample="base"))
    assert dm.num_classes == 2 and dm.lab2cname == {0: "banded", 1: "blotchy"}
    batch = next(iter(dm.train_loader_x))
    assert set(batch) == {"label", "domain", "impath", "index", "img"}
    assert batch["img"].shape == (4, 3, 32, 32)
    assert dm.val_loader is not None and len(dm.test_loader.dataset) == 6


def _epoch_order(dm, epoch):
    dm.set_epoch(epoch, seed=5)
    return [i for batch in dm.train_loader_x for i in batch["index"].tolist()]


def test_set_epoch_makes_order_a_function_of_seed_and_epoch(dtd_root):
    dm = DataManager(dataset_cfg(dtd_root, "dtd"))
    order0, order1 = _epoch_order(dm, 0), _epoch_order(dm, 1)
    torch.manual_seed(123)  # global state must not matter
    assert _epoch_order(dm, 1) == order1 and _epoch_order(dm, 0) == order0
    assert order0 != order1
    fresh = DataManager(dataset_cfg(dtd_root, "dtd"))  # a "resumed" run
    assert _epoch_order(fresh, 1) == order1


def _batches(dm, epoch, start_batch=0):
    dm.set_epoch(epoch, start_batch=start_batch)
    return [(batch["index"].tolist(), batch["img"]) for batch in dm.train_loader_x]


def _same_batches(a, b):
    return len(a) == len(b) and all(ia == ib and torch.equal(xa, xb) for (ia, xa), (ib, xb) in zip(a, b))


@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_resumed_after_k_batches_gives_the_remaining_batches_augmented_the_same(dtd_root, workers):
    full = _batches(DataManager(dataset_cfg(dtd_root, "dtd", seed=3, DATALOADER__NUM_WORKERS=workers)), 2)
    torch.manual_seed(99)  # the model's use of the global generator must not matter
    resumed = _batches(DataManager(dataset_cfg(dtd_root, "dtd", seed=3, DATALOADER__NUM_WORKERS=workers)), 2,
                       start_batch=1)
    assert len(full) > 1 and _same_batches(full[1:], resumed)
    in_process = _batches(DataManager(dataset_cfg(dtd_root, "dtd", seed=3)), 2)
    assert _same_batches(full, in_process)  # whatever the number of workers


def test_an_unseeded_run_replays_its_order_from_the_data_seed_its_checkpoint_keeps(dtd_root):
    cfg = dataset_cfg(dtd_root, "dtd", seed=-1)
    first = DataManager(cfg)
    again = DataManager(cfg)
    assert first.data_seed != again.data_seed  # unseeded: a new order per run
    again.data_seed = first.data_seed  # what resuming from its checkpoint restores
    assert _same_batches(_batches(first, 1), _batches(again, 1))


def test_evaluation_does_not_consume_global_torch_rng(dtd_root):
    dm = DataManager(dataset_cfg(dtd_root, "dtd"))
    torch.manual_seed(0)
    list(dm.test_loader)
    after_eval = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(after_eval, torch.rand(1))


def test_drop_last_only_with_a_full_batch(dtd_root):
    cfg = dataset_cfg(dtd_root, "dtd")
    small = [Datum(str(dtd_root / "dtd/images/banded/banded_0001.jpg"), 0)] * 3
    assert len(build_data_loader(cfg, "RandomSampler", small, batch_size=8, is_train=True)) == 1


# -- transforms -----------------------------------------------------------------------------------

def test_build_transform_train_and_test_pipelines(dtd_root, capsys):
    cfg = dataset_cfg(dtd_root, "dtd")
    cfg.INPUT.SIZE = (24, 24)
    cfg.INPUT.INTERPOLATION = "bicubic"
    cfg.INPUT.TRANSFORMS = ("random_resized_crop", "random_flip", "colorjitter", "randomgrayscale",
                            "gaussian_blur", "randaugment", "normalize")
    train = build_transform(cfg, is_train=True)
    out = capsys.readouterr().out
    assert "Building transform_train" in out and "+ random flip" in out and "+ resize to" not in out
    test = build_transform(cfg, is_train=False)
    assert [type(t).__name__ for t in test.transforms] == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    from PIL import Image
    img = Image.new("RGB", (40, 30))
    assert train(img).shape == test(img).shape == (3, 24, 24)


def test_unknown_transform_lists_allowed(dtd_root):
    cfg = dataset_cfg(dtd_root, "dtd")
    cfg.INPUT.TRANSFORMS = ("random_flip", "mixup")
    with pytest.raises(ValueError, match="unknown transform \"mixup\".*random_resized_crop"):
        build_transform(cfg, is_train=True)
    cfg.INPUT.TRANSFORMS = ("random_flip",)
    cfg.INPUT.INTERPOLATION = "lanczos"
    with pytest.raises(ValueError, match="bicubic"):
        build_transform(cfg, is_train=True)


def test_synthetic_images_are_class_discriminative():
    from datagen import class_image
    import numpy as np
    means = [np.asarray(class_image(label, 0)).mean(axis=(0, 1)) for label in range(4)]
    same = np.asarray(class_image(0, 1)).mean(axis=(0, 1))
    gaps = [np.abs(means[0] - m).max() for m in means[1:]]
    assert np.abs(means[0] - same).max() < min(gaps)
    assert math.isfinite(min(gaps))


def test_samplers_by_name():
    from dpl.data.samplers import build_sampler
    items = [Datum(f"/x/{c}_{i}.jpg", label=c) for c in range(4) for i in range(5)]
    gen = torch.Generator().manual_seed(0)
    indices = list(build_sampler("RandomClassSampler", data_source=items, batch_size=4, n_ins=2, generator=gen))
    assert len(indices) == 20
    for start in range(0, 20, 4):  # each batch: 2 classes x 2 items
        labels = Counter(items[i].label for i in indices[start:start + 4])
        assert sorted(labels.values()) == [2, 2]
    with pytest.raises(ValueError, match="Unknown sampler type: Foo"):
        build_sampler("Foo", data_source=items)
