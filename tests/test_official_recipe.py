"""Switches to the official DroPLe code's choices (``TRAINER.DPL``): each one's effect, its default (this
project's choice, unchanged), and the ``_official`` config setting the official value."""
import math

import pytest
import torch
from PIL import Image

import dpl.tools.train as train
from dpl.clip.prompted import LayerHook, run_blocks
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
    assert (node.RES_DENOMINATOR, node.PROMPT_INIT, node.LEARNABLE_LOGIT_SCALE, node.PERTURB_ORDER) == (
        "official", "kaiming_uniform", True, "before_prompts")
    inp = train.setup_cfg(args).INPUT
    assert (list(inp.TRANSFORMS), inp.TEACHER_VIEW) == (["center_crop", "patch_randaugment", "normalize"], "clean")
    assert (inp.PATCH_RANDAUGMENT_N, inp.PATCH_RANDAUGMENT_M, inp.PATCH_RANDAUGMENT_PATCH) == (2, 7, 16)
    default = train.setup_cfg(train.build_parser().parse_args(["--trainer", "DropoutPrompt"])).TRAINER.DPL
    assert (default.MAG_INIT_A, default.RES_DENOMINATOR, default.PROMPT_INIT, default.LEARNABLE_LOGIT_SCALE,
            default.PERTURB_ORDER) == (0.0, "one_minus_lambda", "normal", False, "after_prompts")


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
    torch.testing.assert_close(trainer.extra_train_inputs(batch)["teacher_image_features"], out["teacher_image_features"])
    del batch["index"]  # without dataset indices there is nothing to cache by: the teacher gets the images
    assert torch.equal(trainer.extra_train_inputs(batch)["teacher_images"], teacher)
    default = build_trainer_in_process(tmp_path / "same", tiny_clip_path, "DropoutPrompt", CONFIG)
    assert "img_teacher" not in next(iter(default.train_loader_x)) and default.extra_train_inputs({}) == {}



def test_clean_view_teacher_features_are_computed_once_per_training_image(tmp_path, tiny_clip_path, monkeypatch):
    trainer = build_trainer_in_process(tmp_path, tiny_clip_path, "DropoutPrompt", CONFIG, "INPUT.TEACHER_VIEW", "clean",
                                       "DATALOADER.TRAIN_X.BATCH_SIZE", "4")
    model = trainer.model.train()
    first, second = [batch for batch, _ in zip(trainer.train_loader_x, range(2))]
    encode, encoded = model.zero_shot_image_features, []
    monkeypatch.setattr(model, "zero_shot_image_features", lambda images: encoded.append(len(images)) or encode(images))

    features = trainer.extra_train_inputs(first)["teacher_image_features"]
    assert encoded == [4]  # a fresh batch is encoded whole: the first epoch computes what it always did
    assert torch.equal(features, encode(first["img_teacher"]))
    assert torch.equal(trainer.extra_train_inputs(first)["teacher_image_features"], features) and encoded == [4]

    mixed = {key: torch.cat([first[key][:2], second[key][:2]]) for key in ("index", "img_teacher")}
    features = trainer.extra_train_inputs(mixed)["teacher_image_features"]
    assert encoded == [4, 2]  # only the two images not seen before
    torch.testing.assert_close(features, encode(mixed["img_teacher"]))  # same numbers up to batch-size rounding
    assert trainer.teacher_features.num_filled == 6
    assert trainer.teacher_features.key["weights_sha256"] == trainer.weights_info.sha256

    trainer.forward_backward(first)  # the training step takes the cached features
    assert encoded == [4, 2]
    # a checkpoint keeps the cache: the resumed run reuses the very numbers (a fresh encoding in another batch
    # composition may differ in the last bits), so it continues exactly
    state = trainer.get_trainer_state()["teacher_features"]
    resumed = build_trainer_in_process(tmp_path / "resumed", tiny_clip_path, "DropoutPrompt", CONFIG,
                                       "INPUT.TEACHER_VIEW", "clean", "DATALOADER.TRAIN_X.BATCH_SIZE", "4")
    resumed.set_trainer_state(dict(resumed.get_trainer_state(), teacher_features=state))
    monkeypatch.setattr(resumed.model, "zero_shot_image_features", lambda images: pytest.fail("encoded again"))
    assert torch.equal(resumed.extra_train_inputs(mixed)["teacher_image_features"], features)
    assert resumed.teacher_features.num_filled == 6
    assert len(state) == 1  # one cache per process
    other = dict(state[0], key=dict(state[0]["key"], weights_sha256="0" * 64))  # another CLIP's are not restored
    assert not resumed.teacher_features.load_state_dict(other)

    default = build_trainer_in_process(tmp_path / "same", tiny_clip_path, "DropoutPrompt", CONFIG)
    assert default.teacher_features is None  # the student's augmented view changes every epoch: nothing to cache
    assert "teacher_features" not in default.get_trainer_state()


def test_a_teacher_view_for_a_trainer_without_a_teacher_is_refused(tmp_path, tiny_clip_path):
    with pytest.raises(UserError, match="INPUT.TEACHER_VIEW is 'clean', but CoOp has no frozen image teacher"):
        build_trainer_in_process(tmp_path, tiny_clip_path, "CoOp", "CoOp/vit_b16_ep50.yaml",
                                 "INPUT.TEACHER_VIEW", "clean")
    with pytest.raises(ValueError, match=r"INPUT.TEACHER_VIEW is 'both': use one of \['same', 'clean'\]"):
        build_trainer_in_process(tmp_path / "b", tiny_clip_path, "DropoutPrompt", CONFIG, "INPUT.TEACHER_VIEW", "both")


class AddToEveryToken(LayerHook):
    """Marks what a hook changed: +100 on every token, after each block."""

    def __init__(self, before_prompts):
        self.before_prompts = before_prompts
        self.seen = []

    def __call__(self, x, layer, layout, attn):
        self.seen.append(x.clone())
        return x + 100.0


class Recorder(torch.nn.Module):
    """An identity block that records its input ([L, N, D])."""

    def __init__(self, inputs):
        super().__init__()
        self.inputs = inputs

    def forward(self, x):
        self.inputs.append(x.clone())
        return x


@pytest.mark.parametrize("before_prompts", [False, True])
def test_in_the_official_order_the_next_prompts_overwrite_what_the_hook_did_to_the_prompt_positions(before_prompts):
    inputs = []
    blocks = [Recorder(inputs) for _ in range(3)]
    prompts = torch.tensor([10.0, 20.0])  # the deep prompts of blocks 1 and 2, at position 1

    def place(h, block_index):  # h: [L, N, D]; positions 0 and 2 are other tokens
        if not 1 <= block_index <= 2:
            return h
        return torch.cat([h[:1], torch.full_like(h[1:2], prompts[block_index - 1]), h[2:]])

    hook = AddToEveryToken(before_prompts)
    out = run_blocks(blocks, torch.zeros(3, 1, 1), place, hook, layout=None)
    at_prompt = [inputs[block][1].item() for block in (1, 2)]  # what blocks 1 and 2 receive at the prompt position
    seen_at_prompt = [hook.seen[layer][0, 1].item() for layer in (0, 1)]  # what the hook read there after block l
    if before_prompts:  # the official order: the next prompts overwrite the hook's work at their positions
        assert at_prompt == [10.0, 20.0]
        assert seen_at_prompt == [0.0, 10.0]  # block l's own output, before block l + 1's prompts
        assert out[1].item() == 120.0  # after the last prompted layer, the hook's work stays
    else:  # ours: the hook works on what block l + 1 receives, its fresh prompts included
        assert at_prompt == [110.0, 120.0]
        assert seen_at_prompt == [10.0, 20.0]
        assert out[1].item() == 220.0
    assert [inputs[block][0].item() for block in (1, 2)] == [100.0, 200.0]  # other tokens: the same in both


def test_dropout_prompt_uses_the_official_order_when_asked_and_trains(tmp_path, tiny_clip_path):
    trainer = build_trainer_in_process(tmp_path, tiny_clip_path, "DropoutPrompt", CONFIG,
                                       "TRAINER.DPL.PERTURB_ORDER", "before_prompts")
    model = trainer.model.train()
    text_hook, vision_hook = model.make_hooks()
    assert text_hook.before_prompts and vision_hook.before_prompts
    summary = trainer.forward_backward({"img": torch.rand(4, 3, 32, 32), "label": torch.tensor([0, 1, 0, 1])})
    assert all(math.isfinite(value) for value in summary.values())
    default = build_trainer_in_process(tmp_path / "d", tiny_clip_path, "DropoutPrompt", CONFIG).model.train()
    assert not default.make_hooks()[0].before_prompts
