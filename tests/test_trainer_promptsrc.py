"""PromptSRC: consistency terms vs their formulas, GPA weights/aggregation/state, and training via train.py."""
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from helpers import (
    build_trainer_in_process,
    check_base_to_new_evaluation,
    check_one_epoch_lowers_training_loss,
    check_only_learnable_tensors_get_gradients_and_are_saved,
    run_train,
    saved_state_dict,
    train_opts,
)

CONFIG = "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml"
LEARNABLE = ["prompt_learner.ctx", "prompt_learner.deep_text", "prompt_learner.vision"]
COMPONENTS = ["loss_ce", "loss_scl_text", "loss_scl_image", "loss_kl"]


# ----- losses ---------------------------------------------------------------------------------------
def test_l1_and_kl_terms_equal_their_formulas():
    from dpl.prompting import kl_to_teacher, l1_consistency, promptsrc_consistency_losses

    a, b = torch.tensor([[1.0, -2.0], [0.5, 0.0]]), torch.tensor([[0.0, 0.0], [0.5, 1.0]])
    assert l1_consistency(a, b).item() == pytest.approx((1 + 2 + 0 + 1) / 4)
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]])
    teacher = torch.tensor([[0.0, 1.0, 1.0], [2.0, 0.0, 0.0]])
    p, q = F.softmax(logits, -1), F.softmax(teacher, -1)
    expected_kl = (q * (q.log() - p.log())).sum() / 6  # summed over B x C, divided by B * C (not B)
    assert kl_to_teacher(logits, teacher).item() == pytest.approx(expected_kl.item(), rel=1e-6)
    assert kl_to_teacher(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)

    txt, txt_t = F.normalize(torch.randn(3, 4), dim=-1), F.normalize(torch.randn(3, 4), dim=-1)
    img, img_t = F.normalize(torch.randn(2, 4), dim=-1), F.normalize(torch.randn(2, 4), dim=-1)
    terms = promptsrc_consistency_losses(txt, img, logits[:, :3], txt_t, img_t, teacher, 25, 10)
    assert list(terms) == ["loss_scl_text", "loss_scl_image", "loss_kl"]
    assert terms["loss_scl_text"].item() == pytest.approx(25 * (txt - txt_t).abs().mean().item(), rel=1e-6)
    assert terms["loss_scl_image"].item() == pytest.approx(10 * (img - img_t).abs().mean().item(), rel=1e-6)
    assert terms["loss_kl"].item() == pytest.approx(expected_kl.item(), rel=1e-6)


def test_trainer_losses_use_the_frozen_teachers(tmp_path, tiny_clip_path):
    from dpl.clip import PROMPTSRC_TEMPLATES, tokenize

    trainer = build_trainer_in_process(tmp_path, tiny_clip_path, "PromptSRC", CONFIG)
    model = trainer.model
    classnames = trainer.dm.dataset.classnames
    texts = [t.format(c.replace("_", " ")) for t in PROMPTSRC_TEMPLATES for c in classnames]
    with torch.no_grad():  # teacher = normalised mean of the raw features over the 60 templates
        raw = model.clip.encode_text(tokenize(texts)).float().reshape(60, len(classnames), -1)
    assert len(PROMPTSRC_TEMPLATES) == 60
    torch.testing.assert_close(model.teacher_text_features, F.normalize(raw.mean(0), dim=-1), atol=1e-5, rtol=1e-5)
    assert "teacher_text_features" not in model.learnable_state_dict()

    images, labels = next(iter(trainer.test_loader))["img"][:2], torch.tensor([0, 1])
    with torch.no_grad():
        logits, losses = trainer.compute_losses(images, labels)
        zs_image = F.normalize(model.clip.encode_image(images).float(), dim=-1)  # prompts off
        text, image = model.encode_text(), model.encode_image(images)
    scale = model.clip.logit_scale.exp().item()
    zs_logits = scale * zs_image @ model.teacher_text_features.t()
    assert list(losses) == COMPONENTS
    text_l1 = (text - model.teacher_text_features).abs().mean().item()
    assert losses["loss_scl_text"].item() == pytest.approx(25 * text_l1, rel=1e-4)
    assert losses["loss_scl_image"].item() == pytest.approx(10 * (image - zs_image).abs().mean().item(), rel=1e-4)
    p, q = F.softmax(logits, -1), F.softmax(zs_logits, -1)
    assert losses["loss_kl"].item() == pytest.approx(((q * (q.log() - p.log())).sum() / p.numel()).item(), rel=1e-4)


# ----- GPA ------------------------------------------------------------------------------------------
def test_gpa_weights_are_the_normalised_gaussian_pdf():
    from dpl.prompting import gaussian_epoch_weights

    weights = gaussian_epoch_weights(20, 15, 1)
    pdf = torch.tensor([math.exp(-0.5 * (e - 15) ** 2) / math.sqrt(2 * math.pi) for e in range(1, 21)],
                       dtype=torch.float64)
    torch.testing.assert_close(weights, pdf / pdf.sum())
    assert weights.sum().item() == pytest.approx(1.0)
    assert weights[14].item() == pytest.approx(0.399, abs=1e-3)  # epoch 15
    assert weights[13].item() == pytest.approx(0.242, abs=1e-3)
    assert weights[15].item() == pytest.approx(0.242, abs=1e-3)
    assert weights[12].item() == pytest.approx(0.054, abs=1e-3) and weights[11].item() == pytest.approx(0.0044, abs=1e-4)


def test_gpa_aggregate_is_the_weighted_sum_in_fp32_and_survives_a_state_round_trip():
    from dpl.prompting import GaussianPromptAggregator

    gpa = GaussianPromptAggregator(3, 2, 1)
    thetas = [torch.full((2, 3), float(e + 1), dtype=torch.float16) for e in range(3)]
    gpa.add(0, {"p": thetas[0]})
    resumed = GaussianPromptAggregator(3, 2, 1)
    resumed.load_state_dict(gpa.state_dict())
    for e in (1, 2):
        gpa.add(e, {"p": thetas[e]})
        resumed.add(e, {"p": thetas[e]})
    expected = sum(float(w) * t.float() for w, t in zip(gpa.weights, thetas))
    assert gpa.aggregate()["p"].dtype == torch.float32
    torch.testing.assert_close(gpa.aggregate()["p"], expected)
    torch.testing.assert_close(resumed.aggregate()["p"], expected)
    target = torch.nn.Parameter(torch.zeros(2, 3))
    gpa.load_into({"p": target})
    torch.testing.assert_close(target.data, expected)
    with pytest.raises(ValueError, match="already"):
        gpa.add(2, {"p": thetas[2]})
    with pytest.raises(Exception, match="GPA weights differ"):
        GaussianPromptAggregator(4, 2, 1).load_state_dict(gpa.state_dict())


def test_gpa_in_a_run_aggregates_prompts_only_and_a_resumed_run_ends_the_same(tmp_path, tiny_clip_path):
    opts = (*train_opts(2, "0.05"), "TRAIN.CHECKPOINT_FREQ", "1", "TRAINER.PROMPTSRC.GPA_MEAN", "1",
            "TRAINER.PROMPTSRC.GPA_STD", "1")
    code, out, log = run_train(tmp_path, tiny_clip_path, "PromptSRC", CONFIG, opts)
    assert code == 0, log[-2000:]
    assert log.count("Using GPA model for final inference...") == 1
    first, last = (saved_state_dict(out, "VLPromptLearner", e) for e in (1, 2))
    weights = first["trainer_state"]["gpa"]["weights"]
    for name, value in first["state_dict"].items():  # after epoch 1 the sum holds g(1) * theta_1
        torch.testing.assert_close(first["trainer_state"]["gpa"]["sums"][name], weights[0].float() * value)
    assert set(last["trainer_state"]["gpa"]["sums"]) == set(LEARNABLE)
    for name, value in last["state_dict"].items():  # the final checkpoint holds the aggregate
        torch.testing.assert_close(value, last["trainer_state"]["gpa"]["sums"][name])

    # resume from the epoch-1 checkpoint of a copy: the aggregate must come out the same
    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    (copy / "results.json").unlink()
    (copy / "VLPromptLearner" / "model.pth.tar-2").unlink()
    (copy / "VLPromptLearner" / "checkpoint").write_text("model.pth.tar-1\n")
    code, _, log = run_train(tmp_path, tiny_clip_path, "PromptSRC", CONFIG, opts, out="resumed")
    assert code == 0, log[-2000:]
    resumed = saved_state_dict(copy, "VLPromptLearner", 2)
    for name, value in last["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], value, atol=1e-6, rtol=1e-5)


# ----- trainer --------------------------------------------------------------------------------------
def test_only_prompts_get_gradients_and_are_saved(tmp_path, tiny_clip_path):
    _, summary = check_only_learnable_tensors_get_gradients_and_are_saved(
        tmp_path, tiny_clip_path, "PromptSRC", CONFIG, LEARNABLE
    )
    assert list(summary) == ["loss", *COMPONENTS, "acc"]
    assert summary["loss"] == pytest.approx(sum(summary[k] for k in COMPONENTS), rel=1e-5)


def test_one_epoch_through_train_py_lowers_the_training_loss(tmp_path, tiny_clip_path):
    check_one_epoch_lowers_training_loss(
        tmp_path, tiny_clip_path, "PromptSRC", CONFIG, "0.05", COMPONENTS, "VLPromptLearner"
    )


def test_base_checkpoint_evaluates_on_new_classes(tmp_path, tiny_clip_path):
    check_base_to_new_evaluation(tmp_path, tiny_clip_path, "PromptSRC", CONFIG, "VLPromptLearner")
