"""CoCoOp on the tiny CLIP: the meta-net, the conditional forward pass against a per-image reference
written from the paper's formulas, what is learned and saved, precision, base->new, configs, train.py."""
import re

import pytest
import torch
import torch.nn.functional as F

from dpl.clip import tokenize
from dpl.config import get_cfg_default
from dpl.engine import extend_cfg_for_all_trainers
from dpl.engine.errors import UserError
from dpl.project import PROJECT_ROOT
from helpers import (
    build_trainer_in_process,
    check_base_to_new_evaluation,
    check_one_epoch_lowers_training_loss,
    check_only_learnable_tensors_get_gradients_and_are_saved,
    make_tiny_clip,
)

CONFIG = "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"
CLASSNAMES = ["banded", "bumpy_thing", "zigzagged"]
LEARNABLE = ["prompt_learner.ctx", "prompt_learner.meta_net.linear1.bias", "prompt_learner.meta_net.linear1.weight",
             "prompt_learner.meta_net.linear2.bias", "prompt_learner.meta_net.linear2.weight"]


def _model(n_ctx=4, ctx_init="a photo of a", classnames=CLASSNAMES):
    from dpl.prompting import CoCoOpModel, CoCoOpSettings

    return CoCoOpModel(make_tiny_clip(), classnames, CoCoOpSettings(n_ctx=n_ctx, ctx_init=ctx_init))


def _perturb_meta_net(model, seed=1):
    """Non-trivial meta-net weights, so that the per-image shift visibly moves the prompts."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.prompt_learner.meta_net.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


def reference_logits(model, images, classnames, ctx_words="a photo of a"):
    """``logits[b, c] = exp(t) * f_b . g_c(ctx + meta(f_b))``, one image at a time, through CLIP's own modules."""
    clip, learner = model.clip, model.prompt_learner
    net = learner.meta_net
    image_features = F.normalize(clip.encode_image(images).float(), dim=-1)  # [B, E]
    texts = [f"{ctx_words} {name.replace('_', ' ')}." for name in classnames]
    tokens = tokenize(texts)  # [C, 77]
    embedded = clip.token_embedding(tokens)  # [C, 77, D]
    n_ctx = learner.ctx.shape[0]
    rows = []
    for f in image_features:
        bias = F.linear(torch.relu(F.linear(f, net.linear1.weight, net.linear1.bias)),
                        net.linear2.weight, net.linear2.bias)  # [D]
        ctx = (learner.ctx + bias).unsqueeze(0).expand(len(classnames), -1, -1)  # [C, M, D]
        prompts = torch.cat([embedded[:, :1], ctx, embedded[:, 1 + n_ctx:]], dim=1)
        x = clip.transformer((prompts + clip.positional_embedding).permute(1, 0, 2)).permute(1, 0, 2)
        x = clip.ln_final(x)[torch.arange(len(classnames)), tokens.argmax(dim=-1)] @ clip.text_projection
        rows.append(clip.logit_scale.exp() * F.normalize(x, dim=-1) @ f)  # [C]
    return torch.stack(rows)  # [B, C]


# ----- the meta-net and the prompts -----------------------------------------------------------------
def test_meta_net_maps_the_image_embedding_to_the_text_width():
    from dpl.prompting import build_meta_net

    net = build_meta_net(512, 512)  # ViT-B/16: 512 -> 32 -> 512
    assert [name for name, _ in net.named_children()] == ["linear1", "relu", "linear2"]
    assert (net.linear1.in_features, net.linear1.out_features) == (512, 32)
    assert (net.linear2.in_features, net.linear2.out_features) == (32, 512)
    assert build_meta_net(768, 1024).linear1.out_features == 48
    learner = _model().prompt_learner  # tiny CLIP: image embedding 64, text width 128
    assert (learner.meta_net.linear1.in_features, learner.meta_net.linear1.out_features) == (64, 4)
    assert learner.meta_net.linear2.out_features == 128
    assert all(p.dtype == torch.float32 and p.requires_grad for p in learner.meta_net.parameters())


def test_context_starts_from_the_init_words_and_shifts_per_image():
    model = _model()
    learner = model.prompt_learner
    ids = tokenize(["a photo of a"])[0, 1:5]
    assert learner.ctx.shape == (4, 128)
    assert torch.equal(learner.ctx.data, model.clip.token_embedding(ids).detach())
    assert _model(n_ctx=8, ctx_init="").prompt_learner.ctx.shape == (8, 128)
    _perturb_meta_net(model)
    features = F.normalize(torch.randn(5, 64), dim=-1)
    shifted = learner.shifted_context(features)
    assert shifted.shape == (5, 4, 128)
    torch.testing.assert_close(shifted[2], learner.ctx + learner.meta_net(features[2:3]))
    prompts = learner(features)
    assert prompts.shape == (5, len(CLASSNAMES), 77, 128)
    for b in (0, 4):  # [SOS][ctx + shift of image b][class][.][EOS] for every class
        assert torch.equal(prompts[b, :, 1:5], shifted[b].expand(len(CLASSNAMES), -1, -1))
        assert torch.equal(prompts[b, :, :1], learner.prompts.prefix)
        assert torch.equal(prompts[b, :, 5:], learner.prompts.suffix)


# ----- the forward pass and the loss ----------------------------------------------------------------
def test_logits_loss_and_gradients_equal_the_per_image_reference(tmp_path, tiny_clip_path):
    trainer = build_trainer_in_process(tmp_path, tiny_clip_path, "CoCoOp", CONFIG)
    model, classnames = trainer.model, trainer.dm.dataset.classnames
    _perturb_meta_net(model)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, 1])
    trainer.set_model_mode("train")
    logits, losses = trainer.compute_losses(images, labels)
    expected = reference_logits(model, images, classnames)
    assert logits.shape == (3, len(classnames)) and list(losses) == ["loss_ce"]
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    expected_loss = F.cross_entropy(expected, labels)
    assert losses["loss_ce"].item() == pytest.approx(expected_loss.item(), rel=1e-5)

    params = [p for n, p in sorted(model.named_parameters()) if p.requires_grad]
    grads = torch.autograd.grad(losses["loss_ce"], params)
    expected_grads = torch.autograd.grad(expected_loss, params)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)
    assert all(g.abs().sum() > 0 for g in grads)  # the context and every meta-net tensor learn


def test_each_image_is_classified_with_its_own_prompts_in_any_chunking():
    model = _model()
    _perturb_meta_net(model)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        batched = model(images)
        alone = torch.cat([model(images[i:i + 1]) for i in range(4)])
        model.configure_text_encoder(chunk_size=5)  # 12 prompts in chunks that straddle the images
        chunked = model(images)
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched, chunked, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batched[0].softmax(-1), batched[1].softmax(-1))


def test_evaluation_encodes_the_prompts_of_each_batch(tmp_path, tiny_clip_path):
    from dpl.prompting.base import FROZEN_TEXT_CHUNK

    trainer = build_trainer_in_process(tmp_path, tiny_clip_path, "CoCoOp", CONFIG)
    model = trainer.model
    assert model.encode_text() is None  # nothing image-independent for test() to encode once
    # B * C prompts per batch: chunked even when MODEL.TEXT_CHUNK_SIZE is 0, the configured size otherwise
    assert model.text_encoder.chunk_size == FROZEN_TEXT_CHUNK
    images = next(iter(trainer.test_loader))["img"]
    trainer.set_model_mode("eval")
    with torch.no_grad():
        torch.testing.assert_close(trainer.model_inference(images), reference_logits(model, images,
                                   trainer.dm.dataset.classnames), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="depend on each image"):
        model(images, text_features=torch.zeros(4, 64))
    chunked = build_trainer_in_process(tmp_path / "chunked", tiny_clip_path, "CoCoOp", CONFIG,
                                       "MODEL.TEXT_CHUNK_SIZE", "3")
    assert chunked.model.text_encoder.chunk_size == 3


# ----- what is learned, saved and loaded ------------------------------------------------------------
def test_only_the_context_and_the_meta_net_get_gradients_and_are_saved(tmp_path, tiny_clip_path):
    trainer, _ = check_only_learnable_tensors_get_gradients_and_are_saved(
        tmp_path, tiny_clip_path, "CoCoOp", CONFIG, LEARNABLE)
    assert trainer.MODEL_NAME == "prompt_learner"
    assert (tmp_path / "ckpt" / "prompt_learner" / "model.pth.tar-1").is_file()


def test_a_base_checkpoint_loads_into_a_model_of_the_new_classes(tmp_path, tiny_clip_path):
    base = build_trainer_in_process(tmp_path / "base", tiny_clip_path, "CoCoOp", CONFIG,
                                    "DATASET.SUBSAMPLE_CLASSES", "base")
    _perturb_meta_net(base.model)
    base.save_model(0, str(tmp_path / "ckpt"))
    new = build_trainer_in_process(tmp_path / "new", tiny_clip_path, "CoCoOp", CONFIG,
                                   "DATASET.SUBSAMPLE_CLASSES", "new")
    new.load_model(str(tmp_path / "ckpt"), epoch=1)
    assert set(base.dm.dataset.classnames).isdisjoint(new.dm.dataset.classnames)
    saved, loaded = base.model.learnable_state_dict(), new.model.learnable_state_dict()
    assert sorted(loaded) == LEARNABLE and all(torch.equal(saved[k], loaded[k]) for k in LEARNABLE)
    texts = [f"a photo of a {name.replace('_', ' ')}." for name in new.dm.dataset.classnames]
    assert torch.equal(new.model.prompt_learner.tokenized, tokenize(texts))  # rebuilt for the new classes
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(new.model(images), reference_logits(new.model, images, new.dm.dataset.classnames),
                                   rtol=1e-4, atol=1e-4)


def test_base_checkpoint_evaluates_on_new_classes_through_train_py(tmp_path, tiny_clip_path):
    check_base_to_new_evaluation(tmp_path, tiny_clip_path, "CoCoOp", CONFIG, "prompt_learner")


# ----- precision ------------------------------------------------------------------------------------
@pytest.mark.parametrize("prec", ["fp16", "amp", "fp32"])
def test_precision_falls_back_to_fp32_on_cpu(tmp_path, tiny_clip_path, capsys, prec):
    trainer = build_trainer_in_process(tmp_path, tiny_clip_path, "CoCoOp", CONFIG, "TRAINER.COCOOP.PREC", prec)
    assert trainer.precision == "fp32" and trainer.scaler is None
    assert trainer.model.clip.text_projection.dtype == torch.float32
    note = f"PREC {prec} is not supported on cpu: using fp32"
    assert (note in capsys.readouterr().out) == (prec != "fp32")


def test_fp16_frozen_weights_keep_the_prompt_learner_fp32_and_trainable():
    model = _model()
    model.half_frozen_weights()
    assert model.clip.text_projection.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in model.learnable_parameters())
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.learnable_parameters())


# ----- config node and files ------------------------------------------------------------------------
def test_node_has_upstream_keys_and_defaults():
    cfg = extend_cfg_for_all_trainers(get_cfg_default())
    assert dict(cfg.TRAINER.COCOOP) == {"N_CTX": 16, "CTX_INIT": "", "PREC": "fp16"}


def test_a_bad_context_setting_is_one_line_naming_the_key(tmp_path, tiny_clip_path):
    with pytest.raises(UserError, match=r"TRAINER\.COCOOP\.N_CTX is 0: need at least one context token"):
        build_trainer_in_process(tmp_path, tiny_clip_path, "CoCoOp", "CoCoOp/vit_b16_c4_ep10_batch1.yaml",
                                 "TRAINER.COCOOP.N_CTX", "0")


@pytest.mark.parametrize("name", ["vit_b16_c4_ep10_batch1_ctxv1", "vit_b16_c4_ep10_batch1", "vit_b16_c8_ep10_batch1",
                                  "vit_b16_c16_ep10_batch1"])
def test_config_files_merge_and_their_names_tell_the_truth(name):
    cfg = extend_cfg_for_all_trainers(get_cfg_default())
    cfg.merge_from_file(str(PROJECT_ROOT / "configs" / "trainers" / "CoCoOp" / f"{name}.yaml"))
    node = cfg.TRAINER.COCOOP
    assert node.N_CTX == int(re.search(r"_c(\d+)_", name).group(1))
    assert node.CTX_INIT == ("a photo of a" if name.endswith("_ctxv1") else "")
    assert node.PREC == "fp16"
    assert (cfg.OPTIM.NAME, cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, cfg.OPTIM.LR_SCHEDULER) == ("sgd", 0.002, 10, "cosine")
    assert (cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.WARMUP_TYPE, cfg.OPTIM.WARMUP_CONS_LR) == (1, "constant", 1e-5)
    assert (cfg.DATALOADER.TRAIN_X.BATCH_SIZE, cfg.DATALOADER.TEST.BATCH_SIZE, cfg.TRAIN.PRINT_FREQ) == (1, 100, 20)
    assert cfg.MODEL.BACKBONE.NAME == "ViT-B/16" and tuple(cfg.INPUT.SIZE) == (224, 224)
    assert cfg.INPUT.INTERPOLATION == "bicubic"
    assert list(cfg.INPUT.TRANSFORMS) == ["random_resized_crop", "random_flip", "normalize"]


def test_the_protocol_scripts_use_the_ctxv1_config():
    from dpl.protocols.methods import read_method

    method = read_method(PROJECT_ROOT / "scripts" / "cocoop")
    assert method.trainer == "CoCoOp"
    for protocol in ("BASE2NEW", "XD", "FEWSHOT", "LONGTAIL"):
        assert method.config_name(protocol) == "vit_b16_c4_ep10_batch1_ctxv1"
    for script in ("base2new_train", "base2new_test", "xd_train", "xd_test", "few_shot", "long_tail",
                   "long_tail_test"):
        text = (PROJECT_ROOT / "scripts" / "cocoop" / f"{script}.sh").read_text()
        assert 'source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"' in text and f'{script} "$@"' in text


# ----- end to end -----------------------------------------------------------------------------------
def test_one_epoch_through_train_py_lowers_the_training_loss(tmp_path, tiny_clip_path):
    check_one_epoch_lowers_training_loss(tmp_path, tiny_clip_path, "CoCoOp", CONFIG, "0.05", [], "prompt_learner")
