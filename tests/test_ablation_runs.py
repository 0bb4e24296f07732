"""The README's ablation commands, run after the default run, as a user runs them (the real scripts,
train.py and parse_results.py on a tiny copy of the shipped DropoutPrompt config): each trains in its
own folder and shows as its own row; a rerun skips; a folder is never reused for another experiment.
The same through ``scripts/run_protocol.py``."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from datagen import make_dataset
from helpers import SCRIPTS, run_script, script_env, tiny_config
from dpl.project import PROJECT_ROOT

CFG = "vit_b16_c2_ep20_batch4_4+4ctx"
README_ABLATIONS = {  # as the README prints them, after `bash scripts/dpl/base2new_train.sh dtd 1`
    "IMPORTANCE=uniform": ["TRAINER.DPL.IMPORTANCE", "uniform"],
    "IMPORTANCE=no_mag": ["TRAINER.DPL.IMPORTANCE", "no_mag"],
    "PERTURBATION=zero,RES_WEIGHT=0.0": ["TRAINER.DPL.PERTURBATION", "zero", "TRAINER.DPL.RES_WEIGHT", "0.0"],
}


def test_the_readme_lists_these_ablation_commands():
    readme = (PROJECT_ROOT / "README.md").read_text()
    for opts in README_ABLATIONS.values():
        assert f"bash scripts/dpl/base2new_train.sh dtd 1 {' '.join(opts)}" in readme


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_clip_path):
    root = tmp_path_factory.mktemp("ablations")
    make_dataset(root / "data", "dtd", n_classes=4, per_class=8)
    config = tiny_config(root / "configs", "DropoutPrompt", CFG, tiny_clip_path)
    return script_env(root / "data", root / "out", CFG=config)


def run_dir(env, part, variant=""):
    folder = f"{CFG}@{variant}" if variant else CFG
    return Path(env["OUTPUT"]) / "base2new" / part / "dtd" / "shots_16" / "DropoutPrompt" / folder / "seed1"


def script(name, *args, env):
    proc = run_script(f"dpl/{name}", *args, env=env)
    assert proc.returncode == 0, f"{name} {args}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def table(root):
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "parse_results.py"), "--protocol", "base2new", str(root),
                           "--format", "json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)["rows"]
    return {(c["group"], c["column"]): c.get("mean") for c in row["cells"]}


def accuracy(run):
    return json.loads((run / "results.json").read_text())["accuracy"]


@pytest.mark.slow
def test_readme_ablations_after_the_default_run_train_and_become_rows(env):
    script("base2new_train.sh", "dtd", 1, env=env)
    script("base2new_test.sh", "dtd", 1, env=env)
    for variant, opts in README_ABLATIONS.items():
        proc = script("base2new_train.sh", "dtd", 1, *opts, env=env)
        assert "Skip" not in proc.stdout and "Finish training" in proc.stdout  # it trains
        script("base2new_test.sh", "dtd", 1, *opts, env=env)
        assert (run_dir(env, "train_base", variant) / "results.json").is_file()

    cells = table(Path(env["OUTPUT"]) / "base2new")
    for variant in ("", *README_ABLATIONS):
        label = f"DropoutPrompt [{variant}]" if variant else "DropoutPrompt"
        assert cells[(label, "Base")] == pytest.approx(accuracy(run_dir(env, "train_base", variant)))
        assert cells[(label, "New")] == pytest.approx(accuracy(run_dir(env, "test_new", variant)))

    for variant, opts in list(README_ABLATIONS.items())[:1] + [("", [])]:  # reruns skip
        proc = script("base2new_train.sh", "dtd", 1, *opts, env=env)
        assert proc.stdout.startswith(f"Skip: the run in {run_dir(env, 'train_base', variant)} is finished")
        proc = script("base2new_test.sh", "dtd", 1, *opts, env=env)
        assert proc.stdout.startswith(f"Skip: the evaluation in {run_dir(env, 'test_new', variant)} is finished")


@pytest.mark.slow
def test_a_different_override_on_a_finished_folder_never_reuses_it(env):
    tagged = {**env, "TAG": "mine"}
    script("base2new_train.sh", "dtd", 1, "TRAINER.DPL.IMPORTANCE", "no_cls", env=tagged)
    run = run_dir(env, "train_base", "mine")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    proc = run_script("dpl/base2new_train.sh", "dtd", 1, "TRAINER.DPL.IMPORTANCE", "no_self", env=tagged)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"dpl/base2new_train.sh: {run} holds a finished run (results.json: accuracy ")
    assert "TRAINER.DPL.IMPORTANCE 'no_cls' -> 'no_self'" in proc.stderr
    assert "set TAG=<name> to give this run its own folder" in proc.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing lost, nothing touched


@pytest.mark.slow
def test_run_protocol_runs_an_ablation_in_its_own_rows_and_then_skips_it(env):
    command = [sys.executable, str(SCRIPTS / "run_protocol.py"), "base2new", "--methods", "dpl", "--datasets", "dtd",
               "--seeds", "1", "--table", "--format", "csv", "--", "TRAINER.DPL.IMPORTANCE", "no_self"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("Plan: 2 jobs, 0 done, 2 to run")
    assert "DropoutPrompt [IMPORTANCE=no_self],Base," in proc.stdout  # the table: a row of its own
    assert (run_dir(env, "test_new", "IMPORTANCE=no_self") / "results.json").is_file()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("Plan: 2 jobs, 2 done, 0 to run")
