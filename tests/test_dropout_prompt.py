"""The DropoutPrompt trainer: configs, train/eval behaviour, losses, gradients, train.py runs per ablation."""
import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import train
from datagen import make_dataset
from dpl_trainers import dropout_prompt as dpl
from dpl import drople as parts
from dpl.utils.errors import SettingError

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "configs" / "trainers" / "DropoutPrompt"
BASE2NEW = CONFIG_DIR / "vit_b16_c2_ep20_batch4_4+4ctx.yaml"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


@pytest.fixture(scope="module")
def dtd_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpl_data")
    make_dataset(root, "dtd")
    return root


def cli_args(root, clip_path, output_dir, *opts):
    """train.py arguments for a tiny DropoutPrompt run on the synthetic DTD (1 epoch, 1-shot)."""
    return [
        "--root", str(root), "--trainer", "DropoutPrompt", "--seed", "1",
        "--dataset-config-file", str(REPO / "configs" / "datasets" / "dtd.yaml"),
        "--config-file", str(BASE2NEW), "--output-dir", str(output_dir),
        "MODEL.BACKBONE.PATH", str(clip_path), "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
        "DATASET.NUM_SHOTS", "1", "OPTIM.MAX_EPOCH", "1", "TRAIN.PRINT_FREQ", "1", "VERBOSE", "False",
        "TRAINER.DPL.TEACHER_TEMPLATES", "dataset",  # one template keeps the teacher cheap in tests
        *opts,
    ]


def build(root, clip_path, output_dir, *opts):
    from dpl.engine import build_trainer

    cfg = train.setup_cfg(train.build_parser().parse_args(cli_args(root, clip_path, output_dir, *opts)))
    return build_trainer(cfg)


@pytest.fixture(scope="module")
def trainer(dtd_root, tiny_clip_path, tmp_path_factory):
    """A strongly perturbing DropoutPrompt trainer (every eligible token dropped with sigma 0.5)."""
    return build(dtd_root, tiny_clip_path, tmp_path_factory.mktemp("dpl_out"),
                 "TRAINER.DPL.P_MIN", "0.9", "TRAINER.DPL.P_MAX", "1.0", "TRAINER.DPL.SIGMA", "0.5")


@pytest.fixture(scope="module")
def batch(trainer):
    images, labels = trainer.parse_batch_train(next(iter(trainer.train_loader_x)))
    return images, labels


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------
def test_config_node_defaults():
    from dpl.config import get_cfg_default

    cfg = get_cfg_default()
    dpl.DropoutPrompt.extend_cfg(cfg)
    node = cfg.TRAINER.DPL
    assert (node.P_MIN, node.P_MAX, node.SIGMA) == (0.1, 0.5, 0.03)
    assert (node.PERTURBATION, node.IMPORTANCE) == ("gaussian", "full")
    assert (node.MAG_TOKENS, node.MAG_TEMPERATURE, node.MAG_WEIGHT) == (64, 1.0, 30.0)
    assert (node.RES_WEIGHT, node.RES_LAMBDA, node.RES_LAMBDA_FIXED) == (0.05, 0.1, False)
    assert (node.TEXT_LOSS_WEIGHT, node.IMAGE_LOSS_WEIGHT) == (25.0, 10.0)
    assert (node.KL_WEIGHT, node.LABEL_SMOOTHING) == (2.5, 0.0)
    assert node.GPA is False and tuple(node.DROP_LAYERS_TEXT) == () and tuple(node.DROP_LAYERS_VISION) == ()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_merge(path):
    args = train.build_parser().parse_args(["--trainer", "DropoutPrompt", "--config-file", str(path)])
    cfg = train.setup_cfg(args)
    node = cfg.TRAINER.DPL
    assert (node.PERTURBATION, node.SIGMA, node.P_MIN, node.P_MAX, node.MAG_WEIGHT, node.RES_WEIGHT) == (
        "gaussian", 0.03, 0.1, 0.5, 30.0, 0.05)
    assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == 4 and node.KL_WEIGHT == 2.5
    official = path.stem.endswith("_official")
    assert (cfg.OPTIM.NAME, cfg.OPTIM.LR) == (("adamw", 0.0002) if official else ("sgd", 0.0025))
    expected_depth = 3 if "cross_datasets" in path.stem else 9
    assert node.PROMPT_DEPTH_TEXT == expected_depth
    assert node.PROMPT_DEPTH_VISION == (6 if official else expected_depth)
    assert cfg.OPTIM.MAX_EPOCH == (50 if "few_shot" in path.stem else 20)
    names = {p.stem for p in CONFIGS}
    assert {"vit_b16_c2_ep20_batch4_4+4ctx", "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets",
            "vit_b16_c2_ep50_batch4_4+4ctx_few_shot", "vit_b16_c2_ep20_batch4_4+4ctx_official"} <= names


def test_bad_settings_are_one_line_errors(dtd_root, tiny_clip_path, tmp_path, capsys):
    rc = train.cli(cli_args(dtd_root, tiny_clip_path, tmp_path / "bad", "TRAINER.DPL.IMPORTANCE", "random"))
    assert rc == 1 and "TRAINER.DPL.IMPORTANCE is 'random': use one of [" in capsys.readouterr().err
    with pytest.raises(SettingError, match="drop_layers_text: layers \\[12\\] are outside 0..11"):
        dpl.resolve_layers([0, 12], 9, 12, "drop_layers_text")
    assert dpl.resolve_layers([], 3, 12, "K") == frozenset({0, 1, 2})
    assert dpl.resolve_layers([5], 3, 12, "K") == frozenset({5})
    assert dpl.resolve_layers(["none"], 3, 12, "K") == frozenset()
    with pytest.raises(Exception, match="layer indices"):
        dpl.resolve_layers(["all"], 3, 12, "K")


# --------------------------------------------------------------------------------------------------
# Model behaviour
# --------------------------------------------------------------------------------------------------
def test_hooks_cover_prompted_layers_and_mag_pairs(trainer):
    model = trainer.model
    assert model.drop_layers_text == model.drop_layers_vision == frozenset({0, 1, 2})  # tiny CLIP: depth 3
    assert model.mag_layers == frozenset({0, 1, 2})
    assert model.mag.tokens.shape == (64, model.arch.text_width)
    assert model.mag.vision_proj.in_features == model.arch.vision_width


def test_eval_is_deterministic_and_equals_dropout_off(trainer, batch):
    images, _ = batch
    model = trainer.model
    no_dropout = copy.deepcopy(model)
    no_dropout.dropout = parts.TokenDropout(perturbation="none")
    model.eval(), no_dropout.eval()
    with torch.no_grad():
        first, second = model(images), model(images)
        plain = no_dropout(images)
    assert torch.equal(first, second) and torch.equal(first, plain)
    # in training the same model does perturb (so the equality above is not vacuous) ...
    model.train()
    with torch.no_grad():
        out = model.forward_train(images)
        teacher = model.zero_shot_image_features(images)
    assert not torch.allclose(out["logits"], plain, atol=1e-4)
    # ... and the frozen teacher branch never is
    assert torch.equal(out["teacher_image_features"], teacher)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.zero_shot_image_features(images), teacher)


def test_gradients_reach_prompts_and_bridge_tokens_and_nothing_frozen(trainer, batch):
    model = trainer.model
    model.train()
    model.zero_grad(set_to_none=True)
    _, losses = trainer.compute_losses(*batch)
    sum(losses.values()).backward()
    learnable = dict(model.named_parameters())
    expected = {"prompt_learner.ctx", "prompt_learner.deep_text", "prompt_learner.vision", "mag.tokens",
                "mag.vision_proj.weight", "mag.vision_proj.bias", "mag.text_proj.weight", "mag.text_proj.bias"}
    trainable = {name for name, p in learnable.items() if p.requires_grad}
    assert trainable == expected
    for name in expected:
        grad = learnable[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name
    assert all(p.grad is None for name, p in learnable.items() if name not in expected)
    model.zero_grad(set_to_none=True)


def test_logged_components_are_the_weighted_terms_and_sum_to_the_total(trainer, batch):
    images, labels = batch
    model, node = trainer.model, trainer.node
    model.train()
    trainer.epoch = 10  # lambda(10 of max_epoch) > 0 exercises the residual
    torch.manual_seed(11)
    _, losses = trainer.compute_losses(images, labels)
    # recompute every raw term from the same draws
    torch.manual_seed(11)
    out = model.forward_train(images)
    text, image, logits = out["text_features"], out["image_features"], out["logits"]
    t_text, t_image = out["teacher_text_features"], out["teacher_image_features"]
    lam = parts.residual_lambda(10, trainer.max_epoch, 0.1)
    scale = model.logit_scale
    r_image, r_text = (image - lam * t_image) / (1 - lam), (text - lam * t_text) / (1 - lam)

    def entropy(logits_):
        p = logits_.softmax(-1)
        return -(p * torch.log(p + 1e-5)).sum(-1).mean()

    p_teacher = out["teacher_logits"].softmax(-1)
    kl = (p_teacher * (p_teacher.log() - logits.log_softmax(-1))).sum() / logits.numel()
    raw = {
        "loss_ce": F.cross_entropy(logits, labels),
        "loss_text": (text - t_text).abs().mean() * node.TEXT_LOSS_WEIGHT,
        "loss_img": (image - t_image).abs().mean() * node.IMAGE_LOSS_WEIGHT,
        "loss_kl": kl * node.KL_WEIGHT,
        "loss_re": -node.RES_WEIGHT * (entropy(scale * r_image @ t_text.T) + entropy(scale * t_image @ r_text.T)),
        "loss_mag": node.MAG_WEIGHT * parts.mag_alignment_loss(
            out["vision_mag_features"], out["text_mag_features"], labels),
    }
    assert set(losses) == set(raw)
    for name, value in raw.items():
        torch.testing.assert_close(losses[name], value, rtol=1e-4, atol=1e-6, msg=name)

    # forward_backward logs the total as the sum of the components, plus lambda and acc
    saved = {k: v.clone() for k, v in model.learnable_state_dict().items()}
    trainer.batch_idx, trainer.num_batches = 0, 2
    summary = trainer.forward_backward({"img": images, "label": labels})
    model.load_learnable_state_dict(saved)
    trainer.epoch = 0
    assert math.isclose(summary["loss"], sum(summary[k] for k in raw), rel_tol=1e-5, abs_tol=1e-6)
    assert summary["lambda"] == pytest.approx(lam) and "acc" in summary
    assert summary["loss_re"] < 0


# --------------------------------------------------------------------------------------------------
# train.py, one epoch per ablation switch
# --------------------------------------------------------------------------------------------------
ABLATIONS = {
    "full": (),
    "uniform_zero": ("TRAINER.DPL.IMPORTANCE", "uniform", "TRAINER.DPL.PERTURBATION", "zero"),
    "no_self": ("TRAINER.DPL.IMPORTANCE", "no_self"),
    "no_cls_vision_only": ("TRAINER.DPL.IMPORTANCE", "no_cls", "TRAINER.DPL.DROP_LAYERS_TEXT", "['none']"),
    "no_mag_without_mag_loss": ("TRAINER.DPL.IMPORTANCE", "no_mag", "TRAINER.DPL.MAG_WEIGHT", "0.0"),
    "off_gpa_fixed_lambda": ("TRAINER.DPL.PERTURBATION", "none", "TRAINER.DPL.GPA", "True", "TRAINER.DPL.GPA_MEAN",
                             "1.0", "TRAINER.DPL.RES_LAMBDA_FIXED", "True"),
}


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_one_epoch_through_train_py(name, dtd_root, tiny_clip_path, tmp_path, capsys):
    output_dir = tmp_path / name
    assert train.cli(cli_args(dtd_root, tiny_clip_path, output_dir, *ABLATIONS[name])) == 0
    log = capsys.readouterr().out
    progress = [line for line in log.splitlines() if line.startswith("epoch [1/1]")]
    assert progress, log[-2000:]
    for key in ("loss_ce", "loss_text", "loss_img", "loss_kl", "loss_re", "loss_mag", "lambda", "acc"):
        assert f" {key} " in progress[-1]
    assert (" lambda 0.1000 " in progress[-1]) == ("TRAINER.DPL.RES_LAMBDA_FIXED" in ABLATIONS[name])
    assert ("Using GPA model for final inference..." in log) == (name == "off_gpa_fixed_lambda")
    results = json.loads((output_dir / "results.json").read_text())
    assert results["trainer"] == "DropoutPrompt"
    checkpoint = torch.load(output_dir / "VLPromptLearner" / "model.pth.tar-1", map_location="cpu", weights_only=True)
    has_mag = any(key.startswith("mag.") for key in checkpoint["state_dict"])
    assert has_mag == (name != "no_mag_without_mag_loss")
    assert not any(key.startswith("clip.") for key in checkpoint["state_dict"])
