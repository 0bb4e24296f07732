"""MaPLe: coupled multi-modal prompts (shapes, init, the text -> vision coupling, encoding through IVLP's
encoders, independent per-layer projections), the settings, training through train.py, configs and scripts."""
import re

import pytest
import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from dpl.clip import clip_architecture, tokenize
from dpl.clip.package import clip
from dpl.project import PROJECT_ROOT
from dpl.utils.errors import SettingError
from helpers import (
    TINY_CLIP,
    build_trainer_in_process,
    check_base_to_new_evaluation,
    check_one_epoch_lowers_training_loss,
    check_only_learnable_tensors_get_gradients_and_are_saved,
    make_tiny_clip,
    run_train,
    train_opts,
)

CONFIG = "MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml"
XD_CONFIG = "MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml"
MODEL_NAME = "MultiModalPromptLearner"
CLASSNAMES = ["banded", "bumpy_thing"]
# the tiny CLIP has 3 layers per tower, so depth 9 is clamped to 3: two deeper layers
LEARNABLE = ["prompt_learner.ctx", "prompt_learner.compound_prompts_text", "prompt_learner.proj.weight",
             "prompt_learner.proj.bias"] + [f"prompt_learner.compound_prompt_projections.{i}.{name}"
                                            for i in range(2) for name in ("weight", "bias")]


def wide_vision_clip(seed=0):
    """The tiny CLIP with a wider (192) and deeper (4) vision tower than its text tower (128, 3 layers), so
    the projections' direction and the clamp to the shallower tower are visible."""
    torch.manual_seed(seed)
    return clip.model.CLIP(**dict(TINY_CLIP, vision_width=192, vision_layers=4)).float().eval()


def tiny_resnet_clip():
    torch.manual_seed(0)
    return clip.model.CLIP(embed_dim=64, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=8,
                           vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=64,
                           transformer_heads=1, transformer_layers=1).eval()


def settings_of(clip_model, **node):
    from dpl.prompting import MaPLeSettings
    from dpl_trainers.maple import MAPLE_DEFAULTS

    settings = MaPLeSettings.from_node(CN(dict(MAPLE_DEFAULTS, **node)))
    return settings.fitted_to(clip_architecture(clip_model), "TRAINER.MAPLE")


def maple_model(clip_model=None, **node):
    from dpl.prompting import MaPLeModel

    clip_model = make_tiny_clip() if clip_model is None else clip_model
    return MaPLeModel(clip_model, CLASSNAMES, settings_of(clip_model, **node))


def reference_vision_prompts(learner):
    """Block i's vision prompts = the Linear of block i applied to block i's text prompts (layer 0: ctx)."""
    texts = [learner.ctx] + list(learner.compound_prompts_text)
    layers = [learner.proj] + list(learner.compound_prompt_projections)
    return torch.stack([F.linear(text, layer.weight, layer.bias) for text, layer in zip(texts, layers)])


# ----- the prompt learner -------------------------------------------------------------------------------
def test_shapes_count_and_the_depth_clamped_to_the_shallower_tower(capsys):
    learner = maple_model(wide_vision_clip(), N_CTX=2, PROMPT_DEPTH=9).prompt_learner
    assert learner.ctx.shape == (2, 128)
    assert learner.compound_prompts_text.shape == (2, 2, 128)  # blocks 1, 2 of the 3-layer text tower
    assert learner.proj.weight.shape == (192, 128) and learner.proj.bias.shape == (192,)
    assert len(learner.compound_prompt_projections) == 2
    assert all(layer.weight.shape == (192, 128) for layer in learner.compound_prompt_projections)
    assert learner.vision_prompts().shape == (3, 2, 192)
    linear = 128 * 192 + 192
    assert sum(p.numel() for p in learner.parameters()) == 2 * 128 + 2 * 2 * 128 + 3 * linear
    assert all(p.dtype == torch.float32 and p.requires_grad for p in learner.parameters())
    assert "TRAINER.MAPLE.PROMPT_DEPTH = 9 exceeds the backbone's 3 layers: using 3" in capsys.readouterr().out


def test_two_tokens_start_from_the_first_init_words_and_keep_the_rest_as_text():
    model = maple_model(N_CTX=2, PROMPT_DEPTH=1)
    learner = model.prompt_learner
    ids = tokenize(["a photo of a"])[0, 1:3]
    assert torch.equal(learner.ctx.data, model.clip.token_embedding(ids).float())
    assert learner.prompts.spec.texts[0] == "a photo of a banded."
    assert learner.prompts.spec.texts[1] == "a photo of a bumpy thing."
    # depth 1: no deeper prompts, the layer-0 vision prompts are still the projection of the context
    assert learner.compound_prompts_text is None and len(learner.compound_prompt_projections) == 0
    torch.testing.assert_close(learner.vision_prompts(), learner.proj(learner.ctx).unsqueeze(0))


def test_more_tokens_than_init_words_fall_back_to_random_init():
    learner = maple_model(N_CTX=6, PROMPT_DEPTH=2).prompt_learner
    assert learner.prompts.spec.texts[0] == "X X X X X X banded."
    assert learner.ctx.std().item() == pytest.approx(0.02, rel=0.3)
    assert learner.compound_prompts_text.std().item() == pytest.approx(0.02, rel=0.3)


def test_vision_prompts_are_the_projections_of_the_text_prompts():
    learner = maple_model(wide_vision_clip(), N_CTX=2, PROMPT_DEPTH=3).prompt_learner
    with torch.no_grad():  # distinct layers, so a swapped or shared projection would show
        for layer in learner.compound_prompt_projections:
            layer.weight.add_(torch.randn_like(layer.weight))
            layer.bias.add_(torch.randn_like(layer.bias))
    torch.testing.assert_close(learner.vision_prompts(), reference_vision_prompts(learner))
    _, deep = learner.text_prompts()
    assert deep is learner.compound_prompts_text


def test_the_deep_projections_start_equal_but_train_independently():
    learner = maple_model(N_CTX=2, PROMPT_DEPTH=3).prompt_learner
    first, second = learner.compound_prompt_projections
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    assert first.weight is not second.weight and first.weight.data_ptr() != second.weight.data_ptr()
    assert not torch.equal(learner.proj.weight, first.weight)  # layer 0 has its own initialisation
    # a loss on block 1's vision prompts moves block 1's projection only
    learner.vision_prompts()[1].square().sum().backward()
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0
    assert second.weight.grad is None or second.weight.grad.abs().sum() == 0
    with torch.no_grad():
        first.weight.add_(1.0)
    assert not torch.equal(first.weight, second.weight)


def test_the_layer_zero_context_gets_gradients_through_both_towers():
    model = maple_model(N_CTX=2, PROMPT_DEPTH=3)
    model.encode_image(torch.randn(2, 3, 32, 32)).sum().backward()
    learner = model.prompt_learner
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0  # via proj
    assert learner.compound_prompts_text.grad.abs().sum() > 0


def test_logits_equal_ivlp_encoders_given_the_projected_prompts():
    from dpl.prompting import DeepPromptSettings, IVLPModel

    clip_model = make_tiny_clip()
    model = maple_model(clip_model, N_CTX=2, PROMPT_DEPTH=3)
    learner = model.prompt_learner
    ivlp = IVLPModel(clip_model, CLASSNAMES, DeepPromptSettings(2, 2, 3, 3, "a photo of a"))
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ivlp.prompt_learner.ctx.copy_(learner.ctx)
        ivlp.prompt_learner.deep_text.copy_(learner.compound_prompts_text)
        ivlp.prompt_learner.vision.copy_(reference_vision_prompts(learner))
        logits = model(images)
        torch.testing.assert_close(logits, ivlp(images))
        # and by hand, from the prompted encoders
        prompts, deep = learner.text_prompts()
        text = F.normalize(model.text_encoder(prompts, learner.tokenized, deep_prompts=deep), dim=-1)
        image = F.normalize(model.vision_encoder(images, prompts=reference_vision_prompts(learner)), dim=-1)
        torch.testing.assert_close(logits, clip_model.logit_scale.exp() * image @ text.t())
        # the coupling is live: moving a deep text prompt moves the image features too
        learner.compound_prompts_text[1].add_(torch.randn(2, 128))
        assert not torch.allclose(model.encode_image(images), image, atol=1e-4)


# ----- settings ------------------------------------------------------------------------------------------
def test_the_node_keeps_upstream_keys_and_defaults():
    from dpl.config import get_cfg_default
    from dpl_trainers.maple import MaPLe

    cfg = get_cfg_default()
    MaPLe.extend_cfg(cfg)
    assert dict(cfg.TRAINER.MAPLE) == {"N_CTX": 2, "CTX_INIT": "a photo of a", "PREC": "fp16", "PROMPT_DEPTH": 9}
    assert MaPLe.MODEL_NAME == MODEL_NAME and MaPLe.CFG_NODE == "MAPLE"


@pytest.mark.parametrize("key, value, field", [("N_CTX", 0, "n_ctx"), ("PROMPT_DEPTH", 0, "prompt_depth")])
def test_bad_settings_name_their_field(key, value, field):
    from dpl.prompting import MaPLeSettings
    from dpl_trainers.maple import MAPLE_DEFAULTS

    with pytest.raises(SettingError) as raised:
        MaPLeSettings.from_node(CN(dict(MAPLE_DEFAULTS, **{key: value})))
    assert raised.value.field == field


def test_a_resnet_backbone_is_refused():
    from dpl.prompting import MaPLePromptLearner, MaPLeSettings

    resnet = tiny_resnet_clip()
    with pytest.raises(SettingError, match="need a ViT backbone") as raised:
        MaPLeSettings().fitted_to(clip_architecture(resnet), "TRAINER.MAPLE")
    assert raised.value.field == "prompt_depth"
    with pytest.raises(SettingError, match="need a ViT backbone"):
        MaPLePromptLearner(resnet, CLASSNAMES, MaPLeSettings(prompt_depth=1))


def test_a_resnet_backbone_is_one_line_through_train_py(tmp_path, capsys):
    weights = tmp_path / "resnet.pt"
    torch.save(tiny_resnet_clip().state_dict(), weights)
    code, _, _ = run_train(tmp_path, weights, "MaPLe", CONFIG, train_opts(1), ("INPUT.SIZE", "(64, 64)"))
    err = capsys.readouterr().err.strip()
    assert code != 0 and "Traceback" not in err
    assert ("TRAINER.MAPLE.PROMPT_DEPTH is 9: MaPLe's vision prompts are projections of its text prompts and need "
            "a ViT backbone") in err.splitlines()[-1], err


# ----- the trainer through train.py ----------------------------------------------------------------------
def test_only_the_prompt_learner_gets_gradients_and_is_saved(tmp_path, tiny_clip_path):
    trainer, summary = check_only_learnable_tensors_get_gradients_and_are_saved(
        tmp_path, tiny_clip_path, "MaPLe", CONFIG, LEARNABLE
    )
    assert set(summary) == {"loss", "acc"}  # CE only
    assert trainer.get_model_names() == [MODEL_NAME]


def test_one_epoch_through_train_py_lowers_the_training_loss(tmp_path, tiny_clip_path):
    check_one_epoch_lowers_training_loss(tmp_path, tiny_clip_path, "MaPLe", CONFIG, "0.05", [], MODEL_NAME)


def test_base_checkpoint_evaluates_on_new_classes(tmp_path, tiny_clip_path):
    check_base_to_new_evaluation(tmp_path, tiny_clip_path, "MaPLe", CONFIG, MODEL_NAME)


def test_load_model_takes_the_learnable_tensors_into_a_model_of_other_classes(tmp_path, tiny_clip_path):
    base = ("DATASET.SUBSAMPLE_CLASSES", "base")
    code, out, log = run_train(tmp_path, tiny_clip_path, "MaPLe", CONFIG, train_opts(1, "0.05"), base, out="base")
    assert code == 0, log[-2000:]
    trainer = build_trainer_in_process(tmp_path / "new", tiny_clip_path, "MaPLe", CONFIG,
                                       "DATASET.SUBSAMPLE_CLASSES", "new")
    before = trainer.model.prompt_learner.vision_prompts().detach().clone()
    trainer.load_model(str(out), epoch=1)
    saved = torch.load(out / MODEL_NAME / "model.pth.tar-1", map_location="cpu", weights_only=True)["state_dict"]
    learned = trainer.model.learnable_state_dict()
    assert set(learned) == set(saved)
    assert all(torch.equal(learned[name], saved[name]) for name in saved)
    assert not torch.allclose(trainer.model.prompt_learner.vision_prompts(), before)
    assert trainer.model.prompt_learner.tokenized.shape[0] == len(trainer.dm.dataset.classnames)


# ----- configs and scripts -------------------------------------------------------------------------------
def test_the_shipped_configs_carry_upstream_values():
    from dpl.config import get_cfg_default
    from dpl_trainers.maple import MaPLe

    def load(name):
        cfg = get_cfg_default()
        MaPLe.extend_cfg(cfg)
        cfg.merge_from_file(str(PROJECT_ROOT / "configs/trainers" / name))
        return cfg

    base, xd = load(CONFIG), load(XD_CONFIG)
    assert (base.OPTIM.LR, base.OPTIM.MAX_EPOCH, base.TRAINER.MAPLE.PROMPT_DEPTH) == (0.0035, 5, 9)
    assert (xd.OPTIM.LR, xd.OPTIM.MAX_EPOCH, xd.TRAINER.MAPLE.PROMPT_DEPTH) == (0.0026, 2, 3)
    for cfg in (base, xd):
        assert (cfg.DATALOADER.TRAIN_X.BATCH_SIZE, cfg.DATALOADER.TEST.BATCH_SIZE) == (4, 100)
        assert (cfg.OPTIM.NAME, cfg.OPTIM.LR_SCHEDULER, cfg.OPTIM.WARMUP_EPOCH) == ("sgd", "cosine", 1)
        assert (cfg.OPTIM.WARMUP_TYPE, cfg.OPTIM.WARMUP_CONS_LR) == ("constant", 1e-5)
        assert (cfg.TRAINER.MAPLE.N_CTX, cfg.TRAINER.MAPLE.CTX_INIT, cfg.TRAINER.MAPLE.PREC) == (
            2, "a photo of a", "fp16")
        assert cfg.MODEL.BACKBONE.NAME == "ViT-B/16" and cfg.INPUT.INTERPOLATION == "bicubic"
        assert cfg.TRAIN.PRINT_FREQ == 20


def test_the_protocol_scripts_exist_and_name_shipped_configs():
    folder = PROJECT_ROOT / "scripts" / "maple"
    for script in ("base2new_train.sh", "base2new_test.sh", "xd_train.sh", "xd_test.sh", "few_shot.sh",
                   "long_tail.sh", "long_tail_test.sh"):
        text = (folder / script).read_text()
        ivlp = (PROJECT_ROOT / "scripts" / "ivlp" / script).read_text()
        assert text == ivlp.replace("scripts/ivlp/", "scripts/maple/"), script
    method = (folder / "method.sh").read_text()
    assert re.search(r"^TRAINER=MaPLe$", method, re.M)
    configs = dict(re.findall(r"^(CFG_\w+)=(\S+)", method, re.M))
    assert configs["CFG_XD"] == "vit_b16_c2_ep5_batch4_2ctx_cross_datasets"
    assert set(configs) == {"CFG_BASE2NEW", "CFG_XD", "CFG_FEWSHOT", "CFG_LONGTAIL"}
    for name in configs.values():
        assert (PROJECT_ROOT / "configs/trainers/MaPLe" / f"{name}.yaml").is_file(), name
