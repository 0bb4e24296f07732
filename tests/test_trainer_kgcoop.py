"""KgCoOp: the knowledge-guidance term, its frozen teacher, its config node, and training via train.py."""
import math

import pytest
import torch
import torch.nn.functional as F

from dpl.clip import tokenize
from helpers import (
    build_trainer_in_process,
    check_base_to_new_evaluation,
    check_one_epoch_lowers_training_loss,
    check_only_learnable_tensors_get_gradients_and_are_saved,
    run_train,
    train_opts,
)

CONFIG = "KgCoOp/vit_b16_ep100_ctxv1.yaml"


def test_knowledge_guidance_term_equals_the_formula_on_known_tensors():
    from dpl_trainers.kgcoop import knowledge_guidance_loss

    learned = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    frozen = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # cosines 1, 1/sqrt(2), 0
    expected = 1.0 - (1.0 + 1.0 / math.sqrt(2.0) + 0.0) / 3.0
    assert knowledge_guidance_loss(learned, frozen).item() == pytest.approx(expected, abs=1e-6)
    assert knowledge_guidance_loss(frozen, frozen).item() == pytest.approx(0.0, abs=1e-6)
    normalised = F.normalize(torch.randn(5, 8), dim=-1)
    assert knowledge_guidance_loss(normalised, normalised).item() == pytest.approx(0.0, abs=1e-6)


def test_trainer_node_defaults_and_honoured_ctx_init(tmp_path, tiny_clip_path):
    trainer = build_trainer_in_process(tmp_path, tiny_clip_path, "KgCoOp", CONFIG,
                                       "TRAINER.KGCOOP.CTX_INIT", "a texture of")
    node = trainer.cfg.TRAINER.KGCOOP
    assert node.W == 8.0 and node.PREC == "fp16" and node.CLASS_TOKEN_POSITION == "end"
    learner = trainer.model.prompt_learner
    ids = tokenize(["a texture of"])[0, 1:4]
    assert learner.ctx.shape[0] == 3  # the configured words, not always "a photo of a"
    assert torch.equal(learner.ctx.data, trainer.model.clip.token_embedding(ids).float())


def test_frozen_teacher_is_the_dataset_template_by_the_same_clip_and_loss_is_logged_weighted(tmp_path,
                                                                                            tiny_clip_path):
    from dpl_trainers.kgcoop import knowledge_guidance_loss

    trainer = build_trainer_in_process(tmp_path, tiny_clip_path, "KgCoOp", CONFIG, "TRAINER.KGCOOP.W", "2.5")
    model = trainer.model
    texts = [f"{name.replace('_', ' ')} texture." for name in trainer.dm.dataset.classnames]  # DTD template
    with torch.no_grad():
        reference = F.normalize(model.clip.encode_text(tokenize(texts)).float(), dim=-1)
    torch.testing.assert_close(model.frozen_text_features, reference, atol=1e-5, rtol=1e-5)
    assert "frozen_text_features" not in model.learnable_state_dict()
    images, labels = next(iter(trainer.test_loader))["img"][:2], torch.tensor([0, 1])
    with torch.no_grad():
        logits, losses = trainer.compute_losses(images, labels)
        expected_kg = 2.5 * knowledge_guidance_loss(model.encode_text(), model.frozen_text_features)
    assert list(losses) == ["loss_ce", "loss_kg"]
    assert losses["loss_kg"].item() == pytest.approx(expected_kg.item(), rel=1e-5)
    assert losses["loss_ce"].item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)


def test_only_the_context_gets_gradients_and_is_saved(tmp_path, tiny_clip_path):
    _, summary = check_only_learnable_tensors_get_gradients_and_are_saved(
        tmp_path, tiny_clip_path, "KgCoOp", CONFIG, ["prompt_learner.ctx"]
    )
    assert summary["loss"] == pytest.approx(summary["loss_ce"] + summary["loss_kg"], rel=1e-5)


def test_one_epoch_through_train_py_lowers_the_training_loss(tmp_path, tiny_clip_path):
    check_one_epoch_lowers_training_loss(
        tmp_path, tiny_clip_path, "KgCoOp", CONFIG, "0.05", ["loss_ce", "loss_kg"], "prompt_learner"
    )


def test_base_checkpoint_evaluates_on_new_classes(tmp_path, tiny_clip_path):
    check_base_to_new_evaluation(tmp_path, tiny_clip_path, "KgCoOp", CONFIG, "prompt_learner")


# ----- upstream KgCoOp's configs and options -------------------------------------------------------
UPSTREAM_KGCOOP_YAML = """\
DATALOADER:
  TRAIN_X:
    BATCH_SIZE: 128
OPTIM:
  NAME: "sgd"
  LR: 0.002
  MAX_EPOCH: 100
TRAINER:
  COOP:
    CTX_INIT: True
"""
UPSTREAM_KGCOOP_OPTS = ("TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.CSC", "False", "TRAINER.COOP.W", "8.0",
                        "TRAINER.COOP.CLASS_TOKEN_POSITION", "end")


def _kgcoop_settings(tmp_path, *argv):
    import dpl.tools.train as TRAIN
    from dpl_trainers.kgcoop import KgCoOp

    cfg = TRAIN.setup_cfg(TRAIN.build_parser().parse_args(["--trainer", "KgCoOp", *argv]))
    return cfg, KgCoOp.read_settings(cfg)


def test_upstream_kgcoop_config_and_options_mean_what_they_meant_there(tmp_path):
    config = tmp_path / "vit_b16_ep100_ctxv1.yaml"
    config.write_text(UPSTREAM_KGCOOP_YAML)
    cfg, settings = _kgcoop_settings(tmp_path, "--config-file", str(config), *UPSTREAM_KGCOOP_OPTS)
    assert cfg.TRAINER.COOP.CTX_INIT == "a photo of a"  # KgCoOp's bool: "initialise from 'a photo of a'"
    assert settings.w == 8.0 and settings.context.ctx_init == "a photo of a" and settings.context.n_ctx == 4
    _, weight_only = _kgcoop_settings(tmp_path, "TRAINER.COOP.W", "2")
    assert weight_only.w == 2.0 and weight_only.context.ctx_init == ""
    _, off = _kgcoop_settings(tmp_path, "TRAINER.COOP.CTX_INIT", "False", "TRAINER.KGCOOP.W", "3.0")
    assert off.context.ctx_init == "" and off.w == 3.0


def test_the_same_kgcoop_setting_on_both_nodes_must_agree(tmp_path):
    from dpl.engine import UserError

    with pytest.raises(UserError, match=r"TRAINER.KGCOOP.W = 2.0 and TRAINER.COOP.W = 4.0 .* disagree"):
        _kgcoop_settings(tmp_path, "TRAINER.KGCOOP.W", "2", "TRAINER.COOP.W", "4")
    with pytest.raises(UserError, match=r"TRAINER.KGCOOP.CTX_INIT = 'a photo of a' and TRAINER.COOP.CTX_INIT = ''"):
        _kgcoop_settings(tmp_path, "TRAINER.KGCOOP.CTX_INIT", "a photo of a", "TRAINER.COOP.CTX_INIT", "False")


def test_an_upstream_value_equal_to_upstreams_default_is_still_read_and_identified(tmp_path):
    from dpl.results.identity import run_identity

    _, explicit_one = _kgcoop_settings(tmp_path, "TRAINER.COOP.W", "1.0")  # upstream's code default, said aloud
    assert explicit_one.w == 1.0

    def identity(*argv):
        cfg, _ = _kgcoop_settings(tmp_path, "MODEL.BACKBONE.NAME", "pocket", *argv)
        return run_identity(cfg)["config"]

    assert identity("TRAINER.COOP.W", "8.0") == identity("TRAINER.KGCOOP.W", "8.0") == identity()
    assert identity("TRAINER.COOP.W", "1.0") == identity("TRAINER.KGCOOP.W", "1.0") != identity()


def test_an_upstream_kgcoop_run_trains_here(tmp_path, tiny_clip_path):
    config = tmp_path / "upstream.yaml"
    config.write_text(UPSTREAM_KGCOOP_YAML)
    code, _, log = run_train(tmp_path, tiny_clip_path, "KgCoOp", "KgCoOp/vit_b16_ep100_ctxv1.yaml",
                             "--config-file", str(config), UPSTREAM_KGCOOP_OPTS, train_opts(epochs=1))
    assert code == 0, log[-2000:]
    assert 'Initial context: "a photo of a"' in log
    assert "KgCoOp reads upstream names as its own: TRAINER.COOP.N_CTX -> TRAINER.KGCOOP.N_CTX = 4, " in log
    assert "TRAINER.COOP.W -> TRAINER.KGCOOP.W = 8.0" in log
    assert "loss_kg" in log
