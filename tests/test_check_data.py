"""``python -m dpl.tools.check_data``: finds planted problems, reports counts, sets the exit status."""
import subprocess
import sys

import pytest

from datagen import make_dataset
from dpl.project import PROJECT_ROOT
from dpl.tools.check_data import main


def test_complete_dataset_passes_and_reports_counts(tmp_path, capsys):
    make_dataset(tmp_path, "dtd", n_classes=3, per_class=5)
    assert main(["--root", str(tmp_path), "dtd"]) == 0
    out = capsys.readouterr().out
    assert "DescribableTextures (dtd)" in out and "published: 2820" in out
    assert main(["--root", str(tmp_path), "--strict", "dtd"]) == 1  # counts differ from the published ones


def test_planted_missing_image_is_found(tmp_path, capsys):
    dataset_dir = make_dataset(tmp_path, "oxford_pets", n_classes=3, per_class=5)
    (dataset_dir / "images" / "Abyssinian_5.jpg").unlink()
    assert main(["--root", str(tmp_path), "oxford_pets"]) == 1
    out = capsys.readouterr().out
    assert "1 MISSING" in out and "Abyssinian_5.jpg" in out


def test_missing_split_file_and_folder_are_reported(tmp_path, capsys):
    make_dataset(tmp_path, "ucf101", n_classes=3, per_class=5, write_split=False)
    assert main(["--root", str(tmp_path), "ucf101", "EuroSAT"]) == 1
    out = capsys.readouterr().out
    assert "MISSING  " + str(tmp_path / "ucf101" / "split_zhou_UCF101.json") in out
    assert "MISSING  " + str(tmp_path / "eurosat") in out
    assert "DATASETS.md" in out and "REGENERATE_SPLIT" in out


def test_test_only_dataset_without_published_split(tmp_path, capsys):
    make_dataset(tmp_path, "imagenet_r", n_classes=2, per_class=3)
    assert main(["--root", str(tmp_path), "imagenet_r"]) == 0
    assert "test" in capsys.readouterr().out


@pytest.mark.slow  # a fresh interpreter that imports torch
def test_command_line_entry_point(tmp_path):
    make_dataset(tmp_path, "dtd", n_classes=3, per_class=5)
    (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").unlink()
    run = subprocess.run([sys.executable, "-m", "dpl.tools.check_data", "--root", str(tmp_path), "dtd"],
                         capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert run.returncode == 1, run.stderr
    assert "split_zhou_DescribableTextures.json" in run.stdout


def test_default_checks_the_15_benchmark_datasets(tmp_path, capsys):
    make_dataset(tmp_path, "dtd", n_classes=3, per_class=5)
    assert main(["--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.count("== ") == 15 and "DescribableTextures (dtd): WARNING" in out
    assert "14 dataset(s) need attention" in out


def test_unknown_dataset_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--root", str(tmp_path), "dtdd"])
    assert exit_info.value.code == 2 and "unknown dataset 'dtdd'" in capsys.readouterr().err
