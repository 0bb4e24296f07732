"""train.py's command line: CoOp's flags and help texts, exit codes for user errors."""
import subprocess
import sys

import pytest

from dpl.project import PROJECT_ROOT

COOP_FLAGS = [
    "--root", "--output-dir", "--resume", "--seed", "--source-domains", "--target-domains", "--transforms",
    "--config-file", "--dataset-config-file", "--trainer", "--backbone", "--head", "--eval-only", "--model-dir",
    "--load-epoch", "--no-train",
]


import train  # the repo root is on sys.path: tests/conftest.py


@pytest.mark.slow  # a fresh interpreter that imports torch
def test_help_lists_coop_flags_and_help_texts(tmp_path):
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "train.py"), "--help"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,  # works from any working directory
    )
    assert result.returncode == 0
    for flag in COOP_FLAGS:
        assert flag in result.stdout, flag
    for text in [
        "checkpoint directory (from which the training resumes)",
        "only positive value enables a fixed seed",
        "load model from this directory for eval-only mode",
        "modify config options using the command-line",
    ]:
        assert text in " ".join(result.stdout.split()), text


def test_parser_defaults_match_coop():
    args = train.build_parser().parse_args([])
    assert args.seed == -1 and args.load_epoch is None and args.opts == []
    assert not args.eval_only and not args.no_train
    args = train.build_parser().parse_args(["--seed", "0", "--load-epoch", "10", "A.B", "1"])
    assert args.seed == 0 and args.load_epoch == 10 and args.opts == ["A.B", "1"]


def test_unknown_trainer_is_one_line_with_suggestion(tmp_path, capsys):
    out = tmp_path / "out"
    assert train.cli(["--trainer", "NoSuchTrainerXYZ", "--output-dir", str(out), "--no-train"]) == train.EXIT_RUN_ERROR
    err = capsys.readouterr().err
    assert err.startswith("Error: The requested trainer") and "do you mean [" in err and err.count("\n") == 1
    assert "Error: The requested trainer" in (out / "log.txt").read_text()  # the log explains the failure
    assert not (out / ".run.lock").exists()  # the lock is released on error


def test_unknown_config_key_exits_non_zero_before_writing(tmp_path, capsys):
    out = tmp_path / "out"
    assert train.cli(["--output-dir", str(out), "OPTIM.NO_SUCH_KEY", "1"]) == train.EXIT_CONFIG_ERROR
    assert capsys.readouterr().err.strip() == "Config error: Non-existent key: OPTIM.NO_SUCH_KEY"
    assert not out.exists()
