"""What tests that run the protocol scripts share: tiny copies of the shipped configs and a script runner.

A tiny config is a shipped trainer YAML with the pocket-sized settings a CPU test needs (the tiny
CLIP's weights and input size, one loader process, small batches, a short schedule) written under
the *same name* into a folder of the test's, and passed as ``CFG=<that file>``: the scripts then
write the upstream layout (``.../<Trainer>/<config name>/seed<S>``), and trailing ``KEY VALUE``
options act as a user's overrides on top of it, exactly as on the real configs.
"""
import os
import subprocess
from pathlib import Path

import yaml

from dpl.project import PROJECT_ROOT
from dpl.utils import close_logger

SCRIPTS = PROJECT_ROOT / "scripts"


def _deep_update(tree, updates):
    for key, value in updates.items():
        if isinstance(value, dict):
            _deep_update(tree.setdefault(key, {}), value)
        else:
            tree[key] = value
    return tree


def tiny_config(folder, trainer, config_name, weights, epochs=1, batch_size=4, workers=0, **sections):
    """Write ``folder/<config_name>.yaml``: the shipped config with tiny settings; returns its path."""
    shipped = PROJECT_ROOT / "configs" / "trainers" / trainer / f"{config_name}.yaml"
    tree = yaml.safe_load(shipped.read_text())
    _deep_update(tree, {
        "INPUT": {"SIZE": "(32, 32)"},
        "MODEL": {"BACKBONE": {"NAME": "ViT-B/16", "PATH": str(weights)}},
        "DATALOADER": {"NUM_WORKERS": workers, "TRAIN_X": {"BATCH_SIZE": batch_size}, "TEST": {"BATCH_SIZE": 16}},
        "OPTIM": {"MAX_EPOCH": epochs, "WARMUP_EPOCH": 0, "LR": 0.01},
        "TRAIN": {"PRINT_FREQ": 1},
        "USE_CUDA": False,
    })
    _deep_update(tree, sections)
    path = Path(folder) / f"{config_name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree))
    return path


def script_env(data, output, **extra):
    """The environment a user's shell would have: DATA, OUTPUT, one OpenMP thread, and ``extra``."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("CFG", "TAG", "LOADEP", "SOURCE", "DPL_PLAN", "PYTHON")}
    env.update(DATA=str(data), OUTPUT=str(output), OMP_NUM_THREADS="1")
    env.update({key: str(value) for key, value in extra.items()})
    return env


def run_script(script, *args, env, cwd=None):
    """``bash scripts/<script> ARGS``; returns the CompletedProcess (text output)."""
    return subprocess.run(["bash", str(SCRIPTS / script), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd)


def run_cli_output(argv, capsys):
    """``train.py argv`` in this process: ``(exit code, stdout, stderr)``; its log file is closed after it."""
    import dpl.tools.train

    capsys.readouterr()
    try:
        code = dpl.tools.train.cli(argv)
    finally:
        close_logger()
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_cli(argv, capsys):
    """``(exit code, stderr)`` of ``train.py argv`` run in this process."""
    code, _, err = run_cli_output(argv, capsys)
    return code, err
