"""Unreadable images are found before a run: ``find_unreadable_images``, ``check_training_images`` and
``python -m dpl.tools.check_data --verify-images``."""
import pytest

from datagen import make_dataset
from dpl.data import check_training_images, find_unreadable_images, unreadable_images_message
from dpl.data.datasets import Datum
from dpl.tools import check_data
from dpl.utils.errors import UnreadableFileError


def all_images(dataset_dir):
    return sorted(str(path) for path in (dataset_dir / "images").rglob("*.jpg"))


def corrupt(paths):
    """Truncate the first JPEG to half its bytes and overwrite the last with text; return (truncated, not_image)."""
    truncated, not_image = paths[0], paths[-1]
    with open(truncated, "rb") as f:
        data = f.read()
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    with open(not_image, "w") as f:
        f.write("not a JPEG")
    return truncated, not_image


@pytest.fixture
def dtd(tmp_path):
    """(DATA root, dataset folder, its image paths) of a complete, readable 4 x 6 DTD."""
    dataset_dir = make_dataset(tmp_path, "dtd", n_classes=4, per_class=6)
    return tmp_path, dataset_dir, all_images(dataset_dir)


@pytest.mark.parametrize("workers", [1, 4])
def test_finds_exactly_the_damaged_images_in_input_order(dtd, workers):
    _, _, paths = dtd
    truncated, not_image = corrupt(paths)
    found = find_unreadable_images(list(reversed(paths)), num_workers=workers)
    assert [path for path, _ in found] == [not_image, truncated]
    reasons = dict(found)
    assert "truncated" in reasons[truncated] and reasons[not_image] == "not an image"
    assert all("\n" not in reason for reason in reasons.values())


def test_missing_file_is_unreadable(dtd):
    _, dataset_dir, paths = dtd
    missing = str(dataset_dir / "images" / "gone.jpg")
    assert find_unreadable_images(paths[:3] + [missing]) == [(missing, "file not found")]
    assert find_unreadable_images([]) == []


def test_message_is_one_line_with_two_examples():
    unreadable = [("/d/a.jpg", "not an image"), ("/d/b.jpg", "file not found"), ("/d/c.jpg", "not an image")]
    message = unreadable_images_message(unreadable, 10, "DTD", "replace them")
    assert message == ("3 of 10 DTD images cannot be read, e.g. /d/a.jpg (not an image), /d/b.jpg (file not found); "
                       "replace them")


def test_check_training_images_raises_one_line_naming_a_bad_path_and_the_tool(dtd):
    root, _, paths = dtd
    _, not_image = corrupt(paths)
    items = [Datum(impath=path, label=i % 4) for i, path in enumerate(paths)]
    with pytest.raises(UnreadableFileError) as err:
        check_training_images(items + items[-1:], "DescribableTextures", str(root), stem="dtd", num_workers=2)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"2 of {len(paths)} DescribableTextures images cannot be read")
    assert f"{not_image} (not an image)" in message
    assert f"python -m dpl.tools.check_data --root {root} --verify-images dtd" in message


def test_check_training_images_passes_readable_images_with_one_line(dtd, capsys):
    root, _, paths = dtd
    check_training_images([Datum(impath=path) for path in paths], "DescribableTextures", str(root))
    captured = capsys.readouterr()
    assert captured.out == f"Checked {len(paths)} DescribableTextures images: all readable\n"
    assert captured.err == ""  # no progress bar for a few images


def test_cli_lists_unreadable_images_and_fails(dtd, capsys):
    root, _, paths = dtd
    truncated, not_image = corrupt(paths)
    assert check_data.main(["--root", str(root), "dtd", "--verify-images", "--workers", "2"]) == 1
    out, err = capsys.readouterr()
    assert err == ""  # the progress bar draws only on a terminal
    assert "DescribableTextures (dtd): UNREADABLE IMAGES" in out
    assert f"{len(paths)} images, 2 UNREADABLE:" in out
    assert f"    {truncated} (image file is truncated" in out and f"    {not_image} (not an image)" in out
    assert "next: replace the unreadable images from the original dataset archive" in out
    assert "1 dataset(s) need attention: DescribableTextures" in out


def test_cli_caps_the_listed_images(dtd, capsys, monkeypatch):
    root, _, paths = dtd
    corrupt(paths)
    monkeypatch.setattr(check_data, "MAX_UNREADABLE_LISTED", 1)
    assert check_data.main(["--root", str(root), "dtd", "--verify-images"]) == 1
    assert "    ... and 1 more" in capsys.readouterr().out


def test_cli_passes_readable_dataset(dtd, capsys):
    root, _, paths = dtd
    assert check_data.main(["--root", str(root), "dtd", "--verify-images"]) == 0
    out = capsys.readouterr().out
    assert f"{len(paths)} images, all readable" in out
    assert "All checked datasets are complete, all images readable." in out


def test_cli_without_the_option_does_not_open_images(dtd, capsys):
    root, _, paths = dtd
    assert check_data.main(["--root", str(root), "dtd"]) == 0
    before = capsys.readouterr()
    corrupt(paths)
    assert check_data.main(["--root", str(root), "dtd"]) == 0
    after = capsys.readouterr()
    assert after.out == before.out and "verified" not in after.out and after.err == ""


def test_cli_rejects_a_bad_worker_count(dtd, capsys):
    root, _, _ = dtd
    with pytest.raises(SystemExit) as exit_info:
        check_data.main(["--root", str(root), "dtd", "--verify-images", "--workers", "0"])
    assert exit_info.value.code == 2 and "expected a positive integer" in capsys.readouterr().err
