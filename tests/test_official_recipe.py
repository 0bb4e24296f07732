"""Switches to the official DroPLe code's choices (``TRAINER.DPL``): each one's effect, its default (this
project's choice, unchanged), and the ``_official`` config setting the official value."""
import math

import pytest
import torch
from PIL import Image

import dpl.tools.train as train
from dpl.data.transforms.transforms import clean_view_transform
from dpl.drople import AlignmentGuidance, residual_denominator, residual_entropies, residual_features
from dpl.engine.errors import UserError
from dpl.project import PROJECT_ROOT
from helpers import build_trainer_in_process

CONFIG = "DropoutPrompt/vit_b16_c2_ep20_batch4_4+4ctx.yaml"
OFFICIAL = PROJECT_ROOT / "configs/trainers/DropoutPrompt/vit_b16_c2_ep20_batch4_4+4ctx_official.yaml"


def test_the_official_config_sets_every_switch_to_the_official_value():
    args = train.build_parser().parse_args(["--trainer", "DropoutPrompt", "--config-file", str(OFFICIAL)])
    node = train.setup_cfg(args).TRAINER.DPL
    assert node.MAG_INIT_A == pytest.approx(math.sqrt(5), abs=1e-12)
    assert (node.RES_DENOMINATOR, node.PROMPT_INIT, node.LEARNABLE_LOGIT_SCALE) == (
        "official", "kaiming_uniform", True)
    inp = train.setup_cfg(args).INPUT
    assert (list(inp.TRANSFORMS), inp.TEACHER_VIEW) == (["center_crop", "patch_randaugment", "normalize"], "clean")
    assert (inp.PATCH_RANDAUGMENT_N, inp.PATCH_RANDAUGMENT_M, inp.PATCH_RANDAUGMENT_PATCH) == (2, 7, 16)
    default = train.setup_cfg(train.build_parser().parse_args(["--trainer", "DropoutPrompt"])).TRAINER.DPL
    assert (default.MAG_INIT_A, default.RES_DENOMINATOR, default.PROMPT_INIT, default.LEARNABLE_LOGIT_SCALE) == (
        0.0, "one_minus_lambda", "normal", False)


def test_bridge_tokens_start_in_the_bound_of_their_kaiming_a():
    torch.manual_seed(0)
    ours = AlignmentGuidance(64, 768, 512).tokens.abs().max().item()
    official = AlignmentGuidance(64, 768, 512, init_a=math.sqrt(5)).tokens.abs().max().item()
    assert 0.105 < ours <= math.sqrt(6 / 512)  # U(+-0.108)
    assert 0.043 < official <= 1 / math.sqrt(512)  # U(+-0.044)


def test_the_official_residual_divides_by_0_999_while_lambda_is_below_1e_3():
    assert residual_denominator(0.0) == 1.0 and residual_denominator(0.0, "official") == 0.999
    assert residual_denominator(5e-4, "official") == 0.999
    assert residual_denominator(0.05, "official") == residual_denominator(0.05) == pytest.approx(0.95)
    prompted, frozen = torch.randn(3, 8), torch.randn(3, 8)
    torch.testing.assert_close(residual_features(prompted, frozen, 0.0, "official"), prompted / 0.999)
    torch.testing.assert_close(residual_features(prompted, frozen, 0.0), prompted)
    text = torch.randn(5, 8)
    ours = residual_entropies(prompted, frozen, text, text, 1.0, 0.0)
    official = residual_entropies(prompted, frozen, text, text, 1.0, 0.0, "official")
    assert all(a != b for a, b in zip(ours, official))
    with pytest.raises(ValueError, match="unknown residual denominator rule 'other'"):
        residual_denominator(0.1, "other")


def test_official_prompt_init_is_kaiming_uniform_per_text_layer_and_over_the_vision_tensor(tmp_path, tiny_clip_path):
    learner = build_trainer_in_process(tmp_path, tiny_clip_path, "DropoutPrompt", CONFIG,
                                       "TRAINER.DPL.PROMPT_INIT", "kaiming_uniform").model.prompt_learner
    text_width, (_, n_ctx, vision_width) = learner.deep_text.shape[-1], learner.vision.shape
    for layer in learner.deep_text:  # [n_ctx, width]: fan_in = width
        assert 0.8 / math.sqrt(text_width) < layer.abs().max() <= 1 / math.sqrt(text_width)
    bound = 1 / math.sqrt(n_ctx * vision_width)  # one [depth, n_ctx, width] tensor: fan_in = n_ctx * width
    assert 0.9 * bound < learner.vision.abs().max() <= bound
    normal = build_trainer_in_process(tmp_path / "n", tiny_clip_path, "DropoutPrompt", CONFIG).model.prompt_learner
    assert normal.vision.abs().max() > bound  # N(0, 0.02^2) over this many values exceeds 0.044 somewhere
    torch.testing.assert_close(learner.ctx, normal.ctx)  # the layer-0 context is CTX_INIT's words either way


def test_a_learnable_logit_scale_starts_at_clips_is_clamped_trained_and_saved_and_the_teacher_keeps_clips(
        tmp_path, tiny_clip_path):
    trainer = build_trainer_in_process(tmp_path, tiny_clip_path, "DropoutPrompt", CONFIG,
                                       "TRAINER.DPL.LEARNABLE_LOGIT_SCALE", "True", "OPTIM.LR", "0.01",
                                       "OPTIM.WARMUP_EPOCH", "0")
    model = trainer.model
    frozen = model.clip.logit_scale.exp().item()  # 1 / 0.07 for this test CLIP; 100 for OpenAI's (ln 100)
    assert model.logit_scale.item() == pytest.approx(frozen)
    assert "log_logit_scale" in model.learnable_state_dict()
    assert any(p is model.log_logit_scale for p in trainer.optimized_parameters())
    images = torch.rand(4, 3, 32, 32)
    labels = torch.tensor([0, 1, 0, 1])
    model.train()
    out = model.forward_train(images)
    teacher = frozen * out["teacher_image_features"] @ out["teacher_text_features"].t()
    torch.testing.assert_close(out["teacher_logits"], teacher)
    before = model.log_logit_scale.item()
    trainer.forward_backward({"img": images, "label": labels})
    assert model.log_logit_scale.item() != before  # moved by its gradient (CE, residual entropy)
    with torch.no_grad():
        model.log_logit_scale.fill_(5.0)
    assert model.logit_scale.item() == pytest.approx(100.0)  # clamped to ln 100 before exp


def test_a_clean_teacher_view_reaches_the_teacher_and_the_student_keeps_its_augmented_batch(tmp_path, tiny_clip_path):
    trainer = build_trainer_in_process(tmp_path, tiny_clip_path, "DropoutPrompt", CONFIG, "INPUT.TEACHER_VIEW", "clean")
    batch = next(iter(trainer.train_loader_x))
    clean = clean_view_transform(trainer.cfg)
    expected = torch.stack([clean(Image.open(path).convert("RGB")) for path in batch["impath"]])
    torch.testing.assert_close(batch["img_teacher"], expected)  # CLIP's test preprocessing, not augmented
    assert not torch.equal(batch["img"], batch["img_teacher"])  # the student's random crop and flip
    assert "img_teacher" not in next(iter(trainer.test_loader))
    model = trainer.model.train()
    student, teacher = batch["img"], batch["img_teacher"]
    out = model.forward_train(student, teacher_images=teacher)
    torch.testing.assert_close(out["teacher_image_features"], model.zero_shot_image_features(teacher))
    assert trainer.extra_train_inputs(batch)["teacher_images"] is not None
    default = build_trainer_in_process(tmp_path / "same", tiny_clip_path, "DropoutPrompt", CONFIG)
    assert "img_teacher" not in next(iter(default.train_loader_x)) and default.extra_train_inputs({}) == {}


def test_a_teacher_view_for_a_trainer_without_a_teacher_is_refused(tmp_path, tiny_clip_path):
    with pytest.raises(UserError, match="INPUT.TEACHER_VIEW is 'clean', but CoOp has no frozen image teacher"):
        build_trainer_in_process(tmp_path, tiny_clip_path, "CoOp", "CoOp/vit_b16_ep50.yaml",
                                 "INPUT.TEACHER_VIEW", "clean")
    with pytest.raises(ValueError, match=r"INPUT.TEACHER_VIEW is 'both': use one of \['same', 'clean'\]"):
        build_trainer_in_process(tmp_path / "b", tiny_clip_path, "DropoutPrompt", CONFIG, "INPUT.TEACHER_VIEW", "both")
