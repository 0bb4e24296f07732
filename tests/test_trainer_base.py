"""ClipPromptTrainer and its model pieces: precision, depth clamping, learnable-only checkpoints,
text features encoded once per test(), INPUT.SIZE check, and the trainer config files.
"""
import re

import pytest
import torch
import yaml

from dpl.config import get_cfg_default
from dpl.engine import extend_cfg_for_all_trainers
from dpl.engine.errors import CheckpointMismatchError, UserError
from dpl.project import PROJECT_ROOT
from helpers import build_trainer_in_process, make_tiny_clip, run_train

TRAINER_CONFIG_DIRS = ["CoOp", "CoCoOp", "KgCoOp", "PromptSRC", "IVLP", "MaPLe", "ZeroshotCLIP"]
# Upstream files whose name says another epoch count than they set (kept: upstream numbers come from them).
EPOCHS_NOT_AS_NAMED = {"MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml": 2}
CLASSNAMES = ["banded", "blotchy", "bumpy_thing"]


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

    from dpl.prompting import ContextSettings

    return CoOpModel(make_tiny_clip(), classnames,
                     ContextSettings.from_node(CN(dict(COOP_DEFAULTS, N_CTX=n_ctx, CSC=csc))))


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
        "ZeroshotCLIP/vit_b16.yaml", "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml", "CoCoOp/vit_b16_c16_ep10_batch1.yaml",
        "MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml", "MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml",
    }
    assert expected <= names


@pytest.mark.parametrize("path", _config_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_trainer_config_merges_and_its_name_tells_the_truth(path):
    cfg = extend_cfg_for_all_trainers(get_cfg_default())
    cfg.merge_from_file(str(path))
    epochs = re.search(r"_ep(\d+)", path.stem)
    if f"{path.parent.name}/{path.name}" in EPOCHS_NOT_AS_NAMED:
        assert cfg.OPTIM.MAX_EPOCH == EPOCHS_NOT_AS_NAMED[f"{path.parent.name}/{path.name}"]
    elif epochs:
        assert cfg.OPTIM.MAX_EPOCH == int(epochs.group(1))
    elif path.parent.name == "CoOp":
        assert cfg.OPTIM.MAX_EPOCH == 200  # CoOp's files without _epN are the 200-epoch ones
    batch = re.search(r"_batch(\d+)", path.stem)
    if batch:
        assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == int(batch.group(1))
    if "ctxv1" in path.stem:
        node = {"KgCoOp": "KGCOOP", "CoCoOp": "COCOOP"}.get(path.parent.name, "COOP")
        assert cfg.TRAINER[node].CTX_INIT == "a photo of a"
    raw = yaml.safe_load(path.read_text())
    backbone = {"vit_b16": "ViT-B/16", "vit_b32": "ViT-B/32", "rn50": "RN50", "rn101": "RN101"}
    assert cfg.MODEL.BACKBONE.NAME == backbone[re.match(r"(vit_b16|vit_b32|rn50|rn101)", path.stem).group(1)]
    assert raw["INPUT"]["SIZE"] == "(224, 224)" or tuple(cfg.INPUT.SIZE) == (224, 224)


def test_fp16_frozen_weights_keep_learnable_tensors_fp32_and_trainable():
    from dpl.prompting import IVLPModel
    from dpl_trainers.ivlp import IVLP_DEFAULTS
    from yacs.config import CfgNode as CN

    from dpl.prompting import DeepPromptSettings

    settings = DeepPromptSettings.from_node(CN(dict(IVLP_DEFAULTS, PROMPT_DEPTH_TEXT=2, PROMPT_DEPTH_VISION=2)))
    model = IVLPModel(make_tiny_clip(), CLASSNAMES, settings)
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
