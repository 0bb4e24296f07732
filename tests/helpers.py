"""What several test files share: the tiny CLIP, train.py runs in-process, and the protocol scripts' runner.

Test files import helpers from here (or datasets from ``tests/datagen.py``), never from each other:
importing a test module runs its module-level code (registrations, parametrisations) a second time
under another name and makes the files depend on each other's import side effects.

A tiny config is a shipped trainer YAML with the pocket-sized settings a CPU test needs (the tiny
CLIP's weights and input size, one loader process, small batches, a short schedule) written under
the *same name* into a folder of the test's, and passed as ``CFG=<that file>``: the scripts then
write the upstream layout (``.../<Trainer>/<config name>/seed<S>``), and trailing ``KEY VALUE``
options act as a user's overrides on top of it, exactly as on the real configs.
"""
import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from datagen import make_dataset
from dpl.project import PROJECT_ROOT
from dpl.utils import close_logger

SCRIPTS = PROJECT_ROOT / "scripts"

# A CLIP small enough for CPU tests. Head counts equal width // 64 because clip.model.build_model
# re-infers them that way when a state dict is loaded back.
TINY_CLIP = dict(
    embed_dim=64,
    image_resolution=32,
    vision_layers=3,
    vision_width=128,
    vision_patch_size=8,
    context_length=77,
    vocab_size=49408,
    transformer_width=128,
    transformer_heads=2,
    transformer_layers=3,
)


def make_tiny_clip(seed=0):
    """A fresh tiny CLIP with weights from ``seed``: the same model wherever a test builds it.

    It seeds torch's global generator (so what a test draws right after it is reproducible too).
    """
    from clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(**TINY_CLIP).float().eval()
    return model


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
           if key not in ("CFG", "TAG", "LOADEP", "SOURCE", "DPL_PLAN", "PYTHON", "NPROC")}
    env.update(DATA=str(data), OUTPUT=str(output), OMP_NUM_THREADS="1")
    env.update({key: str(value) for key, value in extra.items()})
    return env


def run_script(script, *args, env, cwd=None):
    """``bash scripts/<script> ARGS``; returns the CompletedProcess (text output)."""
    return subprocess.run(["bash", str(SCRIPTS / script), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd)


def start_until_paused(command, env, paused, timeout=300):
    """Start ``command`` in its own session (as a terminal does: a signal sent to it reaches it alone) and
    return it once its run has created ``paused`` (``DPL_TEST_PAUSE``, ``tests/fault_injection``)."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + timeout
    while not paused.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert paused.exists(), proc.communicate()[1][-3000:]
    return proc


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


@contextlib.contextmanager
def registered(registry, *classes):
    """Register test-only classes (trainers, datasets) for a ``with`` block, then remove them again.

    Registered at import time they would stay for the whole session: collecting a file would add its
    trainers to every other test's registry listings and every config built for all trainers.
    """
    for klass in classes:
        registry.register(klass)
    try:
        yield
    finally:
        for klass in classes:
            if registry._obj_map.get(klass.__name__) is klass:  # Registry has no public way to unregister
                del registry._obj_map[klass.__name__]


# ----- train.py in-process on the tiny CLIP and a synthetic DTD folder (the trainer tests) ----------
def run_train(tmp_path, weights, trainer, config, *extra, out="out", n_classes=4, per_class=6):
    """Run ``train.py`` in-process on a synthetic DTD folder; returns (exit code, output dir, log text).

    ``extra`` holds flags (strings, placed before the opts) and ``(KEY, VALUE, ...)`` tuples of
    trailing opts, which come after the tiny defaults and so override them.
    """
    import dpl.tools.train as TRAIN

    data_root = tmp_path / "data"
    if not (data_root / "dtd").exists():
        make_dataset(data_root, "dtd", n_classes=n_classes, per_class=per_class)
    output_dir = tmp_path / out
    argv = [
        "--root", str(data_root), "--seed", "1", "--trainer", trainer, "--output-dir", str(output_dir),
        "--dataset-config-file", str(PROJECT_ROOT / "configs/datasets/dtd.yaml"),
        "--config-file", str(PROJECT_ROOT / "configs/trainers" / config),
        *[a for a in extra if not isinstance(a, tuple)],
        "MODEL.BACKBONE.PATH", str(weights), "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "4", "TRAIN.PRINT_FREQ", "1",
        "USE_CUDA", "False",
    ]
    for option in extra:
        if isinstance(option, tuple):
            argv.extend(option)
    try:
        code = TRAIN.cli(argv)
    finally:
        close_logger()
    log = output_dir / "log.txt"
    return code, output_dir, log.read_text() if log.exists() else ""


def train_opts(epochs=1, lr="0.01"):
    """Trailing opts for a short training run (no warmup, so the LR is not 1e-5 in a 1-epoch run)."""
    return ("OPTIM.MAX_EPOCH", str(epochs), "OPTIM.WARMUP_EPOCH", "0", "OPTIM.LR", lr)


def logged_losses(log, name="loss"):
    """The per-batch values of loss ``name`` from the progress lines."""
    return [float(v) for v in re.findall(rf"batch \[\d+/\d+\].*? {name} ([\d.eE+-]+) \(", log)]


def saved_state_dict(output_dir, model_name, epoch):
    """The checkpoint a trainer saved for ``epoch``, loaded the safe way (weights only), on the CPU."""
    checkpoint = torch.load(output_dir / model_name / f"model.pth.tar-{epoch}", map_location="cpu", weights_only=True)
    return checkpoint


def build_trainer_in_process(tmp_path, weights, trainer, config, *opts):
    """A constructed trainer (no training) for white-box checks."""
    import dpl.tools.train as TRAIN
    from dpl.engine import build_trainer

    make_dataset(tmp_path / "data", "dtd", n_classes=4, per_class=6)
    args = TRAIN.build_parser().parse_args([
        "--root", str(tmp_path / "data"), "--trainer", trainer, "--output-dir", str(tmp_path / "out"),
        "--dataset-config-file", str(PROJECT_ROOT / "configs/datasets/dtd.yaml"),
        "--config-file", str(PROJECT_ROOT / "configs/trainers" / config),
        "MODEL.BACKBONE.PATH", str(weights), "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
        "DATALOADER.TEST.BATCH_SIZE", "2", "USE_CUDA", "False", *opts,
    ])
    return build_trainer(TRAIN.setup_cfg(args))


def train_set_ce(trainer):
    """Mean cross-entropy of ``trainer``'s model over the training images (test transform, no grad)."""
    from dpl.data.data_manager import build_data_loader

    dm = trainer.dm
    loader = build_data_loader(trainer.cfg, data_source=dm.dataset.train_x, batch_size=16, tfm=dm.tfm_test,
                               is_train=False)
    trainer.set_model_mode("eval")
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            images, labels = trainer.parse_batch_test(batch)
            logits = trainer.model_inference(images)
            total += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            count += labels.numel()
    return total / count


def check_one_epoch_lowers_training_loss(tmp_path, weights, trainer, config, lr, components, model_name):
    """Train one epoch with train.py, then compare the training-set CE of a fresh model and the checkpoint.

    Configs with ``CTX_INIT`` start every run from the same word embeddings, so the fresh model built
    in-process stands for the run's starting point. Also checks the logged loss components.
    """
    code, out, log = run_train(tmp_path, weights, trainer, config, train_opts(1, lr), per_class=10)
    assert code == 0, log[-2000:]
    assert "Finish training" in log and "* accuracy:" in log
    assert (out / model_name / "model.pth.tar-1").is_file() and (out / "results.json").is_file()
    losses = logged_losses(log)
    assert len(losses) >= 4 and all(v == v for v in losses)
    for name in components:
        assert len(logged_losses(log, name)) == len(losses), f"{name} not logged"
    fresh = build_trainer_in_process(tmp_path / "fresh", weights, trainer, config)
    before = train_set_ce(fresh)
    fresh.load_model(str(out), epoch=1)
    after = train_set_ce(fresh)
    assert after < before, (before, after)
    return out, log


def check_only_learnable_tensors_get_gradients_and_are_saved(tmp_path, weights, trainer_name, config, expected):
    """One forward_backward step: gradients reach exactly ``expected`` (learnable names); the checkpoint
    holds exactly those tensors (no frozen CLIP, no teacher features, no class buffers)."""
    trainer = build_trainer_in_process(tmp_path, weights, trainer_name, config)
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2
    summary = trainer.forward_backward(next(iter(trainer.train_loader_x)))
    assert set(summary) >= {"loss", "acc"} and all(isinstance(v, float) for v in summary.values())
    with_grad = {n for n, p in trainer.model.named_parameters() if p.grad is not None}
    assert with_grad == set(expected)
    assert all(p.grad is None for p in trainer.model.clip.parameters())
    trainer.save_model(0, str(tmp_path / "ckpt"))
    saved = saved_state_dict(tmp_path / "ckpt", trainer.MODEL_NAME, 1)
    assert set(saved["state_dict"]) == set(expected)
    assert all(v.dtype == torch.float32 for v in saved["state_dict"].values())
    return trainer, summary


def check_base_to_new_evaluation(tmp_path, weights, trainer, config, model_name, lr="0.01"):
    """Train on base classes, evaluate the saved checkpoint on new classes (upstream's eval-only flow)."""
    base = ("DATASET.SUBSAMPLE_CLASSES", "base")
    code, out, log = run_train(tmp_path, weights, trainer, config, train_opts(1, lr), base, out="base")
    assert code == 0, log[-2000:]
    new = ("DATASET.SUBSAMPLE_CLASSES", "new")
    code, test_out, log = run_train(tmp_path, weights, trainer, config, "--eval-only", "--model-dir", str(out),
                                    "--load-epoch", "1", new, out="new")
    assert code == 0, log[-2000:]
    assert "SUBSAMPLE NEW CLASSES!" in log
    assert f"{model_name}/model.pth.tar-1" in log
    assert re.search(r"\* accuracy: [\d.]+%", log)
    assert (test_out / "results.json").is_file()
    return log


def pocket_sweep_opts(epochs=2):
    """Trailing opts of a quick pocket sweep (``run_protocol.py ... -- <these>``), as ``make demo`` runs it."""
    return ["MODEL.BACKBONE.NAME", "pocket", "OPTIM.MAX_EPOCH", str(epochs), "DATALOADER.TRAIN_X.BATCH_SIZE", "16",
            "OPTIM.LR", "0.005", "OPTIM.WARMUP_EPOCH", "0", "DATALOADER.NUM_WORKERS", "0"]


def run_protocol(*args, env, timeout=900):
    """``python scripts/run_protocol.py ARGS`` from another directory; the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, str(SCRIPTS / "run_protocol.py"), *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=os.path.dirname(env["OUTPUT"]), timeout=timeout)
