"""The protocol scripts (scripts/<method>/*.sh -> ``python -m dpl.protocols``) and scripts/run_protocol.py.

Fast tests run the steps in this process with train.py's ``cli`` replaced by a recorder
(``recorded``), so layout, argument pass-through, checkpoint choice, skip and resume are checked
without training. The end-to-end tests run the real scripts and train.py on a synthetic DTD with the
tiny CLIP (tiny copies of the shipped configs, ``tests/helpers.py``): base2new_train ->
base2new_test -> parse_results table for DropoutPrompt and CoOp.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dpl.tools.train
from dpl.protocols import cli as protocol_cli
from dpl.results.runs import parse_run
from helpers import run_script, script_env, tiny_config

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"

METHOD_DIRS = ("dpl", "coop", "cocoop", "kgcoop", "promptsrc", "ivlp", "maple", "zsclip")
TRAINED_METHODS = METHOD_DIRS[:-1]
TRAINER_SCRIPTS = ("base2new_train.sh", "base2new_test.sh", "xd_train.sh", "xd_test.sh", "few_shot.sh",
                   "long_tail.sh", "long_tail_test.sh")
DPL_CFG = "vit_b16_c2_ep20_batch4_4+4ctx"


@pytest.fixture
def env(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    return script_env(data, tmp_path / "out")


@pytest.fixture
def recorded(monkeypatch):
    """train.py's ``cli`` replaced by a recorder of its argv (the steps run in this process)."""
    calls = []

    def record(argv):
        calls.append(list(argv))
        return 0

    monkeypatch.setattr(dpl.tools.train, "cli", record)
    return calls


def step(script, *args, env):
    """Run ``scripts/<script> ARGS`` in this process (as ``python -m dpl.protocols`` does); its exit code."""
    method, name = script.split("/")
    step_name = re.search(r"^(\w+) \"\$@\"$", (SCRIPTS / script).read_text(), re.M).group(1)
    argv = [str(SCRIPTS / method), script, step_name, *map(str, args)]
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        return protocol_cli.main(argv)
    finally:
        os.environ.clear()
        os.environ.update(old)


def option(argv, flag):
    return argv[argv.index(flag) + 1]


def trailing_opts(argv):
    """The KEY VALUE opts after the last --flag (train.py's argparse.REMAINDER)."""
    last = max(i for i, a in enumerate(argv) if a.startswith("--"))
    return argv[last + (1 if argv[last] == "--eval-only" else 2):]


def finish_run(run_dir, accuracy=50.0, epochs=(1,), model="prompt_learner"):
    """A finished training run of older code (no run identity): checkpoints + results.json."""
    (run_dir / model).mkdir(parents=True, exist_ok=True)
    for epoch in epochs:
        (run_dir / model / f"model.pth.tar-{epoch}").write_bytes(b"")
    (run_dir / "results.json").write_text(json.dumps({"split": "test", "finished": True, "accuracy": accuracy}))


# ---------------------------------------------------------------------------------------------
# Fast: the steps in this process, train.py recorded
# ---------------------------------------------------------------------------------------------


def test_every_method_config_exists():
    """Scripts must not reference configs that do not exist."""
    for method in METHOD_DIRS:
        text = (SCRIPTS / method / "method.sh").read_text()
        trainer = re.search(r"^TRAINER=(\S+)", text, re.M).group(1)
        for name in re.findall(r"^CFG_\w+=(\S+)", text, re.M):
            assert (REPO / "configs" / "trainers" / trainer / f"{name}.yaml").is_file(), (method, name)


def test_base2new_train_command_line(env, recorded):
    assert step("dpl/base2new_train.sh", "dtd", 1, "OPTIM.MAX_EPOCH", 20, "DATALOADER.NUM_WORKERS", 2, env=env) == 0
    (argv,) = recorded
    assert option(argv, "--root") == env["DATA"]
    assert option(argv, "--seed") == "1"
    assert option(argv, "--trainer") == "DropoutPrompt"
    assert option(argv, "--dataset-config-file") == str(REPO / "configs" / "datasets" / "dtd.yaml")
    assert option(argv, "--config-file") == str(REPO / "configs" / "trainers" / "DropoutPrompt" / f"{DPL_CFG}.yaml")
    # the overrides change nothing of the experiment (20 epochs is the config's; workers are not part of it):
    # the upstream layout, exactly
    assert option(argv, "--output-dir") == (
        f"{env['OUTPUT']}/base2new/train_base/dtd/shots_16/DropoutPrompt/{DPL_CFG}/seed1")
    # the user's opts come last, so they override the script's own
    assert trailing_opts(argv) == ["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base",
                                   "OPTIM.MAX_EPOCH", "20", "DATALOADER.NUM_WORKERS", "2"]


def test_overrides_that_change_the_experiment_get_their_own_folder(env, recorded):
    base = f"{env['OUTPUT']}/base2new/train_base/dtd"
    cases = [
        (["TRAINER.DPL.IMPORTANCE", "uniform"], f"{base}/shots_16/DropoutPrompt/{DPL_CFG}@IMPORTANCE=uniform/seed1"),
        # sorted by key, whatever the order on the command line; an integer for a float key is that float
        (["TRAINER.DPL.RES_WEIGHT", "0", "TRAINER.DPL.PERTURBATION", "zero"],
         f"{base}/shots_16/DropoutPrompt/{DPL_CFG}@PERTURBATION=zero,RES_WEIGHT=0.0/seed1"),
        (["DATASET.NUM_SHOTS", "4"], f"{base}/shots_4/DropoutPrompt/{DPL_CFG}/seed1"),
        (["DATASET.NUM_SHOTS", "4", "OPTIM.LR", "0.01"], f"{base}/shots_4/DropoutPrompt/{DPL_CFG}@LR=0.01/seed1"),
    ]
    for opts, run_dir in cases:
        assert step("dpl/base2new_train.sh", "dtd", 1, *opts, env=env) == 0
        assert option(recorded[-1], "--output-dir") == run_dir, opts
    assert step("dpl/base2new_train.sh", "dtd", 1, "TRAINER.DPL.IMPORTANCE", "uniform",
                env={**env, "TAG": "vanilla"}) == 0
    assert option(recorded[-1], "--output-dir") == f"{base}/shots_16/DropoutPrompt/{DPL_CFG}@vanilla/seed1"
    # the test script finds its training folder by the same rule
    finish_run(Path(f"{base}/shots_16/DropoutPrompt/{DPL_CFG}@IMPORTANCE=uniform/seed1"), model="VLPromptLearner")
    assert step("dpl/base2new_test.sh", "dtd", 1, "TRAINER.DPL.IMPORTANCE", "uniform", env=env) == 0
    assert option(recorded[-1], "--model-dir") == f"{base}/shots_16/DropoutPrompt/{DPL_CFG}@IMPORTANCE=uniform/seed1"
    assert option(recorded[-1], "--output-dir") == (
        f"{env['OUTPUT']}/base2new/test_new/dtd/shots_16/DropoutPrompt/{DPL_CFG}@IMPORTANCE=uniform/seed1")


def test_coop_uses_cocoop_protocol_configs(env, recorded):
    for dataset, cfg in (("dtd", "vit_b16_ctxv1"), ("imagenet", "vit_b16_ep50_ctxv1")):
        assert step("coop/base2new_train.sh", dataset, 2, env=env) == 0
        assert option(recorded[-1], "--config-file").endswith(f"/CoOp/{cfg}.yaml")
    assert step("coop/base2new_train.sh", "dtd", 2, env={**env, "CFG": "vit_b16_ep50"}) == 0
    assert "/base2new/train_base/dtd/shots_16/CoOp/vit_b16_ep50/seed2" in option(recorded[-1], "--output-dir")


def test_test_script_loads_final_checkpoint_or_loadep(env, recorded, capsys):
    out = Path(env["OUTPUT"])
    train_dir = out / f"base2new/train_base/dtd/shots_16/DropoutPrompt/{DPL_CFG}/seed1"
    finish_run(train_dir, epochs=(1, 3, 10), model="VLPromptLearner")
    assert step("dpl/base2new_test.sh", "dtd", 1, "DATALOADER.NUM_WORKERS", 1, env=env) == 0
    argv = recorded[-1]
    assert "--eval-only" in argv
    assert option(argv, "--model-dir") == str(train_dir)
    assert option(argv, "--load-epoch") == "10"
    assert option(argv, "--output-dir") == str(out / f"base2new/test_new/dtd/shots_16/DropoutPrompt/{DPL_CFG}/seed1")
    assert trailing_opts(argv) == ["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "new",
                                   "DATALOADER.NUM_WORKERS", "1"]
    assert "records no run identity" in capsys.readouterr().out  # a folder of older code, judged as before
    assert step("dpl/base2new_test.sh", "dtd", 1, env={**env, "LOADEP": "3"}) == 0
    assert option(recorded[-1], "--load-epoch") == "3"


def test_test_script_refuses_unfinished_training(env, recorded, capsys):
    assert step("dpl/base2new_test.sh", "dtd", 1, env=env) == 1
    assert "is not finished: run its training script first" in capsys.readouterr().err
    assert recorded == []


def test_finished_run_skipped_and_a_failed_start_is_not_resumed(env, recorded, capsys):
    out = Path(env["OUTPUT"])
    run = out / f"base2new/train_base/dtd/shots_16/DropoutPrompt/{DPL_CFG}/seed1"
    run.mkdir(parents=True)
    (run / "log.txt").write_text("Config error: ...\n")  # a run that stopped before its first checkpoint
    assert step("dpl/base2new_train.sh", "dtd", 1, env=env) == 0
    assert "Resuming" not in capsys.readouterr().out  # nothing to resume: a fresh start
    assert len(recorded) == 1
    finish_run(run, accuracy=61.25, model="VLPromptLearner")
    assert step("dpl/base2new_train.sh", "dtd", 1, env=env) == 0
    printed = capsys.readouterr().out
    assert f"Skip: the run in {run} is finished" in printed and "accuracy 61.25%" in printed
    assert len(recorded) == 1  # train.py not started again


@pytest.mark.slow
def test_data_unset_or_missing_is_a_clear_error(env):
    without_data = {k: v for k, v in env.items() if k != "DATA"}
    proc = run_script("coop/base2new_train.sh", "dtd", 1, env=without_data)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("coop/base2new_train.sh: DATA is not set: export DATA=/path/to/datasets "
                                   "(the folder holding dtd/, eurosat/, ...)")
    proc = run_script("coop/base2new_train.sh", "dtd", 1, env={**env, "DATA": "/nonexistent/data"})
    assert proc.returncode == 1 and "DATA=/nonexistent/data is not a directory" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["dtd"], "usage: bash scripts/kgcoop/base2new_train.sh DATASET SEED [KEY VALUE ...]"),
    (["dtd", "one"], "SEED must be a non-negative integer, got 'one'"),
    (["dtd", "1", "OPTIM.MAX_EPOCH"], "extra arguments must be KEY VALUE pairs for train.py (got: OPTIM.MAX_EPOCH)"),
    (["no_such_set", "1"], "unknown dataset 'no_such_set'"),
])
def test_usage_errors(env, recorded, capsys, args, message):
    assert step("kgcoop/base2new_train.sh", *args, env=env) == 1
    err = capsys.readouterr().err
    assert err.startswith("kgcoop/base2new_train.sh: ") and message in err and err.count("\n") == 1
    assert recorded == []


def test_config_errors_of_overrides_are_one_line_before_anything_runs(env, recorded, capsys):
    assert step("dpl/base2new_train.sh", "dtd", 1, "OPTIM.LRR", "1", env=env) == 2
    assert capsys.readouterr().err == "Config error: Non-existent key: OPTIM.LRR\n"
    assert step("dpl/base2new_train.sh", "dtd", 1, "TRAINER.PROMPTSRC.N_CTX_TEXT", "2", env=env) == 2
    assert "DropoutPrompt reads TRAINER.DPL, not TRAINER.PROMPTSRC" in capsys.readouterr().err
    assert recorded == []


def plan(script, *args, env, capsys):
    assert step(script, *args, env={**env, "DPL_PLAN": "1"}) == 0
    return [line.split(" ", 1) for line in capsys.readouterr().out.splitlines()]


def test_layouts_of_every_protocol(env, capsys):
    o = env["OUTPUT"]
    src = "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets"

    def planned(script, *args):
        return plan(script, *args, env=env, capsys=capsys)

    assert planned("promptsrc/xd_train.sh", 2) == [["train", f"{o}/imagenet/PromptSRC/{src}_16shots/seed2"]]
    assert planned("promptsrc/xd_test.sh", "imagenet_a", 2) == [
        ["test", f"{o}/evaluation/PromptSRC/{src}_16shots/imagenet_a/seed2"]]
    assert planned("promptsrc/few_shot.sh", "dtd", 4, 3) == [
        ["train", f"{o}/few_shot/dtd/PromptSRC/vit_b16_c2_ep50_batch4_4+4ctx_few_shot_4shots/seed3"]]
    assert planned("ivlp/long_tail.sh", "dtd", 1) == [
        ["train", f"{o}/long_tail/imb10/train_base/dtd/shots_10000/IVLP/{DPL_CFG}/seed1"]]
    assert planned("ivlp/long_tail_test.sh", "dtd", 1, "5") == [
        ["test", f"{o}/long_tail/imb5/test_new/dtd/shots_10000/IVLP/{DPL_CFG}/seed1"]]
    assert planned("zsclip/zeroshot.sh", "eurosat") == [["test", f"{o}/ZeroshotCLIP/vit_b16/eurosat"]]
    assert planned("zsclip/base2new_test.sh", "dtd") == [
        ["test", f"{o}/base2new/train_base/dtd/shots_16/ZeroshotCLIP/vit_b16/seed1"],
        ["test", f"{o}/base2new/test_new/dtd/shots_16/ZeroshotCLIP/vit_b16/seed1"]]
    assert planned("zsclip/xd_test.sh", "imagenet") == [
        ["test", f"{o}/evaluation/ZeroshotCLIP/vit_b16/imagenet/seed1"]]
    # variants go on the config folder, shots into the shots part, in every layout
    assert planned("promptsrc/few_shot.sh", "dtd", 4, 3, "OPTIM.LR", "0.1") == [
        ["train", f"{o}/few_shot/dtd/PromptSRC/vit_b16_c2_ep50_batch4_4+4ctx_few_shot_4shots@LR=0.1/seed3"]]
    assert planned("promptsrc/xd_test.sh", "imagenet_a", 2, "DATASET.NUM_SHOTS", "8") == [
        ["test", f"{o}/evaluation/PromptSRC/{src}_8shots/imagenet_a/seed2"]]


def test_all_images_loadep_and_script_keys(env, capsys, recorded):
    o = env["OUTPUT"]
    # all images is not the protocol's 16 shots (nor the few-shot run's K)
    assert plan("dpl/base2new_train.sh", "dtd", 1, "DATASET.NUM_SHOTS", "-1", env=env, capsys=capsys) == [
        ["train", f"{o}/base2new/train_base/dtd/shots_all/DropoutPrompt/{DPL_CFG}/seed1"]]
    assert plan("coop/few_shot.sh", "dtd", 4, 1, "DATASET.NUM_SHOTS", "0", env=env, capsys=capsys) == [
        ["train", f"{o}/few_shot/dtd/CoOp/vit_b16_ep50_ctxv1_allshots/seed1"]]
    # another epoch than the last is another evaluation: its own folder; the model is found as always
    assert plan("dpl/base2new_test.sh", "dtd", 1, env={**env, "LOADEP": "3"}, capsys=capsys) == [
        ["test", f"{o}/base2new/test_new/dtd/shots_16/DropoutPrompt/{DPL_CFG}@LOADEP=3/seed1"]]
    assert plan("dpl/base2new_test.sh", "dtd", 1, "TRAINER.DPL.IMPORTANCE", "uniform", env={**env, "LOADEP": "3"},
                capsys=capsys) == [
        ["test", f"{o}/base2new/test_new/dtd/shots_16/DropoutPrompt/{DPL_CFG}@IMPORTANCE=uniform,LOADEP=3/seed1"]]
    # what a script sets itself cannot be a trailing option: the run would land elsewhere than judged
    for key, value in (("OUTPUT_DIR", "/tmp/x"), ("SEED", "2"), ("DATASET.NAME", "EuroSAT"), ("RESUME", "/tmp/y")):
        assert step("dpl/base2new_train.sh", "dtd", 1, key, value, env=env) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"dpl/base2new_train.sh: {key} cannot be a trailing option of a protocol script: ")
    assert recorded == []


def test_a_finished_evaluation_is_skipped_after_its_model_checkpoints_were_deleted(env, recorded, capsys):
    out = Path(env["OUTPUT"])
    train_dir = out / f"base2new/train_base/dtd/shots_16/DropoutPrompt/{DPL_CFG}/seed1"
    finish_run(train_dir, epochs=(20,), model="VLPromptLearner")
    assert step("dpl/base2new_test.sh", "dtd", 1, env=env) == 0
    argv = recorded[-1]
    test_dir = Path(option(argv, "--output-dir"))
    from dpl.results.runs import model_reference
    from dpl.results.identity import run_identity

    # what train.py would have written: the evaluation of epoch 20 of that model
    cfg = dpl.tools.train.setup_cfg(dpl.tools.train.build_parser().parse_args(argv))
    identity = run_identity(cfg, model=model_reference(str(train_dir), 20))
    test_dir.mkdir(parents=True)
    (test_dir / "results.json").write_text(json.dumps({"split": "test", "finished": True, "accuracy": 40.0,
                                                       "identity": identity}))
    json_path = train_dir / "results.json"
    json_path.write_text(json.dumps({**json.loads(json_path.read_text()), "epoch": 20}))
    (train_dir / "VLPromptLearner" / "model.pth.tar-20").unlink()  # deleted to save space
    assert step("dpl/base2new_test.sh", "dtd", 1, env=env) == 0
    assert f"Skip: the evaluation in {test_dir} is finished" in capsys.readouterr().out
    assert len(recorded) == 1


def test_every_trainer_script_exists_and_plans():
    for method in TRAINED_METHODS:
        for script in TRAINER_SCRIPTS:
            assert (SCRIPTS / method / script).is_file(), f"{method}/{script}"
    for script in ("zeroshot.sh", "base2new_test.sh", "xd_test.sh"):
        assert (SCRIPTS / "zsclip" / script).is_file()


def test_long_tail_passes_ratio_and_shots(env, recorded, capsys):
    assert step("coop/long_tail.sh", "dtd", 1, "20", "DATALOADER.NUM_WORKERS", 1, env=env) == 0
    argv = recorded[-1]
    opts = trailing_opts(argv)
    # yacs keeps the float type of the default: the integer ratio is passed as 20.0
    assert opts[:8] == ["DATASET.NUM_SHOTS", "10000", "DATASET.SUBSAMPLE_CLASSES", "base",
                        "DATASET.IMBALANCE_RATIO", "20.0", "TEST.PER_CLASS_RESULT", "True"]
    assert opts[-2:] == ["DATALOADER.NUM_WORKERS", "1"]
    assert "/long_tail/imb20/train_base/dtd/shots_10000/CoOp/" in option(argv, "--output-dir")
    assert plan("coop/long_tail.sh", "dtd", 1, "20.0", env=env, capsys=capsys) == plan(
        "coop/long_tail.sh", "dtd", 1, "20", env=env, capsys=capsys)


def test_xd_test_uses_full_test_set_of_target(env, recorded):
    out = Path(env["OUTPUT"])
    finish_run(out / "imagenet/CoOp/vit_b16_ep50_ctxv1_16shots/seed1", epochs=(50,))
    assert step("coop/xd_test.sh", "caltech101", 1, env=env) == 0
    argv = recorded[-1]
    assert trailing_opts(argv) == []  # no NUM_SHOTS, no SUBSAMPLE_CLASSES: all classes, full test set
    assert option(argv, "--load-epoch") == "50"


@pytest.mark.slow
def test_scripts_run_on_the_checkouts_python_from_an_empty_environment(tmp_path):
    """After `make test`, a fresh shell with nothing activated (and PYTHON set for something else) works."""
    if not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv in this checkout (make test creates it)")
    env = {"HOME": os.environ.get("HOME", str(tmp_path)), "PATH": "/usr/bin:/bin", "DPL_PLAN": "1",
           "OUTPUT": str(tmp_path / "out"), "PYTHON": "/usr/bin/false"}
    proc = subprocess.run(["bash", str(SCRIPTS / "dpl" / "base2new_train.sh"), "dtd", "1"], env=env, cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"train {tmp_path}/out/base2new/train_base/dtd/shots_16/DropoutPrompt/{DPL_CFG}/seed1\n"


def test_a_python_without_the_requirements_is_one_line(tmp_path):
    """The interpreter fallback (no .venv): a Python that cannot import the project says what to do."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("_common.sh", "_python.sh"):
        (repo / "scripts" / name).write_text((SCRIPTS / name).read_text())
    (repo / "scripts" / "dpl").mkdir()
    for name in ("method.sh", "base2new_train.sh"):
        (repo / "scripts" / "dpl" / name).write_text((SCRIPTS / "dpl" / name).read_text())
    (repo / "dpl" / "protocols").mkdir(parents=True)
    for name in ("__init__.py", "protocols/__init__.py", "protocols/__main__.py"):
        (repo / "dpl" / name).write_text((REPO / "dpl" / name).read_text())
    (repo / "dpl" / "protocols" / "cli.py").write_text("import yacs_is_not_installed_here\n")
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(repo / "scripts" / "dpl" / "base2new_train.sh"), "dtd", "1"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr == (f"dpl/base2new_train.sh: {sys.executable} cannot import yacs_is_not_installed_here: run "
                           "`make test` once in the checkout (it creates .venv, which the scripts use) or set PYTHON "
                           "to an interpreter where `pip install -e .` was run\n")


@pytest.mark.slow
def test_run_protocol_dry_run_plan(env):
    out = Path(env["OUTPUT"])
    finish_run(out / f"base2new/train_base/dtd/shots_16/DropoutPrompt/{DPL_CFG}/seed1", model="VLPromptLearner")
    damaged = out / "base2new/train_base/dtd/shots_16/CoOp/vit_b16_ctxv1/seed2/prompt_learner"
    damaged.mkdir(parents=True)
    (damaged / "model-last.pth.tar").write_bytes(b"not a checkpoint")
    (damaged / "checkpoint").write_text("model-last.pth.tar\n")
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "run_protocol.py"), "base2new", "--methods", "dpl", "coop", "zsclip",
         "--datasets", "dtd", "--seeds", "1", "2", "--dry-run", "--", "DATALOADER.NUM_WORKERS", "1",
         "TRAINER.DPL.IMPORTANCE", "full"],
        capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Plan: 9 jobs, 1 done, 8 to run")
    # TRAINER.DPL keys go to the methods that read TRAINER.DPL only
    unreadable = f"             Error: Checkpoint {damaged}/model-last.pth.tar cannot be read ("
    assert [line if not line.startswith(unreadable) else unreadable for line in lines[1:]] == [
        "  [    done] bash scripts/dpl/base2new_train.sh dtd 1",
        "  [    todo] bash scripts/dpl/base2new_test.sh dtd 1 DATALOADER.NUM_WORKERS 1 TRAINER.DPL.IMPORTANCE full",
        "  [    todo] bash scripts/dpl/base2new_train.sh dtd 2 DATALOADER.NUM_WORKERS 1 TRAINER.DPL.IMPORTANCE full",
        "  [    todo] bash scripts/dpl/base2new_test.sh dtd 2 DATALOADER.NUM_WORKERS 1 TRAINER.DPL.IMPORTANCE full",
        "  [    todo] bash scripts/coop/base2new_train.sh dtd 1 DATALOADER.NUM_WORKERS 1",
        "  [    todo] bash scripts/coop/base2new_test.sh dtd 1 DATALOADER.NUM_WORKERS 1",
        "  [   error] bash scripts/coop/base2new_train.sh dtd 2 DATALOADER.NUM_WORKERS 1",
        unreadable,  # a damaged folder is a line of the plan, not a traceback
        "  [   error] bash scripts/coop/base2new_test.sh dtd 2 DATALOADER.NUM_WORKERS 1",
        unreadable,
        "  [    todo] bash scripts/zsclip/base2new_test.sh dtd 1 DATALOADER.NUM_WORKERS 1",
    ]


@pytest.mark.slow
def test_run_protocol_knows_every_method_folder_and_runs_a_training_free_one_once(env, tmp_path):
    """A new ``scripts/<method>/`` folder (here in a copy of scripts/) is a method of run_protocol.py, with no
    list to edit; a method whose trainer does not train runs for the first seed only, whatever its name."""
    scripts = tmp_path / "scripts"
    shutil.copytree(SCRIPTS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    for name, trainer, config, script in (("mycoop", "CoOp", "CFG_BASE2NEW=vit_b16_ctxv1", "coop/base2new_train.sh"),
                                          ("myzs", "ZeroshotCLIP", "CFG_ZEROSHOT=vit_b16", "zsclip/base2new_test.sh")):
        (scripts / name).mkdir()
        (scripts / name / "method.sh").write_text(f"TRAINER={trainer}\n{config}\n")
        shutil.copy(SCRIPTS / script, scripts / name / os.path.basename(script))
    proc = subprocess.run(
        [sys.executable, str(scripts / "run_protocol.py"), "base2new", "--methods", "mycoop", "myzs",
         "--datasets", "dtd", "--seeds", "1", "2", "--dry-run"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1:] == [
        "  [    todo] bash scripts/mycoop/base2new_train.sh dtd 1",
        "  [    todo] bash scripts/mycoop/base2new_train.sh dtd 2",
        "  [    todo] bash scripts/myzs/base2new_test.sh dtd 1",
    ]
    source = (SCRIPTS / "run_protocol.py").read_text()
    assert "sys.path" not in source


def test_method_scripts_leave_the_output_layout_to_python():
    """The output layout has one definition (dpl.results.layout): no method script builds a path under OUTPUT."""
    for script in [SCRIPTS / "_common.sh", *SCRIPTS.glob("*/*.sh")]:
        text = script.read_text()
        assert "$OUTPUT/" not in text and "${OUTPUT}/" not in text and "OUTPUT_DIR" not in text, script


# ---------------------------------------------------------------------------------------------
# End to end: real scripts and train.py, synthetic DTD, tiny CLIP
# ---------------------------------------------------------------------------------------------

E2E_METHODS = {"dpl": ("DropoutPrompt", DPL_CFG), "coop": ("CoOp", "vit_b16_ctxv1")}


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, tiny_clip_path):
    """base2new_train + base2new_test of DropoutPrompt and CoOp on a synthetic DTD, run from a foreign cwd."""
    from datagen import make_dataset

    root = tmp_path_factory.mktemp("e2e")
    make_dataset(root / "data", "dtd", n_classes=4, per_class=8)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    procs, envs = {}, {}
    for method, (trainer, cfg) in E2E_METHODS.items():
        envs[method] = script_env(root / "data", root / "out",
                                  CFG=tiny_config(root / "configs" / method, trainer, cfg, tiny_clip_path))
        for script in ("base2new_train.sh", "base2new_test.sh"):
            procs[method, script] = proc = run_script(f"{method}/{script}", "dtd", 1, env=envs[method], cwd=elsewhere)
            assert proc.returncode == 0, f"{method}/{script}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return {"root": root, "envs": envs, "procs": procs}


@pytest.mark.slow
def test_e2e_runs_write_upstream_layout(e2e):
    out = e2e["root"] / "out" / "base2new"
    for trainer, cfg in E2E_METHODS.values():
        for part in ("train_base", "test_new"):
            run = out / part / "dtd" / "shots_16" / trainer / cfg / "seed1"
            result = parse_run(str(run))
            assert result.ok and result.source == str(run / "results.json"), result.problem
            assert (run / "log.txt").is_file()
        train = out / "train_base" / "dtd" / "shots_16" / trainer / cfg / "seed1"
        assert list(train.glob("*/model.pth.tar-1"))  # the config's one epoch
        assert not list(train.glob("*/model-last.pth.tar"))  # superseded by the final checkpoint
        assert "Finish training" in (train / "log.txt").read_text()
    assert not (e2e["root"] / "elsewhere" / "output").exists()  # nothing written relative to the cwd


@pytest.mark.slow
def test_e2e_table_has_the_right_hm(e2e):
    out = e2e["root"] / "out" / "base2new"
    proc = subprocess.run([sys.executable, str(REPO / "parse_results.py"), "--protocol", "base2new", str(out),
                           "--format", "json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    (row,) = doc["rows"]
    cells = {(c["group"], c["column"]): c for c in row["cells"]}
    for trainer, cfg in E2E_METHODS.values():
        base = json.loads((out / "train_base/dtd/shots_16" / trainer / cfg / "seed1/results.json").read_text())
        new = json.loads((out / "test_new/dtd/shots_16" / trainer / cfg / "seed1/results.json").read_text())
        assert base["subsample_classes"] == "base" and new["subsample_classes"] == "new"
        assert cells[(trainer, "Base")]["mean"] == pytest.approx(base["accuracy"])
        assert cells[(trainer, "New")]["mean"] == pytest.approx(new["accuracy"])
        b, n = base["accuracy"], new["accuracy"]
        assert cells[(trainer, "HM")]["mean"] == pytest.approx(0.0 if b + n == 0 else 2 * b * n / (b + n))
    assert doc["missing"] == []


@pytest.mark.slow
def test_e2e_finished_run_is_skipped(e2e):
    proc = run_script("dpl/base2new_train.sh", "dtd", 1, env=e2e["envs"]["dpl"])
    assert proc.returncode == 0
    assert proc.stdout.startswith("Skip: the run in ") and "is finished" in proc.stdout
    proc = run_script("coop/base2new_test.sh", "dtd", 1, env=e2e["envs"]["coop"])
    assert proc.returncode == 0 and proc.stdout.startswith("Skip: the evaluation in ")
