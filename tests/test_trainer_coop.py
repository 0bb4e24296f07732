"""CoOp on the tiny CLIP: context construction, gradients/checkpoint, one epoch through train.py, base->new."""
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

CLASSNAMES = ["banded", "bumpy_thing"]


def _learner(**node):
    from dpl.prompting import COOP_DEFAULTS, CoOpPromptLearner

    node = CN(dict(COOP_DEFAULTS, **node))
    return CoOpPromptLearner(make_tiny_clip(), CLASSNAMES, node.N_CTX, node.CTX_INIT, node.CSC,
                             node.CLASS_TOKEN_POSITION)


def test_generic_and_class_specific_context_shapes():
    assert _learner(N_CTX=3).ctx.shape == (3, 128)
    assert _learner(N_CTX=3, CSC=True).ctx.shape == (2, 3, 128)
    assert _learner(N_CTX=3).ctx.std().item() == pytest.approx(0.02, rel=0.3)  # N(0, 0.02^2)


def test_ctx_init_sets_the_words_embeddings_and_overrides_n_ctx():
    clip_model = make_tiny_clip()
    learner = _learner(N_CTX=16, CTX_INIT="a_photo of a")
    ids = tokenize(["a photo of a"])[0, 1:5]
    assert learner.ctx.shape == (4, 128)
    assert torch.equal(learner.ctx.data, clip_model.token_embedding(ids).detach())
    assert learner.ctx.dtype == torch.float32 and learner.ctx.requires_grad
    class_specific = _learner(CTX_INIT="a photo of a", CSC=True)
    assert class_specific.ctx.shape == (2, 4, 128)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_prompt_places_context_and_class_tokens(position):
    learner = _learner(N_CTX=4, CLASS_TOKEN_POSITION=position)
    prompts = learner()  # [C, 77, D]
    ctx = learner.ctx
    # class 0 "banded" is one token; "bumpy thing" two
    expected_ctx_rows = {"end": [1, 2, 3, 4], "front": [2, 3, 4, 5], "middle": [1, 2, 4, 5]}[position]
    assert torch.equal(prompts[0, expected_ctx_rows], ctx)
    assert torch.equal(prompts[:, 0], learner.prompts.prefix[:, 0])  # SOS first everywhere


def test_only_the_context_gets_gradients_and_is_saved(tmp_path, tiny_clip_path):
    check_only_learnable_tensors_get_gradients_and_are_saved(
        tmp_path, tiny_clip_path, "CoOp", "CoOp/vit_b16_ep50.yaml", ["prompt_learner.ctx"]
    )


def test_one_epoch_through_train_py_lowers_the_training_loss(tmp_path, tiny_clip_path):
    check_one_epoch_lowers_training_loss(
        tmp_path, tiny_clip_path, "CoOp", "CoOp/vit_b16_ep50_ctxv1.yaml", "0.05", [], "prompt_learner"
    )


def test_base_checkpoint_evaluates_on_new_classes(tmp_path, tiny_clip_path):
    check_base_to_new_evaluation(tmp_path, tiny_clip_path, "CoOp", "CoOp/vit_b16_ep50_ctxv1.yaml", "prompt_learner")
