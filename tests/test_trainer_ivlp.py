"""IVLP: independent V-L deep prompts (shapes, init, clamping, placement through the encoders) and training."""
import pytest
import torch
from yacs.config import CfgNode as CN

from dpl.clip import tokenize
from helpers import (
    check_base_to_new_evaluation,
    check_one_epoch_lowers_training_loss,
    check_only_learnable_tensors_get_gradients_and_are_saved,
    make_tiny_clip,
)

CONFIG = "IVLP/vit_b16_c2_ep20_batch4_4+4ctx.yaml"
LEARNABLE = ["prompt_learner.ctx", "prompt_learner.deep_text", "prompt_learner.vision"]


def _model(**node):
    from dpl.prompting import IVLPModel
    from dpl_trainers.ivlp import IVLP_DEFAULTS

    from dpl.clip import clip_architecture
    from dpl.prompting import DeepPromptSettings

    clip = make_tiny_clip()
    settings = DeepPromptSettings.from_node(CN(dict(IVLP_DEFAULTS, **node)))
    return IVLPModel(clip, ["banded", "bumpy_thing"], settings.fitted_to(clip_architecture(clip), "TRAINER.IVLP"))


def test_prompt_shapes_count_and_clamped_depths(capsys):
    model = _model(N_CTX_TEXT=4, N_CTX_VISION=4, PROMPT_DEPTH_TEXT=9, PROMPT_DEPTH_VISION=9)
    learner = model.prompt_learner
    assert learner.ctx.shape == (4, 128)
    assert learner.deep_text.shape == (2, 4, 128)  # depth clamped to the tiny CLIP's 3 text layers
    assert learner.vision.shape == (3, 4, 128)
    assert sum(p.numel() for p in learner.parameters()) == 3 * 4 * 128 + 3 * 4 * 128
    out = capsys.readouterr().out
    assert "PROMPT_DEPTH_TEXT = 9 exceeds the backbone's 3 layers: using 3" in out
    assert "PROMPT_DEPTH_VISION = 9 exceeds the backbone's 3 layers: using 3" in out
    assert all(p.dtype == torch.float32 for p in learner.parameters())


def test_two_text_tokens_start_from_the_first_init_words_and_keep_the_rest_as_text():
    model = _model(N_CTX_TEXT=2, PROMPT_DEPTH_TEXT=1, PROMPT_DEPTH_VISION=0)
    learner = model.prompt_learner
    ids = tokenize(["a photo of a"])[0, 1:3]
    assert torch.equal(learner.ctx.data, model.clip.token_embedding(ids).float())
    assert learner.prompts.spec.texts[0] == "a photo of a banded."
    assert learner.deep_text is None and learner.vision is None
    # depth 1 text and no vision prompts: the image side is CLIP's own
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_image(images), torch.nn.functional.normalize(model.clip.encode_image(images), dim=-1)
        )


def test_more_text_tokens_than_init_words_fall_back_to_random_init():
    learner = _model(N_CTX_TEXT=6, PROMPT_DEPTH_TEXT=2).prompt_learner
    assert learner.prompts.spec.texts[0].startswith("X X X X X X banded")
    assert learner.ctx.std().item() == pytest.approx(0.02, rel=0.3)


def test_deep_prompts_change_both_encoders():
    model = _model(N_CTX_TEXT=2, N_CTX_VISION=2, PROMPT_DEPTH_TEXT=3, PROMPT_DEPTH_VISION=3)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    with torch.no_grad():
        text, image = model.encode_text(), model.encode_image(images)
        # random changes: LayerNorm would cancel a shift shared by a token's features (e.g. add_(1.0))
        deep_text, vision = model.prompt_learner.deep_text, model.prompt_learner.vision[2]
        deep_text.add_(torch.randn(deep_text.shape, generator=generator))
        vision.add_(torch.randn(vision.shape, generator=generator))
        assert not torch.allclose(model.encode_text(), text, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(model.encode_image(images), image, rtol=1e-4, atol=1e-4)


def test_only_prompts_get_gradients_and_are_saved(tmp_path, tiny_clip_path):
    trainer, summary = check_only_learnable_tensors_get_gradients_and_are_saved(
        tmp_path, tiny_clip_path, "IVLP", CONFIG, LEARNABLE
    )
    assert set(summary) == {"loss", "acc"}  # CE only
    assert trainer.get_model_names() == ["VLPromptLearner"]


def test_one_epoch_through_train_py_lowers_the_training_loss(tmp_path, tiny_clip_path):
    check_one_epoch_lowers_training_loss(tmp_path, tiny_clip_path, "IVLP", CONFIG, "0.05", [], "VLPromptLearner")


def test_base_checkpoint_evaluates_on_new_classes(tmp_path, tiny_clip_path):
    check_base_to_new_evaluation(tmp_path, tiny_clip_path, "IVLP", CONFIG, "VLPromptLearner")
