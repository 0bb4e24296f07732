"""The library/leaf split: ``trainers/`` and ``datasets/`` hold leaves that import ``dpl`` only; a broken
leaf is reported and fails only the run that selects it; the old ``dpl_trainers.base`` name still works."""
import ast
import os
import shutil
import subprocess
import sys

import pytest

from datagen import make_dataset
from dpl.project import PROJECT_ROOT

LEAF_FOLDERS = ("trainers", "datasets")
LEAF_PACKAGES = ("dpl_trainers", "dpl_datasets", "trainers", "datasets")


def imported_modules(path):
    """Every module name a Python file imports (absolute names; relative imports as '.name')."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
    return names


@pytest.mark.parametrize("folder", LEAF_FOLDERS)
def test_leaves_import_the_library_never_each_other(folder):
    offending = {}
    for path in sorted((PROJECT_ROOT / folder).glob("*.py")):
        bad = [name for name in imported_modules(path)
               if name.startswith(".") or name.split(".")[0] in LEAF_PACKAGES]
        if bad:
            offending[path.name] = bad
    assert not offending, f"leaves importing other leaves: {offending}"


@pytest.mark.slow
def test_the_old_trainer_base_name_still_imports_and_warns_once():
    code = ("import dpl.project, dpl.prompting\n"
            "from dpl_trainers.base import ClipPromptTrainer\n"
            "from dpl_trainers.base import ClipPromptModel, add_trainer_node\n"
            "assert ClipPromptTrainer is dpl.prompting.ClipPromptTrainer\n"
            "assert ClipPromptModel is dpl.prompting.ClipPromptModel\n")
    result = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True,
                            cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("FutureWarning") == 1, result.stderr
    assert "dpl_trainers.base was renamed dpl.prompting" in result.stderr


def project_copy(tmp_path):
    """A copy of the code (dpl, the leaves, configs, train.py) whose trainers/ a test may break."""
    root = tmp_path / "project"
    for name in ("dpl", "trainers", "datasets", "configs"):
        shutil.copytree(PROJECT_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    shutil.copy(PROJECT_ROOT / "train.py", root / "train.py")
    return root


def run_copy(root, data_root, weights, trainer, output_dir):
    argv = [sys.executable, str(root / "train.py"), "--root", str(data_root), "--seed", "1", "--trainer", trainer,
            "--output-dir", str(output_dir), "--dataset-config-file", str(root / "configs/datasets/dtd.yaml"),
            "--config-file", str(root / "configs/trainers/CoOp/vit_b16_ep50.yaml"),
            "MODEL.BACKBONE.PATH", str(weights), "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "OPTIM.MAX_EPOCH", "1", "USE_CUDA", "False"]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=root)


@pytest.mark.slow
def test_a_broken_leaf_fails_only_the_run_that_selects_it(tmp_path, tiny_clip_path):
    root = project_copy(tmp_path)
    broken = root / "trainers" / "my_method.py"
    broken.write_text("from dpl.engine import TRAINER_REGISTRY\n"
                      "import a_module_that_is_not_installed\n\n\n"
                      "@TRAINER_REGISTRY.register()\nclass MyMethod:\n    pass\n")
    make_dataset(tmp_path / "data", "dtd", n_classes=3, per_class=4)

    other = run_copy(root, tmp_path / "data", tiny_clip_path, "CoOp", tmp_path / "coop")
    assert other.returncode == 0, other.stderr[-2000:]
    assert f"Warning: {broken} failed to import and is left out (ModuleNotFoundError" in other.stderr
    assert (tmp_path / "coop" / "results.json").is_file()

    selected = run_copy(root, tmp_path / "data", tiny_clip_path, "MyMethod", tmp_path / "mine")
    assert selected.returncode != 0
    last = selected.stderr.strip().splitlines()[-1]
    assert 'The requested trainer (--trainer / TRAINER.NAME) "MyMethod" is not registered' in last
    assert f"Files that failed to import: {broken} (ModuleNotFoundError: No module named " in last
    assert "Traceback" not in selected.stderr


def test_the_tables_know_the_training_free_trainers_the_classes_declare():
    from dpl.engine import TRAINER_REGISTRY
    from dpl.project import import_project_modules
    from dpl.results.layout import TRAINING_FREE_TRAINERS

    import_project_modules()
    declared = {name for name in TRAINER_REGISTRY.registered_names() if TRAINER_REGISTRY.get(name).TRAINING_FREE}
    assert declared == set(TRAINING_FREE_TRAINERS)


def test_import_dpl_trainers_base_reads_the_library_module():
    code = ("import dpl.project\nimport dpl_trainers.base\nimport dpl.prompting.base as base\n"
            "assert dpl_trainers.base.ClipPromptTrainer is base.ClipPromptTrainer\n"
            "assert dpl_trainers.base.FROZEN_TEXT_CHUNK == base.FROZEN_TEXT_CHUNK\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
