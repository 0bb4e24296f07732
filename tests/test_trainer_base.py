"""ClipPromptTrainer and its model pieces: precision, depth clamping, learnable-only checkpoints,
text features encoded once per test(), INPUT.SIZE check, and the trainer config files.

Also holds the helpers the other ``test_trainer_*`` files use to run ``train.py`` in-process on
the tiny CLIP and a synthetic DTD folder.
"""
import re

import pytest
import torch
import yaml

from datagen import make_dataset
from dpl.config import get_cfg_default
from dpl.engine import extend_cfg_for_all_trainers
from dpl.engine.errors import CheckpointMismatchError, UserError
from dpl.project import PROJECT_ROOT
from dpl.utils import close_logger

from conftest import make_tiny_clip

TRAINER_CONFIG_DIRS = ["CoOp", "KgCoOp", "PromptSRC", "IVLP", "ZeroshotCLIP"]
CLASSNAMES = ["banded", "blotchy", "bumpy_thing"]


# ----- helpers shared by the trainer tests ----------------------------------------------------------
import dpl.tools.train as TRAIN


def run_train(tmp_path, weights, trainer, config, *extra, out="out", n_classes=4, per_class=6):
    """Run ``train.py`` in-process on a synthetic DTD folder; returns (exit code, output dir, log text)."""
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
    checkpoint = torch.load(output_dir / model_name / f"model.pth.tar-{epoch}", map_location="cpu", weights_only=True)
    return checkpoint


def build_trainer_in_process(tmp_path, weights, trainer, config, *opts):
    """A constructed trainer (no training) for white-box checks."""
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


# ----- precision and depth --------------------------------------------------------------------------
def test_fp16_and_amp_fall_back_to_fp32_on_cpu_with_one_line(capsys):
    from dpl.prompting import effective_precision

    cpu = torch.device("cpu")
    assert effective_precision("fp32", cpu) == "fp32"
    assert capsys.readouterr().out == ""
    for requested in ("fp16", "amp"):
        assert effective_precision(requested, cpu) == "fp32"
        lines = capsys.readouterr().out.strip().splitlines()
        assert lines == [f"PREC {requested} is not supported on cpu: using fp32"]
    with pytest.raises(UserError, match="fp8"):
        effective_precision("fp8", cpu)


def test_prompt_depth_is_clamped_to_the_backbone_with_one_line(capsys):
    from dpl.prompting import clamp_depth

    assert clamp_depth(2, 3, "KEY") == 2
    assert capsys.readouterr().out == ""
    assert clamp_depth(9, 3, "TRAINER.IVLP.PROMPT_DEPTH_TEXT") == 3
    assert capsys.readouterr().out.strip().splitlines() == [
        "TRAINER.IVLP.PROMPT_DEPTH_TEXT = 9 exceeds the backbone's 3 layers: using 3"
    ]


# ----- learnable-only state -------------------------------------------------------------------------
def _coop_model(csc=False, n_ctx=4, classnames=CLASSNAMES):
    from yacs.config import CfgNode as CN

    from dpl.prompting import COOP_DEFAULTS, CoOpModel

    return CoOpModel(make_tiny_clip(), classnames, CN(dict(COOP_DEFAULTS, N_CTX=n_ctx, CSC=csc)))


def test_learnable_state_holds_the_prompts_only_and_reloads_across_class_lists():
    model = _coop_model()
    state = model.learnable_state_dict()
    assert list(state) == ["prompt_learner.ctx"]
    assert any(k.startswith("clip.") for k in model.state_dict())  # the frozen CLIP is in the module...
    assert not any(k.startswith(("clip.", "text_encoder.", "vision_encoder.")) for k in state)  # ...not its state
    # a model for another class list (new classes) takes the same checkpoint
    other = _coop_model(classnames=["cracked", "dotted", "zigzagged", "woven"])
    other.load_learnable_state_dict({k: v + 1 for k, v in state.items()})
    assert torch.equal(other.prompt_learner.ctx, state["prompt_learner.ctx"] + 1)
    assert other.prompt_learner.tokenized.shape[0] == 4  # class buffers are the current classes'


def test_learnable_state_mismatch_is_a_clear_error():
    model = _coop_model()
    with pytest.raises(CheckpointMismatchError, match=r"missing: \['prompt_learner.ctx'\].*unexpected: \['x'\]"):
        model.load_learnable_state_dict({"x": torch.zeros(1)})
    with pytest.raises(CheckpointMismatchError, match="shape differs"):
        model.load_learnable_state_dict({"prompt_learner.ctx": torch.zeros(8, 128)})


def test_frozen_clip_stays_in_eval_mode_and_buffers_follow_to():
    model = _coop_model()
    model.train()
    assert model.training and model.prompt_learner.training and not model.clip.training
    model.to(torch.float64)
    assert model.prompt_learner.prompts.prefix.dtype == torch.float64


# ----- trainer behaviour ----------------------------------------------------------------------------
def test_input_size_must_match_clip_resolution(tmp_path, tiny_clip_path):
    code, _, log = run_train(tmp_path, tiny_clip_path, "CoOp", "CoOp/vit_b16.yaml", "--eval-only",
                             ("INPUT.SIZE", "(64, 64)"))
    assert code == 1
    assert "INPUT.SIZE (64, 64) does not match the input resolution 32" in log
    assert 'set INPUT.SIZE "(32, 32)"' in log


def test_class_text_features_are_encoded_once_per_test_call(tmp_path, tiny_clip_path):
    trainer = build_trainer_in_process(tmp_path, tiny_clip_path, "CoOp", "CoOp/vit_b16_ep50.yaml")
    assert len(trainer.test_loader) > 1  # several test batches
    calls = []
    encode_text = trainer.model.encode_text

    def counting_encode_text(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return encode_text(*args, **kwargs)

    trainer.model.encode_text = counting_encode_text
    trainer.test()
    assert calls == [False]  # once, without gradients
    trainer.test()
    assert len(calls) == 2


def test_optimizer_holds_learnable_parameters_only(tmp_path, tiny_clip_path):
    trainer = build_trainer_in_process(tmp_path, tiny_clip_path, "CoOp", "CoOp/vit_b16_ep50.yaml")
    optimized = [p for group in trainer.optim.param_groups for p in group["params"]]
    assert len(optimized) == 1 and optimized[0] is trainer.model.prompt_learner.ctx
    assert trainer.get_model_names() == ["prompt_learner"]


# ----- config files ---------------------------------------------------------------------------------
def _config_files():
    root = PROJECT_ROOT / "configs" / "trainers"
    return sorted(p for d in TRAINER_CONFIG_DIRS for p in (root / d).glob("*.yaml"))


def test_trainer_config_files_exist_with_upstream_names():
    names = {f"{p.parent.name}/{p.name}" for p in _config_files()}
    expected = {
        "CoOp/vit_b16.yaml", "CoOp/vit_b16_ep50.yaml", "CoOp/vit_b16_ep100.yaml", "CoOp/vit_b16_ctxv1.yaml",
        "CoOp/vit_b16_ep50_ctxv1.yaml", "CoOp/rn50.yaml", "CoOp/rn50_ep50.yaml", "CoOp/rn50_ctxv1.yaml",
        "CoOp/rn101.yaml", "CoOp/vit_b32.yaml", "KgCoOp/vit_b16_ep100_ctxv1.yaml", "KgCoOp/rn50_ep100.yaml",
        "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml", "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets.yaml",
        "PromptSRC/vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml", "IVLP/vit_b16_c2_ep20_batch4_4+4ctx.yaml",
        "ZeroshotCLIP/vit_b16.yaml",
    }
    assert expected <= names


@pytest.mark.parametrize("path", _config_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_trainer_config_merges_and_its_name_tells_the_truth(path):
    cfg = extend_cfg_for_all_trainers(get_cfg_default())
    cfg.merge_from_file(str(path))
    epochs = re.search(r"_ep(\d+)", path.stem)
    if epochs:
        assert cfg.OPTIM.MAX_EPOCH == int(epochs.group(1))
    elif path.parent.name == "CoOp":
        assert cfg.OPTIM.MAX_EPOCH == 200  # CoOp's files without _epN are the 200-epoch ones
    batch = re.search(r"_batch(\d+)", path.stem)
    if batch:
        assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == int(batch.group(1))
    if "ctxv1" in path.stem:
        node = "KGCOOP" if path.parent.name == "KgCoOp" else "COOP"
        assert cfg.TRAINER[node].CTX_INIT == "a photo of a"
    raw = yaml.safe_load(path.read_text())
    backbone = {"vit_b16": "ViT-B/16", "vit_b32": "ViT-B/32", "rn50": "RN50", "rn101": "RN101"}
    assert cfg.MODEL.BACKBONE.NAME == backbone[re.match(r"(vit_b16|vit_b32|rn50|rn101)", path.stem).group(1)]
    assert raw["INPUT"]["SIZE"] == "(224, 224)" or tuple(cfg.INPUT.SIZE) == (224, 224)


def test_fp16_frozen_weights_keep_learnable_tensors_fp32_and_trainable():
    from dpl.prompting import IVLPModel
    from dpl_trainers.ivlp import IVLP_DEFAULTS
    from yacs.config import CfgNode as CN

    model = IVLPModel(make_tiny_clip(), CLASSNAMES, CN(dict(IVLP_DEFAULTS, PROMPT_DEPTH_TEXT=2, PROMPT_DEPTH_VISION=2)))
    model.half_frozen_weights()
    assert model.clip.text_projection.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in model.learnable_parameters())
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    grads = [p.grad for p in model.learnable_parameters()]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)


def test_loading_a_checkpoint_with_other_prompt_settings_is_a_clear_error(tmp_path, tiny_clip_path):
    saved = build_trainer_in_process(tmp_path / "a", tiny_clip_path, "CoOp", "CoOp/vit_b16_ep50_ctxv1.yaml")
    saved.save_model(0, str(tmp_path / "ckpt"))
    other = build_trainer_in_process(tmp_path / "b", tiny_clip_path, "CoOp", "CoOp/vit_b16_ep50.yaml",
                                     "TRAINER.COOP.N_CTX", "8")
    with pytest.raises(CheckpointMismatchError, match=r"cannot load .*ckpt \(epoch 1\) into CoOp: .*shape differs"):
        other.load_model(str(tmp_path / "ckpt"), epoch=1)
