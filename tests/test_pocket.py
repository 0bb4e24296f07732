"""The pocket dataset: generator determinism, the class design, and the loader's cache folder."""
import json
import math

import pytest
import torch

from dpl.config import get_cfg_default
from dpl.data.datasets import build_dataset
from dpl.pocket import files
from dpl.pocket.shapes import BACKGROUNDS, COLOURS, class_names, generate, pocket_classes


def test_generator_is_a_pure_function_of_labels_and_seed():
    labels = torch.tensor([0, 5, 17, 35, 35])
    first = generate(labels, seed=3)
    assert first.dtype == torch.uint8 and first.shape == (5, 3, 64, 64)
    assert torch.equal(first, generate(labels, seed=3))
    assert not torch.equal(first, generate(labels, seed=4))
    # The two scenes of class 35 differ (position, size, rotation, colours are drawn per scene).
    assert not torch.equal(first[3], first[4])


def test_backgrounds_differ_for_the_same_shape_colour():
    """The six backgrounds of one shape colour give six different images."""
    red = [label for label, (colour, _) in enumerate(pocket_classes()) if colour == "red"]
    images = generate(torch.tensor(red), seed=0)
    flat = images.flatten(1).float()
    assert torch.cdist(flat, flat).add(torch.eye(len(red)) * 1e9).min() > 0


def test_shape_and_background_carry_the_class_colours():
    """The pixels most unlike the background have the hue of the shape colour; the corners show the
    background colour (a cyan background: blue and green well above red)."""
    label = class_names().index("red shape on cyan")
    image = generate(torch.tensor([label]), seed=1)[0].float()  # [3, H, W]
    red_excess = image[0] - image[1:].mean(0)
    assert red_excess.flatten().topk(100).values.min() > 80
    corner = image[:, :4, :4].mean(dim=(1, 2))
    assert corner[1] - corner[0] > 60 and corner[2] - corner[0] > 60


def test_classes_are_compositional_and_both_halves_hold_every_attribute():
    names = class_names()
    assert len(names) == len(set(names)) == len(COLOURS) * len(BACKGROUNDS) >= 20
    half = math.ceil(len(names) / 2)
    for part in (pocket_classes()[:half], pocket_classes()[half:]):
        assert {c for c, _ in part} == set(COLOURS)
        assert {b for _, b in part} == set(BACKGROUNDS)


def pocket_cfg(root, shots=-1, subsample="all", seed=1):
    cfg = get_cfg_default()
    cfg.DATASET.NAME = "Pocket"
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    return cfg


@pytest.fixture
def small_counts(monkeypatch):
    """Fewer images per class keep the test fast; 17 train images still allow a 16-shot draw."""
    monkeypatch.setattr(files, "SPLIT_COUNTS", {"train": 17, "val": 4, "test": 2})


def test_loader_generates_the_folder_once_and_runs_the_shared_protocol(tmp_path, small_counts):
    dataset = build_dataset(pocket_cfg(tmp_path))
    folder = tmp_path / "pocket"
    assert (folder / "split_zhou_Pocket.json").is_file()
    assert len(dataset.train_x) == 36 * 17 and len(dataset.val) == 36 * 4 and len(dataset.test) == 36 * 2
    assert dataset.classnames == class_names()
    assert [p.name for p in tmp_path.iterdir()] == ["pocket"]  # no staging folder left behind

    split = json.loads((folder / "split_zhou_Pocket.json").read_text())
    relative, label, name = split["test"][0]
    assert relative == "red_shape_on_white/red_shape_on_white_0021.png" and label == 0 and name == "red shape on white"
    stamp = (folder / "images" / relative).stat().st_mtime_ns

    new = build_dataset(pocket_cfg(tmp_path, shots=16, subsample="new"))
    assert (folder / "images" / relative).stat().st_mtime_ns == stamp  # reused, not regenerated
    assert len(new.train_x) == 18 * 16 and len(new.val) == 18 * 4 and len(new.test) == 18 * 2
    assert new.classnames == class_names()[18:]
    assert any((folder / "split_fewshot").iterdir())  # the shared few-shot cache was used


def test_folder_from_another_generator_is_an_error_not_overwritten(tmp_path, small_counts):
    folder = tmp_path / "pocket"
    folder.mkdir()
    (folder / files.MARKER_FILE).write_text("pocket-shapes-0 seed=1\n")
    with pytest.raises(RuntimeError, match="not written by this pocket generator.*delete that folder"):
        build_dataset(pocket_cfg(tmp_path))
    assert (folder / files.MARKER_FILE).read_text() == "pocket-shapes-0 seed=1\n"


def test_empty_root_is_a_clear_error():
    cfg = pocket_cfg("")
    with pytest.raises(ValueError, match="DATASET.ROOT is empty"):
        build_dataset(cfg)
