"""The bad-input matrix: every mistake a user can make with paths, configs, data, weights,
checkpoints and result folders ends in ONE actionable line and a non-zero exit code.

Each case runs the real entry point: ``train.py`` through its ``cli(argv)`` in-process (a subprocess
costs the torch import), the protocol scripts with bash, ``parse_results.main(argv)``. ``train.py``
exits 2 for command-line/config errors (nothing written) and 1 for run errors.
"""
import json
import multiprocessing
import os
import subprocess
import sys

import pytest
import torch

from datagen import make_dataset
from helpers import run_cli
from dpl.project import PROJECT_ROOT

import parse_results  # the repo root is on sys.path: tests/conftest.py
from dpl.results.runs import parse_run
import dpl.tools.train as TRAIN

CONFIG = PROJECT_ROOT / "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml"
DTD_CONFIG = PROJECT_ROOT / "configs/datasets/dtd.yaml"


@pytest.fixture(autouse=True)
def quick_env_info(monkeypatch):
    """torch's collect_env runs `pip list` (~3 s a call); what it prints is not under test here."""
    monkeypatch.setattr(TRAIN, "collect_env_info", lambda: "(environment not collected in this test)")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_dataset(root, "dtd", n_classes=4, per_class=6)
    return root


def argv_for(root, out, weights, *opts, trainer="CoOp", flags=()):
    """A CoOp run on the synthetic DTD with the tiny CLIP; ``opts`` come last and override."""
    return [
        "--root", str(root), "--seed", "1", "--trainer", trainer, "--output-dir", str(out),
        "--dataset-config-file", str(DTD_CONFIG), "--config-file", str(CONFIG), *flags,
        "MODEL.BACKBONE.PATH", str(weights), "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
        "USE_CUDA", "False", "OPTIM.MAX_EPOCH", "1", *opts,
    ]


def assert_one_line(err, prefix, *fragments):
    assert err.count("\n") == 1 and err.endswith("\n"), f"not one line: {err!r}"
    assert err.startswith(prefix), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def copy_dtd(tmp_path, **kwargs):
    root = tmp_path / "data"
    make_dataset(root, "dtd", n_classes=4, per_class=6, **kwargs)
    return root


# ----- DATA unset or missing ----------------------------------------------------------------------
def script_env(**env):
    base = {k: v for k, v in os.environ.items() if k not in ("DATA", "OUTPUT")}
    return {**base, **env}


@pytest.mark.slow  # the protocol script in bash (and the Python it starts)
@pytest.mark.parametrize("data, message", [
    (None, "DATA is not set: export DATA=/path/to/datasets"),
    ("/nonexistent/datasets", "DATA=/nonexistent/datasets is not a directory"),
])
def test_script_without_data_is_one_line(tmp_path, data, message):
    env = script_env(OUTPUT=str(tmp_path / "out"), **({"DATA": data} if data else {}))
    proc = subprocess.run(["bash", str(PROJECT_ROOT / "scripts/coop/base2new_train.sh"), "dtd", "1"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 1
    assert_one_line(proc.stderr, "coop/base2new_train.sh: ", message)
    assert not (tmp_path / "out").exists()


def test_train_py_with_a_root_without_the_dataset(tmp_path, tiny_clip_path, capsys):
    code, err = run_cli(argv_for(tmp_path / "nowhere", tmp_path / "out", tiny_clip_path), capsys)
    assert code == TRAIN.EXIT_RUN_ERROR
    assert_one_line(err, "Error: DescribableTextures: dataset folder", "nowhere/dtd not found",
                    "DATASETS.md", "dpl.tools.check_data")


# ----- unknown names -------------------------------------------------------------------------------
def test_unknown_dataset_suggests_the_closest_name(data_root, tmp_path, tiny_clip_path, capsys):
    argv = argv_for(data_root, tmp_path / "out", tiny_clip_path, "DATASET.NAME", "DescribableTexture")
    code, err = run_cli(argv, capsys)
    assert code == TRAIN.EXIT_RUN_ERROR
    assert_one_line(err, 'Error: The requested dataset (DATASET.NAME) "DescribableTexture" is not registered',
                    "(do you mean [DescribableTextures]?)")


def test_unknown_trainer_suggests_the_closest_name(data_root, tmp_path, tiny_clip_path, capsys):
    code, err = run_cli(argv_for(data_root, tmp_path / "out", tiny_clip_path, trainer="KgCoop"), capsys)
    assert code == TRAIN.EXIT_RUN_ERROR
    assert_one_line(err, 'Error: The requested trainer (--trainer / TRAINER.NAME) "KgCoop"', "do you mean [KgCoOp]?")


def test_unknown_backbone_lists_the_closest_names(data_root, tmp_path, tiny_clip_path, capsys):
    argv = argv_for(data_root, tmp_path / "out", tiny_clip_path, "MODEL.BACKBONE.PATH", "",
                    "MODEL.BACKBONE.NAME", "ViT-B/61")
    code, err = run_cli(argv, capsys)
    assert code == TRAIN.EXIT_RUN_ERROR
    assert_one_line(err, "Error: unknown CLIP backbone 'ViT-B/61' (MODEL.BACKBONE.NAME); available, closest first: "
                    "['ViT-B/16'")


# ----- data files ---------------------------------------------------------------------------------
def test_missing_split_file_says_where_it_belongs(tmp_path, tiny_clip_path, capsys):
    root = copy_dtd(tmp_path, write_split=False)
    code, err = run_cli(argv_for(root, tmp_path / "out", tiny_clip_path), capsys)
    assert code == TRAIN.EXIT_RUN_ERROR
    assert_one_line(err, "Error: DescribableTextures: split file", "split_zhou_DescribableTextures.json not found",
                    "DATASETS.md", "DATASET.REGENERATE_SPLIT True")


def test_missing_image_is_named_with_the_checker_command(tmp_path, tiny_clip_path, capsys):
    root = copy_dtd(tmp_path)
    victim = root / "dtd/images/blotchy/blotchy_0002.jpg"
    victim.unlink()
    code, err = run_cli(argv_for(root, tmp_path / "out", tiny_clip_path), capsys)
    assert code == TRAIN.EXIT_RUN_ERROR
    assert_one_line(err, "Error: DescribableTextures: image files are missing:", str(victim),
                    f"python -m dpl.tools.check_data --root {root} dtd")


@pytest.fixture
def no_leftover_workers():
    """Fail (instead of hanging) when a failed run leaves DataLoader workers behind: they ignore SIGTERM,
    so multiprocessing's exit handler would wait for them forever and the process would never exit."""
    yield
    leftover = multiprocessing.active_children()
    for worker in leftover:
        worker.kill()
        worker.join()
    assert not leftover, f"the failed run left {len(leftover)} DataLoader worker(s) running"


@pytest.mark.parametrize("workers", [0, 1])  # 1: the error is re-raised from a DataLoader worker
def test_unreadable_image_is_named(tmp_path, tiny_clip_path, capsys, workers, no_leftover_workers):
    root = copy_dtd(tmp_path)
    for victim in (root / "dtd/images").glob("*/*.jpg"):
        victim.write_bytes(b"not a jpeg")  # every image: whichever is read first fails
    argv = argv_for(root, tmp_path / "out", tiny_clip_path, "DATALOADER.NUM_WORKERS", str(workers))
    code, err = run_cli(argv, capsys)
    assert code == TRAIN.EXIT_RUN_ERROR
    assert_one_line(err, f"Error: Cannot read image {root}/dtd/images/", ".jpg: cannot identify image file",
                    "replace it from the original dataset archive")


@pytest.mark.slow
def test_train_py_exits_after_an_error_raised_in_a_loader_worker(tmp_path, tiny_clip_path):
    root = copy_dtd(tmp_path)
    for victim in (root / "dtd/images").glob("*/*.jpg"):
        victim.write_bytes(b"not a jpeg")
    argv = argv_for(root, tmp_path / "out", tiny_clip_path, "DATALOADER.NUM_WORKERS", "1")
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "train.py"), *map(str, argv)], capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == TRAIN.EXIT_RUN_ERROR, result.stderr[-2000:]
    assert "Error: Cannot read image" in result.stderr.strip().splitlines()[-1]


# ----- config keys, types and values ---------------------------------------------------------------
@pytest.mark.parametrize("opts, message", [
    (("OPTIM.LRR", "0.1"), "Config error: Non-existent key: OPTIM.LRR"),
    (("OPTIM.MAX_EPOCH", "ten"), "Config error: Type mismatch (<class 'int'> vs. <class 'str'>) with values "
                                 "(1 vs. ten) for config key: OPTIM.MAX_EPOCH"),
])
def test_config_key_or_type_error_exits_2_before_writing(data_root, tmp_path, tiny_clip_path, capsys, opts, message):
    code, err = run_cli(argv_for(data_root, tmp_path / "out", tiny_clip_path, *opts), capsys)
    assert code == TRAIN.EXIT_CONFIG_ERROR
    assert err == message + "\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, fragment", [
    ("OPTIM:\n  LRR: 0.1\n", "Non-existent config key: OPTIM.LRR"),
    ("OPTIM: [unclosed\n", "while parsing a flow sequence"),  # YAML's multi-line message, joined
])
def test_config_file_error_is_one_line(data_root, tmp_path, tiny_clip_path, capsys, text, fragment):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    argv = argv_for(data_root, tmp_path / "out", tiny_clip_path)
    argv[argv.index(str(CONFIG))] = str(bad)
    code, err = run_cli(argv, capsys)
    assert code == TRAIN.EXIT_CONFIG_ERROR
    assert_one_line(err, "Config error: ", fragment)


@pytest.mark.parametrize("key, value, message", [
    ("DATASET.SUBSAMPLE_CLASSES", "novel",
     "Error: DATASET.SUBSAMPLE_CLASSES must be one of ['all', 'base', 'new'], got \"novel\"."),
    ("DATASET.IMBALANCE_RATIO", "0.5", "Error: DATASET.IMBALANCE_RATIO must be >= 1 (1 = balanced), got 0.5."),
])
def test_invalid_dataset_value_is_one_line(data_root, tmp_path, tiny_clip_path, capsys, key, value, message):
    code, err = run_cli(argv_for(data_root, tmp_path / "out", tiny_clip_path, key, value), capsys)
    assert code == TRAIN.EXIT_RUN_ERROR
    assert err == message + "\n"


@pytest.mark.parametrize("opts, message", [
    (("INPUT.TRANSFORMS", "('random_flip', 'mixup', 'normalize')"), 'Error: INPUT.TRANSFORMS: unknown transform "mixup"'),
    (("TRAINER.COOP.CLASS_TOKEN_POSITION", "middel"),
     "Error: TRAINER.COOP.CLASS_TOKEN_POSITION is 'middel': use one of ['end', 'middle', 'front']"),
    (("TRAINER.COOP.PREC", "fp8"), "Error: TRAINER.COOP.PREC is 'fp8'; use one of"),
    (("TRAIN.IF_EXISTS", "overwrite"), 'Error: The requested TRAIN.IF_EXISTS policy "overwrite" is not registered'),
])
def test_invalid_method_or_input_value_is_one_line(data_root, tmp_path, tiny_clip_path, capsys, opts, message):
    code, err = run_cli(argv_for(data_root, tmp_path / "out", tiny_clip_path, *opts), capsys)
    assert code == TRAIN.EXIT_RUN_ERROR
    assert_one_line(err, message)


def test_more_shots_than_images_takes_all_and_warns(data_root, tmp_path, tiny_clip_path, capsys):
    """Behaviour: a class with fewer than NUM_SHOTS images keeps all of them; one warning line says so."""
    out = tmp_path / "out"
    code, err = run_cli(argv_for(data_root, out, tiny_clip_path, "DATASET.NUM_SHOTS", "100", flags=["--no-train"]),
                        capsys)
    assert code == 0, err
    log = (out / "log.txt").read_text()
    assert ("WARNING: 4 of 4 classes have fewer than 100 images (banded: 3, blotchy: 3, braided: 3, ...); "
            "all of their images are used, so they get fewer than 100 shots") in log
    assert "# train_x  12" in log  # every training image (4 classes x 3)


# ----- CLIP weights -------------------------------------------------------------------------------
def test_weights_file_of_the_wrong_format(data_root, tmp_path, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a weights file")
    code, err = run_cli(argv_for(data_root, tmp_path / "out", garbage), capsys)
    assert code == TRAIN.EXIT_RUN_ERROR
    assert_one_line(err, f"Error: {garbage} is neither a TorchScript archive nor a torch state dict",
                    "point MODEL.BACKBONE.PATH at a CLIP weights file")
    assert len(err) < 400  # torch's paragraph of advice about weights_only is cut


def test_state_dict_that_is_not_clip(data_root, tmp_path, capsys):
    other = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(2, 3, 1, 1)}, other)
    code, err = run_cli(argv_for(data_root, tmp_path / "out", other), capsys)
    assert code == TRAIN.EXIT_RUN_ERROR
    assert_one_line(err, f"Error: {other} is not a CLIP state dict that clip.model.build_model accepts",
                    "point MODEL.BACKBONE.PATH at a CLIP weights file")


def test_offline_without_cached_weights_names_cache_and_key(data_root, tmp_path, capsys, monkeypatch):
    import dpl.clip.weights as weights

    def offline(url, target, sha):
        raise OSError("network unreachable")

    monkeypatch.setattr(weights, "download_verified", offline)
    monkeypatch.setenv("DPL_CLIP_CACHE", str(tmp_path / "cache"))
    argv = argv_for(data_root, tmp_path / "out", "", "MODEL.BACKBONE.NAME", "ViT-B/16")
    code, err = run_cli(argv, capsys)
    assert code == TRAIN.EXIT_RUN_ERROR
    assert_one_line(err, "Error: CLIP weights for 'ViT-B/16' not found: expected ViT-B-16.pt in the cache directory "
                    f"{tmp_path / 'cache'}", "set $DPL_CLIP_CACHE", "set MODEL.BACKBONE.PATH to a weights file")


# ----- --eval-only model dirs ---------------------------------------------------------------------
def fake_checkpoint(directory, model_name, file_name, trainer):
    """A checkpoint file as dpl writes them (the trainer check runs before any tensor is loaded)."""
    folder = directory / model_name
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "epoch": 1, "optimizer": None, "scheduler": None, "val_result": None,
                "trainer": trainer, "trainer_state": {}}, folder / file_name)
    (folder / "checkpoint").write_text(file_name + "\n")


def eval_only(data_root, tmp_path, weights, model_dir, *flags):
    return argv_for(data_root, tmp_path / "eval", weights,
                    flags=["--eval-only", "--model-dir", str(model_dir), *flags])


def test_eval_only_without_a_model_dir(data_root, tmp_path, tiny_clip_path, capsys):
    code, err = run_cli(eval_only(data_root, tmp_path, tiny_clip_path, tmp_path / "no_run"), capsys)
    assert code == TRAIN.EXIT_RUN_ERROR
    assert_one_line(err, f"Error: No model at {tmp_path}/no_run/prompt_learner/model-best.pth.tar: "
                    f"the model directory {tmp_path}/no_run does not exist")


def test_eval_only_with_an_empty_model_dir(data_root, tmp_path, tiny_clip_path, capsys):
    (tmp_path / "run").mkdir()
    code, err = run_cli(eval_only(data_root, tmp_path, tiny_clip_path, tmp_path / "run"), capsys)
    assert code == TRAIN.EXIT_RUN_ERROR
    assert_one_line(err, "Error: No model at", "it holds no checkpoint; CoOp saves its model as 'prompt_learner'")


def test_eval_only_with_a_missing_epoch_lists_the_available_ones(data_root, tmp_path, tiny_clip_path, capsys):
    fake_checkpoint(tmp_path / "run", "prompt_learner", "model.pth.tar-5", "CoOp")
    code, err = run_cli(eval_only(data_root, tmp_path, tiny_clip_path, tmp_path / "run", "--load-epoch", "3"),
                        capsys)
    assert code == TRAIN.EXIT_RUN_ERROR
    assert_one_line(err, f"Error: No model at {tmp_path}/run/prompt_learner/model.pth.tar-3",
                    "available: ['model.pth.tar-5']; choose one with --load-epoch N")


def test_eval_only_with_a_model_dir_of_another_trainer_layout(data_root, tmp_path, tiny_clip_path, capsys):
    fake_checkpoint(tmp_path / "run", "VLPromptLearner", "model.pth.tar-1", "PromptSRC")
    code, err = run_cli(eval_only(data_root, tmp_path, tiny_clip_path, tmp_path / "run", "--load-epoch", "1"),
                        capsys)
    assert code == TRAIN.EXIT_RUN_ERROR
    assert_one_line(err, "Error: No model at", "it holds checkpoints of ['VLPromptLearner'] (another trainer?)")


def test_eval_only_with_a_checkpoint_of_another_trainer(data_root, tmp_path, tiny_clip_path, capsys):
    fake_checkpoint(tmp_path / "run", "prompt_learner", "model.pth.tar-1", "KgCoOp")  # same model name as CoOp
    code, err = run_cli(eval_only(data_root, tmp_path, tiny_clip_path, tmp_path / "run", "--load-epoch", "1"),
                        capsys)
    assert code == TRAIN.EXIT_RUN_ERROR
    assert_one_line(err, "Error: ", f"{tmp_path}/run/prompt_learner/model.pth.tar-1 was saved by trainer \"KgCoOp\", "
                    "but this run uses \"CoOp\": pass --trainer KgCoOp")


def test_eval_only_with_a_truncated_checkpoint(data_root, tmp_path, tiny_clip_path, capsys):
    fake_checkpoint(tmp_path / "run", "prompt_learner", "model.pth.tar-1", "CoOp")
    path = tmp_path / "run/prompt_learner/model.pth.tar-1"
    path.write_bytes(path.read_bytes()[:200])
    code, err = run_cli(eval_only(data_root, tmp_path, tiny_clip_path, tmp_path / "run", "--load-epoch", "1"),
                        capsys)
    assert code == TRAIN.EXIT_RUN_ERROR
    assert_one_line(err, f"Error: Checkpoint {path} cannot be read", "truncated or not a checkpoint")


# ----- parse_results on empty and partial folders ----------------------------------------------------
def run_parse(argv, capsys):
    capsys.readouterr()
    code = parse_results.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_parse_results_on_an_empty_folder(tmp_path, capsys):
    code, _, err = run_parse([tmp_path], capsys)
    assert code == 1
    assert err == f"error: nothing found in {tmp_path}\n"
    code, _, err = run_parse([tmp_path / "missing"], capsys)
    assert code == 1
    assert_one_line(err, f"error: directory not found: '{tmp_path / 'missing'}'")
    code, _, err = run_parse([tmp_path, "--protocol", "base2new"], capsys)
    assert code == 1
    assert_one_line(err, f"error: no train_base/ or test_new/ folder under {tmp_path}")


def test_parse_results_on_a_partial_folder(tmp_path, capsys):
    """Finished seeds are summarised, the others are named with the reason; --strict makes it an error."""
    (tmp_path / "seed1").mkdir()
    (tmp_path / "seed1/results.json").write_text(json.dumps({"split": "test", "finished": True, "accuracy": 70.0}))
    (tmp_path / "seed2").mkdir()
    (tmp_path / "seed2/results.json").write_text('{"split": "test", "accur')  # truncated by a full disk
    (tmp_path / "seed3").mkdir()
    (tmp_path / "seed3/log.txt").write_text("epoch [1/5] batch [1/2] loss 1.0\n")  # killed mid-training
    code, out, _ = run_parse([tmp_path], capsys)
    assert code == 0
    assert "* accuracy: 70.00% +- 0.00%" in out
    assert (f"skipped: {tmp_path}/seed2: results.json is unreadable or holds no final accuracy "
            "(rerun the run's script to finish it); no log.txt") in out
    assert f"skipped: {tmp_path}/seed3: no '* accuracy: X%' line after" in out
    code, _, err = run_parse([tmp_path, "--strict"], capsys)
    assert code == 1
    assert_one_line(err, "error: 2 run(s) without a result (--strict): ", f"{tmp_path}/seed2", f"{tmp_path}/seed3")


# ----- crashes while writing (the previous good file survives, no partial file is read) -----------------
class SimulatedCrash(BaseException):
    """Stands for a kill mid-write (a BaseException: nothing may catch and carry on)."""


def json_that_dies_mid_write():
    """A stand-in for a module's ``json``: ``dump`` writes half of the document, then the process "dies"."""
    import types

    def dump(obj, f, **kwargs):
        text = json.dumps(obj, **kwargs)
        f.write(text[: len(text) // 2])
        f.flush()
        raise SimulatedCrash("killed mid-write")

    return types.SimpleNamespace(dump=dump, dumps=json.dumps, load=json.load, loads=json.loads,
                                 JSONDecodeError=json.JSONDecodeError)


def zeroshot_eval_argv(root, out, weights):
    argv = argv_for(root, out, weights, trainer="ZeroshotCLIP", flags=["--eval-only"])
    argv[argv.index(str(CONFIG))] = str(PROJECT_ROOT / "configs/trainers/ZeroshotCLIP/vit_b16.yaml")
    return argv


def test_crash_while_writing_results_json_keeps_the_previous_file(data_root, tmp_path, tiny_clip_path, capsys,
                                                                   monkeypatch):
    import dpl.utils.tools as tools

    out = tmp_path / "out"
    code, err = run_cli(zeroshot_eval_argv(data_root, out, tiny_clip_path), capsys)
    assert code == 0, err
    good = (out / "results.json").read_text()
    monkeypatch.setattr(tools, "json", json_that_dies_mid_write())  # the engine's real write_json path
    with pytest.raises(SimulatedCrash):
        run_cli(zeroshot_eval_argv(data_root, out, tiny_clip_path), capsys)
    assert (out / "results.json").read_text() == good  # untouched, still valid JSON
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".results.json")) == []
    # A SIGKILL cannot clean up: a stray temp file is left, and nothing reads it as a result.
    (out / ".results.json.x1y2.tmp").write_text('{"split": "test", "finished": true, "accuracy": 99.0')
    assert parse_run(str(out)).metrics["accuracy"] == json.loads(good)["accuracy"]
    from dpl.results.runs import read_state

    assert read_state(str(out)).finished


def test_crash_while_writing_the_fewshot_cache_leaves_no_cache(tmp_path, monkeypatch):
    """A crash mid-write leaves no cache file; the next run draws the same sample and caches it."""
    import random

    import dpl.data.datasets.fewshot_cache as fewshot_cache
    from datagen import dataset_cfg
    from dpl.data.datasets import build_dataset

    def few_shot_train(root):
        random.seed(1)  # what train.py's set_random_seed(SEED) does before the draw
        dataset = build_dataset(dataset_cfg(root, "dtd", num_shots=2, seed=1))
        return [(os.path.relpath(item.impath, root), item.label) for item in dataset.train_x]

    reference = few_shot_train(copy_dtd(tmp_path / "reference"))
    root = copy_dtd(tmp_path / "crashed")
    cache_dir = root / "dtd" / "split_fewshot"

    monkeypatch.setattr(fewshot_cache, "json", json_that_dies_mid_write())
    with pytest.raises(SimulatedCrash):
        few_shot_train(root)
    assert list(cache_dir.iterdir()) == []  # no partial cache, no temp file
    monkeypatch.undo()
    assert few_shot_train(root) == reference
    (cache_file,) = cache_dir.iterdir()
    assert json.loads(cache_file.read_text())["num_shots"] == 2
    # A truncated cache (e.g. copied by another tool) is ignored, not trusted, and the sample is the same.
    cache_file.write_text(cache_file.read_text()[:50])
    assert few_shot_train(root) == reference


# ----- the troubleshooting page quotes the messages the code prints -----------------------------------
DOC_QUOTES = [
    "DATA is not set: export DATA=/path/to/datasets", "is not a directory: point it to the folder holding the datasets",
    "dataset folder", "To write a new random split instead", "image files are missing:",
    "The file is damaged or not an image: replace it from the ",
    "all of their images are used, so they get fewer than", "is not registered; available:",
    "unknown CLIP backbone", "available, closest first:", "Config error: ", "is neither a TorchScript archive nor a torch "
    "state dict", "is not a CLIP state dict that clip.model.build_model accepts", "set $DPL_CLIP_CACHE",
    "(set $DPL_CLIP_CACHE to use another directory)", "does not match its SHA256 checksum",
    "wait for it to finish or choose another --output-dir", "if no run is active there, delete",
    "Taking over a stale run lock", "and TRAIN.IF_EXISTS is 'error': choose another --output-dir",
    "Pass TRAIN.IF_EXISTS resume to run its final test again.", "Loss is infinite or NaN!",
    "Try fp32 precision (the trainer's PREC key)", "choose one with --load-epoch N",
    "(another trainer?)", "the model directory", "was saved by trainer", "(with its config) or a model dir of a",
    "it is truncated or not a checkpoint", "is not finished: run its training script first",
    "is unreadable or holds no final", "run(s) without a result (--strict)", "-shot accuracy:",
    # run identity, interruptions, the scripts' Python
    "of another experiment: it is run ", "It is never reused for another experiment: ",
    "set TAG=<name> to give this run its own folder", "records no run identity (written before runs recorded one)",
    "Resuming the unfinished run in ", "delete the folder to run it again", "Resuming in epoch ",
    "Interrupted by ", "; run the same command again to continue", "no checkpoint of it was written yet",
    "cannot be a trailing option of a protocol script", "interrupted before any run started",
    "cannot import ", "creates .venv, which the scripts use", "is not an executable file: point it at an",
    # write failures and the umask
    "Cannot write ", "nothing was written", "create the run lock", "log lines from here on are only on "
    "the console", "Could not save the few-shot sample to ", "make room and run the same command again to continue",
    # config hygiene
    " would be ignored; ", " has no such setting", " learns no prompts: ",
    # plugins
    "a plugin file must be a .py file", ": no such file or folder", "the folder has neither trainers/ nor datasets/",
    " needs a GPU: ", "which this machine does not have (", " does not read ",
    "the key is there for upstream repositories' trainers", "disagree: set one of them",
    # launchers
    "needs submitit: pip install -e '.[cluster]'", "run this on a SLURM login node",
    "is not a job record: move the file", "fix them, or pass --keep-going to", ": only with --launcher ",
    "exists and was not written by this script",
    # several processes
    "is the global batch and does not divide among", "fewer than one global batch",
    "so that every process resumes its own random streams", "another process of this run stopped, so this one",
    "start at most that many processes per node", "start the run with torchrun",
    ": give the number of processes per run (1, 2, ...)", "the local launcher gives each job one GPU",
    "(TEST.EVALUATOR) cannot combine the", "needs a fixed seed (--seed N or SEED N)",
    # transforms
    "INPUT.PATCH_RANDAUGMENT_", "INPUT.TEACHER_VIEW is ", "frozen image teacher to show it",
    # images
    "images cannot be read, e.g.", "and replace them from the original dataset archive",
    "images: all readable", "UNREADABLE IMAGES", "complete, all images readable",
    # the image feature cache
    "Image feature cache: cannot use ", "); encoding the images again", "(the evaluation's results are not affected)",
    "the image feature cache is off (", "or point it at a folder", " is not a folder: point ", " at the cache folder",
    "no cached features of dataset ", "the name is DATASET.NAME, e.g. ",
]


def test_troubleshooting_page_quotes_current_messages():
    doc = (PROJECT_ROOT / "docs" / "TROUBLESHOOTING.md").read_text()
    sources = [PROJECT_ROOT / "train.py", PROJECT_ROOT / "parse_results.py", *(PROJECT_ROOT / "scripts").glob("*.sh"),
               PROJECT_ROOT / "scripts" / "run_protocol.py",
               *(PROJECT_ROOT / "dpl").rglob("*.py"), *(PROJECT_ROOT / "trainers").glob("*.py")]
    code = "\n".join(path.read_text() for path in sources)
    for quote in DOC_QUOTES:
        assert quote in doc, f"docs/TROUBLESHOOTING.md lacks {quote!r}"
        assert quote.replace("$DPL_CLIP_CACHE", "${CACHE_ENV}") in code or quote in code, f"no code prints {quote!r}"
