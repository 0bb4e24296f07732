"""The protocol scripts (scripts/<method>/*.sh on scripts/_common.sh) and scripts/run_protocol.py.

Fast tests run the scripts with a stand-in interpreter that records the train.py command line
(PYTHON=<stub>), so layout, argument pass-through, checkpoint choice, skip and resume are checked
without torch. The end-to-end tests run the real train.py on a synthetic DTD with the tiny CLIP:
base2new_train -> base2new_test -> parse_results table for DropoutPrompt and CoOp.
"""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
import parse_results  # noqa: E402  (the repo root is on sys.path: tests/conftest.py)

METHOD_DIRS = ("dpl", "coop", "kgcoop", "promptsrc", "ivlp", "zsclip")
TRAINED_METHODS = METHOD_DIRS[:-1]
TRAINER_SCRIPTS = ("base2new_train.sh", "base2new_test.sh", "xd_train.sh", "xd_test.sh", "few_shot.sh",
                   "long_tail.sh", "long_tail_test.sh")
DPL_CFG = "vit_b16_c2_ep20_batch4_4+4ctx"


def run_script(script, *args, env=None, cwd=None):
    return subprocess.run(["bash", str(SCRIPTS / script), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd)


@pytest.fixture
def stub_env(tmp_path):
    """DATA, OUTPUT and a PYTHON that records train.py calls (one line each) and runs parse_results for real."""
    data = tmp_path / "data"
    data.mkdir()
    calls = tmp_path / "calls.txt"
    stub = tmp_path / "python"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        'if [[ $1 == */train.py ]]; then printf "%q " "$@" >> "$CALLS"; echo >> "$CALLS"; exit 0; fi\n'
        f'exec {shlex.quote(sys.executable)} "$@"\n'
    )
    stub.chmod(0o755)
    env = {**os.environ, "DATA": str(data), "OUTPUT": str(tmp_path / "out"), "PYTHON": str(stub),
           "CALLS": str(calls)}
    for key in ("CFG", "LOADEP", "SOURCE", "DPL_PLAN"):
        env.pop(key, None)
    return env


def recorded_calls(env):
    path = Path(env["CALLS"])
    return [shlex.split(line) for line in path.read_text().splitlines()] if path.exists() else []


def option(argv, flag):
    return argv[argv.index(flag) + 1]


def trailing_opts(argv):
    """The KEY VALUE opts after the last --flag (train.py's argparse.REMAINDER)."""
    last = max(i for i, a in enumerate(argv) if a.startswith("--"))
    return argv[last + (1 if argv[last] == "--eval-only" else 2):]


def finish_run(run_dir, accuracy=50.0, epochs=(1,), model="prompt_learner"):
    """A finished training run as the engine leaves it: checkpoints + results.json."""
    (run_dir / model).mkdir(parents=True, exist_ok=True)
    for epoch in epochs:
        (run_dir / model / f"model.pth.tar-{epoch}").write_bytes(b"")
    (run_dir / "results.json").write_text(json.dumps({"split": "test", "finished": True, "accuracy": accuracy}))


# ---------------------------------------------------------------------------------------------
# Fast: shell logic with a recording interpreter
# ---------------------------------------------------------------------------------------------


def test_every_method_config_exists():
    """Trap #16: scripts must not reference configs that do not exist."""
    for method in METHOD_DIRS:
        text = (SCRIPTS / method / "method.sh").read_text()
        trainer = re.search(r"^TRAINER=(\S+)", text, re.M).group(1)
        for name in re.findall(r"^CFG_\w+=(\S+)", text, re.M):
            assert (REPO / "configs" / "trainers" / trainer / f"{name}.yaml").is_file(), (method, name)


def test_base2new_train_command_line(stub_env, tmp_path):
    proc = run_script("dpl/base2new_train.sh", "dtd", 1, "MODEL.BACKBONE.PATH", "tiny.pt", "OPTIM.MAX_EPOCH", 1,
                      env=stub_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (argv,) = recorded_calls(stub_env)
    assert argv[0] == str(REPO / "train.py")
    assert option(argv, "--root") == stub_env["DATA"]
    assert option(argv, "--seed") == "1"
    assert option(argv, "--trainer") == "DropoutPrompt"
    assert option(argv, "--dataset-config-file") == str(REPO / "configs" / "datasets" / "dtd.yaml")
    assert option(argv, "--config-file") == str(REPO / "configs" / "trainers" / "DropoutPrompt" / f"{DPL_CFG}.yaml")
    assert option(argv, "--output-dir") == (
        f"{stub_env['OUTPUT']}/base2new/train_base/dtd/shots_16/DropoutPrompt/{DPL_CFG}/seed1")
    # the user's opts come last, so they override the script's own
    assert trailing_opts(argv) == ["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base",
                                   "MODEL.BACKBONE.PATH", "tiny.pt", "OPTIM.MAX_EPOCH", "1"]


def test_coop_uses_cocoop_protocol_configs(stub_env):
    for dataset, cfg in (("dtd", "vit_b16_ctxv1"), ("imagenet", "vit_b16_ep50_ctxv1")):
        assert run_script("coop/base2new_train.sh", dataset, 2, env=stub_env).returncode == 0
        assert option(recorded_calls(stub_env)[-1], "--config-file").endswith(f"/CoOp/{cfg}.yaml")
    assert run_script("coop/base2new_train.sh", "dtd", 2, env={**stub_env, "CFG": "vit_b16_ep50"}).returncode == 0
    assert "/base2new/train_base/dtd/shots_16/CoOp/vit_b16_ep50/seed2" in option(recorded_calls(stub_env)[-1],
                                                                                  "--output-dir")


def test_test_script_loads_final_checkpoint_or_loadep(stub_env):
    out = Path(stub_env["OUTPUT"])
    train_dir = out / f"base2new/train_base/dtd/shots_16/DropoutPrompt/{DPL_CFG}/seed1"
    finish_run(train_dir, epochs=(1, 3, 10), model="VLPromptLearner")
    assert run_script("dpl/base2new_test.sh", "dtd", 1, "OPTIM.MAX_EPOCH", 1, env=stub_env).returncode == 0
    argv = recorded_calls(stub_env)[-1]
    assert "--eval-only" in argv
    assert option(argv, "--model-dir") == str(train_dir)
    assert option(argv, "--load-epoch") == "10"
    assert option(argv, "--output-dir") == str(out / f"base2new/test_new/dtd/shots_16/DropoutPrompt/{DPL_CFG}/seed1")
    assert trailing_opts(argv) == ["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "new",
                                   "OPTIM.MAX_EPOCH", "1"]
    assert run_script("dpl/base2new_test.sh", "dtd", 1, env={**stub_env, "LOADEP": "3"}).returncode == 0
    assert option(recorded_calls(stub_env)[-1], "--load-epoch") == "3"


def test_test_script_refuses_unfinished_training(stub_env):
    proc = run_script("dpl/base2new_test.sh", "dtd", 1, env=stub_env)
    assert proc.returncode == 1
    assert "is not finished: run its training script first" in proc.stderr
    assert recorded_calls(stub_env) == []


def test_finished_run_skipped_unfinished_resumed(stub_env):
    out = Path(stub_env["OUTPUT"])
    run = out / f"base2new/train_base/dtd/shots_16/DropoutPrompt/{DPL_CFG}/seed1"
    run.mkdir(parents=True)
    (run / "log.txt").write_text("epoch [1/20] batch [1/4] ...\n")  # killed mid-training
    proc = run_script("dpl/base2new_train.sh", "dtd", 1, env=stub_env)
    assert proc.returncode == 0 and proc.stdout.startswith(f"Resuming the unfinished run in {run}")
    assert len(recorded_calls(stub_env)) == 1
    finish_run(run, accuracy=61.25)
    proc = run_script("dpl/base2new_train.sh", "dtd", 1, env=stub_env)
    assert proc.returncode == 0 and proc.stdout.startswith(f"Skip: the run in {run} is finished")
    assert "accuracy 61.25%" in proc.stdout
    assert len(recorded_calls(stub_env)) == 1  # train.py not started again


def test_data_unset_or_missing_is_a_clear_error(stub_env):
    env = {k: v for k, v in stub_env.items() if k != "DATA"}
    proc = run_script("coop/base2new_train.sh", "dtd", 1, env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("coop/base2new_train.sh: DATA is not set: export DATA=/path/to/datasets "
                                   "(the folder holding dtd/, eurosat/, ...)")
    proc = run_script("coop/base2new_train.sh", "dtd", 1, env={**stub_env, "DATA": "/nonexistent/data"})
    assert proc.returncode == 1 and "DATA=/nonexistent/data is not a directory" in proc.stderr
    assert recorded_calls(stub_env) == []


@pytest.mark.parametrize("args, message", [
    (["dtd"], "usage: bash scripts/kgcoop/base2new_train.sh DATASET SEED [KEY VALUE ...]"),
    (["dtd", "one"], "SEED must be a non-negative integer, got 'one'"),
    (["dtd", "1", "OPTIM.MAX_EPOCH"], "extra arguments must be KEY VALUE pairs for train.py (got: OPTIM.MAX_EPOCH)"),
    (["no_such_set", "1"], "unknown dataset 'no_such_set'"),
])
def test_usage_errors(stub_env, args, message):
    proc = run_script("kgcoop/base2new_train.sh", *args, env=stub_env)
    assert proc.returncode == 1 and message in proc.stderr


def plan(script, *args, env):
    proc = run_script(script, *args, env={**env, "DPL_PLAN": "1"})
    assert proc.returncode == 0, proc.stderr
    return [line.split(" ", 1) for line in proc.stdout.splitlines()]


def test_layouts_of_every_protocol(stub_env):
    o = stub_env["OUTPUT"]
    src = "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets"
    assert plan("promptsrc/xd_train.sh", 2, env=stub_env) == [["train", f"{o}/imagenet/PromptSRC/{src}_16shots/seed2"]]
    assert plan("promptsrc/xd_test.sh", "imagenet_a", 2, env=stub_env) == [
        ["test", f"{o}/evaluation/PromptSRC/{src}_16shots/imagenet_a/seed2"]]
    assert plan("promptsrc/few_shot.sh", "dtd", 4, 3, env=stub_env) == [
        ["train", f"{o}/few_shot/dtd/PromptSRC/vit_b16_c2_ep50_batch4_4+4ctx_few_shot_4shots/seed3"]]
    assert plan("ivlp/long_tail.sh", "dtd", 1, env=stub_env) == [
        ["train", f"{o}/long_tail/imb10/train_base/dtd/shots_10000/IVLP/{DPL_CFG}/seed1"]]
    assert plan("ivlp/long_tail_test.sh", "dtd", 1, "5", env=stub_env) == [
        ["test", f"{o}/long_tail/imb5/test_new/dtd/shots_10000/IVLP/{DPL_CFG}/seed1"]]
    assert plan("zsclip/zeroshot.sh", "eurosat", env=stub_env) == [["test", f"{o}/ZeroshotCLIP/vit_b16/eurosat"]]
    assert plan("zsclip/base2new_test.sh", "dtd", env=stub_env) == [
        ["test", f"{o}/base2new/train_base/dtd/shots_16/ZeroshotCLIP/vit_b16/seed1"],
        ["test", f"{o}/base2new/test_new/dtd/shots_16/ZeroshotCLIP/vit_b16/seed1"]]
    assert plan("zsclip/xd_test.sh", "imagenet", env=stub_env) == [
        ["test", f"{o}/evaluation/ZeroshotCLIP/vit_b16/imagenet/seed1"]]


def test_every_trainer_script_exists_and_plans():
    for method in TRAINED_METHODS:
        for script in TRAINER_SCRIPTS:
            assert (SCRIPTS / method / script).is_file(), f"{method}/{script}"
    for script in ("zeroshot.sh", "base2new_test.sh", "xd_test.sh"):
        assert (SCRIPTS / "zsclip" / script).is_file()


def test_long_tail_passes_ratio_and_shots(stub_env):
    assert run_script("coop/long_tail.sh", "dtd", 1, "20", "OPTIM.MAX_EPOCH", 1, env=stub_env).returncode == 0
    argv = recorded_calls(stub_env)[-1]
    opts = trailing_opts(argv)
    # yacs keeps the float type of the default: the integer ratio is passed as 20.0
    assert opts[:8] == ["DATASET.NUM_SHOTS", "10000", "DATASET.SUBSAMPLE_CLASSES", "base",
                        "DATASET.IMBALANCE_RATIO", "20.0", "TEST.PER_CLASS_RESULT", "True"]
    assert opts[-2:] == ["OPTIM.MAX_EPOCH", "1"]
    assert "/long_tail/imb20/train_base/dtd/shots_10000/CoOp/" in option(argv, "--output-dir")
    assert plan("coop/long_tail.sh", "dtd", 1, "20.0", env=stub_env) == plan("coop/long_tail.sh", "dtd", 1, "20",
                                                                            env=stub_env)


def test_xd_test_uses_full_test_set_of_target(stub_env):
    out = Path(stub_env["OUTPUT"])
    finish_run(out / "imagenet/CoOp/vit_b16_ep50_ctxv1_16shots/seed1", epochs=(50,))
    assert run_script("coop/xd_test.sh", "caltech101", 1, env=stub_env).returncode == 0
    argv = recorded_calls(stub_env)[-1]
    assert trailing_opts(argv) == []  # no NUM_SHOTS, no SUBSAMPLE_CLASSES: all classes, full test set
    assert option(argv, "--load-epoch") == "50"


def test_run_protocol_dry_run_plan(stub_env):
    out = Path(stub_env["OUTPUT"])
    finish_run(out / f"base2new/train_base/dtd/shots_16/DropoutPrompt/{DPL_CFG}/seed1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "run_protocol.py"), "base2new", "--methods", "dpl", "zsclip",
         "--datasets", "dtd", "--seeds", "1", "2", "--dry-run", "--", "OPTIM.MAX_EPOCH", "1"],
        capture_output=True, text=True, env=stub_env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Plan: 5 jobs, 1 done, 4 to run")
    assert lines[1:] == [
        "  [  done] bash scripts/dpl/base2new_train.sh dtd 1",
        "  [  todo] bash scripts/dpl/base2new_test.sh dtd 1 OPTIM.MAX_EPOCH 1",
        "  [  todo] bash scripts/dpl/base2new_train.sh dtd 2 OPTIM.MAX_EPOCH 1",
        "  [  todo] bash scripts/dpl/base2new_test.sh dtd 2 OPTIM.MAX_EPOCH 1",
        "  [  todo] bash scripts/zsclip/base2new_test.sh dtd 1 OPTIM.MAX_EPOCH 1",
    ]
    assert recorded_calls(stub_env) == []


def test_run_protocol_runs_jobs_in_order(stub_env):
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "run_protocol.py"), "fewshot", "--methods", "coop", "--datasets", "dtd",
         "--shots", "1", "2", "--seeds", "1", "--", "OPTIM.MAX_EPOCH", "1"],
        capture_output=True, text=True, env=stub_env)
    assert proc.returncode == 0, proc.stderr
    calls = recorded_calls(stub_env)
    assert [option(c, "--output-dir").split("/")[-2] for c in calls] == [
        "vit_b16_ep50_ctxv1_1shots", "vit_b16_ep50_ctxv1_2shots"]
    assert all(trailing_opts(c)[-2:] == ["OPTIM.MAX_EPOCH", "1"] for c in calls)


# ---------------------------------------------------------------------------------------------
# End to end: real train.py, synthetic DTD, tiny CLIP
# ---------------------------------------------------------------------------------------------

TINY_OPTS = ["INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0", "OPTIM.MAX_EPOCH", "1",
             "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "16", "TRAIN.PRINT_FREQ", "1"]
E2E_METHODS = {"dpl": ("DropoutPrompt", DPL_CFG), "coop": ("CoOp", "vit_b16_ctxv1")}


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, tiny_clip_path):
    """base2new_train + base2new_test of DropoutPrompt and CoOp on a synthetic DTD, run from a foreign cwd."""
    from tests.datagen import make_dataset

    root = tmp_path_factory.mktemp("e2e")
    make_dataset(root / "data", "dtd", n_classes=4, per_class=8)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "DATA": str(root / "data"), "OUTPUT": str(root / "out"), "PYTHON": sys.executable}
    opts = ["MODEL.BACKBONE.PATH", str(tiny_clip_path), *TINY_OPTS]
    procs = {}
    for method in E2E_METHODS:
        for step in ("base2new_train.sh", "base2new_test.sh"):
            procs[method, step] = proc = run_script(f"{method}/{step}", "dtd", 1, *opts, env=env, cwd=elsewhere)
            assert proc.returncode == 0, f"{method}/{step}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return {"root": root, "env": env, "opts": opts, "procs": procs}


def test_e2e_runs_write_upstream_layout(e2e):
    out = e2e["root"] / "out" / "base2new"
    for trainer, cfg in E2E_METHODS.values():
        for part in ("train_base", "test_new"):
            run = out / part / "dtd" / "shots_16" / trainer / cfg / "seed1"
            result = parse_results.parse_run(run)
            assert result.ok and result.source == str(run / "results.json"), result.problem
            assert (run / "log.txt").is_file()
        train = out / "train_base" / "dtd" / "shots_16" / trainer / cfg / "seed1"
        assert list(train.glob("*/model.pth.tar-1"))  # OPTIM.MAX_EPOCH 1 passed through
        assert "Finish training" in (train / "log.txt").read_text()
    assert not (e2e["root"] / "elsewhere" / "output").exists()  # nothing written relative to the cwd


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


def test_e2e_finished_run_is_skipped(e2e):
    proc = run_script("dpl/base2new_train.sh", "dtd", 1, *e2e["opts"], env=e2e["env"])
    assert proc.returncode == 0
    assert proc.stdout.startswith("Skip: the run in ") and "is finished" in proc.stdout
    proc = run_script("coop/base2new_test.sh", "dtd", 1, *e2e["opts"], env=e2e["env"])
    assert proc.returncode == 0 and proc.stdout.startswith("Skip: the evaluation in ")
