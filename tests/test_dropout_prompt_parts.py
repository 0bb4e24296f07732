"""Unit tests of DropoutPrompt's method parts (pure tensor code, docs/METHOD.md §4-§9, §16)."""
import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dpl import drople as parts
from dpl.clip import LayerHook


def make_layout(modality, global_index, eligible):
    """The fields of dpl.clip's TokenLayout that the parts read."""
    return SimpleNamespace(
        modality=modality,
        global_index=torch.as_tensor(global_index, dtype=torch.long),
        prompt_index=slice(1, 3),
        eligible=torch.as_tensor(eligible, dtype=torch.bool),
        active_length=None,
    )


# A known 2-head attention map over 4 vision tokens (CLS = 0); rows sum to 1.
ATTN = torch.tensor(
    [
        [[0.1, 0.2, 0.3, 0.4], [0.5, 0.1, 0.3, 0.1], [0.2, 0.6, 0.1, 0.1], [0.4, 0.1, 0.2, 0.3]],
        [[0.4, 0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4], [0.3, 0.3, 0.3, 0.1], [0.7, 0.1, 0.1, 0.1]],
    ]
)[None]  # [1, 2, 4, 4]
MAG_ATTN = torch.tensor([[0.1, 0.5, 0.2, 0.2], [0.4, 0.1, 0.1, 0.4]])[None]  # [1, K=2, 4]
# By hand (tokens 1, 2, 3; CLS removed from queries and keys, diagonal masked):
#   S_self: token 1 -> mean(max(.3,.1), max(.3,.4)) = .35; token 2 -> mean(.6, .3) = .45; token 3 -> mean(.2, .1) = .15
#   S_cls:  row 0 averaged over heads -> .15, .25, .35;   S_mag: column max -> .5, .2, .4
HAND_SELF = torch.tensor([0.0, 0.35, 0.45, 0.15]) / 0.95
HAND_CLS = torch.tensor([0.0, 0.15, 0.25, 0.35]) / 0.75
HAND_MAG = torch.tensor([0.0, 0.5, 0.2, 0.4]) / 1.1


def test_importance_terms_equal_hand_computed_values():
    layout = make_layout("vision", [0], [[False, True, True, True]])
    scored = parts.scored_positions(layout, 4)
    assert scored.tolist() == [[False, True, True, True]]
    torch.testing.assert_close(parts.l1_normalise(parts.self_attention_score(ATTN, scored), scored)[0], HAND_SELF)
    torch.testing.assert_close(
        parts.l1_normalise(parts.global_attention_score(ATTN, layout.global_index, scored), scored)[0], HAND_CLS
    )
    torch.testing.assert_close(parts.l1_normalise(parts.alignment_score(MAG_ATTN, scored), scored)[0], HAND_MAG)
    full = parts.token_importance(("self", "cls", "mag"), ATTN, MAG_ATTN, layout.global_index, scored)
    torch.testing.assert_close(full[0], (HAND_SELF + HAND_CLS + HAND_MAG) / 3)
    no_mag = parts.token_importance(("self", "cls"), ATTN, None, layout.global_index, scored)
    torch.testing.assert_close(no_mag[0], (HAND_SELF + HAND_CLS) / 2)
    # invariants (§16): each term sums to 1, I in [0, 1]
    assert math.isclose(float(full.sum()), 1.0, rel_tol=1e-6)
    assert bool((full >= 0).all() and (full <= 1).all())


def test_text_importance_uses_eos_and_ignores_padding():
    # 6 text tokens: SOS, 2 prompts, a class token, EOS at 4, padding at 5; causal attention.
    torch.manual_seed(0)
    length, eos = 6, 4
    causal = torch.ones(length, length).tril().bool()
    logits = torch.randn(1, 2, length, length).masked_fill(~causal, -math.inf)
    attn = logits.softmax(-1)
    attn[..., 5, :] = 0.0  # make the padding row and column large to show they are ignored
    attn[..., 5, 0:5] = 0.2
    layout = make_layout("text", [eos], [[True, True, True, False, False, False]])
    scored = parts.scored_positions(layout, length)
    assert scored.tolist() == [[True, True, True, True, False, False]]
    cls = parts.global_attention_score(attn, layout.global_index, scored)[0]
    torch.testing.assert_close(cls[:4], attn[0, :, eos, :4].mean(0))
    assert cls[4:].tolist() == [0.0, 0.0]
    self_score = parts.self_attention_score(attn, scored)[0]
    assert self_score[0] == 0.0  # SOS attends only to itself under the causal mask
    # token 3 may use keys 0..2 only (not itself, not EOS)
    torch.testing.assert_close(self_score[3], attn[0, :, 3, :3].amax(-1).mean())
    assert self_score[4:].tolist() == [0.0, 0.0]


def test_text_active_length_comes_from_the_host_when_the_encoder_knows_it(tiny_clip):
    """Class prompts carry the end of their last EOS on the host, so a training step's text hook never reads it
    back from the device; without it the layout's EOS positions give the same number."""
    from dpl.prompting import DeepPromptSettings, IVLPModel

    model = IVLPModel(copy.deepcopy(tiny_clip), ["cat", "big red fire truck"], DeepPromptSettings(2, 2, 2, 2, ""))
    tokenized = model.prompt_learner.tokenized
    assert model.prompt_learner.prompts.active_length == int(tokenized.argmax(dim=-1).max()) + 1

    class Layouts(LayerHook):
        seen = []

        def __call__(self, x, layer, layout, attn):
            self.seen.append(layout)
            return x

    model.encode_text(hook=Layouts())
    layout = Layouts.seen[0]
    assert layout.active_length == model.prompt_learner.prompts.active_length
    assert parts.active_length(layout, 77) == layout.active_length
    fake = copy.copy(layout)
    fake.active_length = 5  # the host value is used as given: nothing is read from global_index
    assert parts.active_length(fake, 77) == 5
    fake.active_length = None
    assert parts.active_length(fake, 77) == layout.active_length


def test_probabilities_bounded_and_monotone_in_importance():
    torch.manual_seed(1)
    importance = torch.rand(5, 12)
    scored = torch.ones(5, 12, dtype=torch.bool)
    scored[:, 0] = False
    p = parts.importance_to_probability(importance, scored, p_min=0.1, p_max=0.5)
    inside = p[scored]
    assert bool((inside >= 0.1 - 1e-6).all() and (inside <= 0.5 + 1e-6).all())
    assert p[:, 0].tolist() == [0.0] * 5
    for row in range(5):  # rows only: strictly decreasing p along increasing importance
        order = importance[row, 1:].argsort()
        assert bool((p[row, 1:][order].diff() < 0).all())
        torch.testing.assert_close(p[row, 1:][order[-1]], torch.tensor(0.1))
        torch.testing.assert_close(p[row, 1:][order[0]], torch.tensor(0.5))
    # a constant importance (zero range) divides by 1: every scored token gets P_MAX
    flat = parts.importance_to_probability(torch.full((1, 4), 0.3), torch.ones(1, 4, dtype=torch.bool), 0.1, 0.5)
    torch.testing.assert_close(flat, torch.full((1, 4), 0.5))


@pytest.mark.parametrize("importance", ["full", "no_self", "no_cls", "no_mag", "uniform"])
@pytest.mark.parametrize("perturbation", ["gaussian", "zero"])
def test_ineligible_tokens_never_change(importance, perturbation):
    torch.manual_seed(2)
    n, length, width = 3, 4, 8
    x = torch.randn(n, length, width)
    eligible = torch.tensor([[False, True, False, True]] * n)
    layout = make_layout("vision", [0] * n, eligible)
    dropout = parts.TokenDropout(importance=importance, perturbation=perturbation, p_min=0.9, p_max=0.95,
                                 sigma=5.0, uniform_p=0.9)
    out = dropout(x, layout, ATTN.expand(n, -1, -1, -1), MAG_ATTN.expand(n, -1, -1))
    assert torch.equal(out[~eligible], x[~eligible])
    assert not torch.equal(out[eligible], x[eligible])  # with these rates something eligible changed


@pytest.mark.parametrize(
    "settings",
    [
        dict(perturbation="gaussian", sigma=0.0),
        dict(perturbation="gaussian", p_min=0.0, p_max=0.0, sigma=1.0),
        dict(perturbation="zero", p_min=0.0, p_max=0.0),
        dict(perturbation="none", p_min=0.5, p_max=0.9, sigma=1.0),
    ],
)
def test_no_op_settings_leave_tokens_unchanged(settings):
    torch.manual_seed(3)
    x = torch.randn(2, 4, 8)
    layout = make_layout("vision", [0, 0], [[False, True, True, True]] * 2)
    out = parts.TokenDropout(**settings)(x, layout, ATTN.expand(2, -1, -1, -1), MAG_ATTN.expand(2, -1, -1))
    assert torch.equal(out, x)


@pytest.mark.parametrize("dense_noise", [False, True])  # True: the sync-free draw CUDA uses
def test_gaussian_perturbation_is_multiplicative_noise_on_dropped_tokens(dense_noise):
    torch.manual_seed(4)
    x = torch.randn(2000, 3, 16)
    dropped = torch.tensor([True, False, True]).expand(2000, 3)
    out = parts.perturb_tokens(x, dropped, dropped.float(), "gaussian", sigma=0.1, dense_noise=dense_noise)
    assert torch.equal(out[:, 1], x[:, 1])
    factor = out[:, [0, 2]] / x[:, [0, 2]]
    assert abs(float(factor.mean()) - 1.0) < 0.01 and abs(float(factor.std()) - 0.1) < 0.01
    # masks covering only the leading positions leave the rest alone
    for mode in ("gaussian", "zero"):
        short = parts.perturb_tokens(x, dropped[:, :2], dropped[:, :2].float() * 0.5, mode, sigma=0.1,
                                     dense_noise=dense_noise)
        assert torch.equal(short[:, 2], x[:, 2]) and not torch.equal(short[:, 0], x[:, 0])


def test_zero_mode_empirical_drop_rate_matches_probability():
    torch.manual_seed(5)
    n, length = 20000, 5
    row = torch.tensor([0.0, 0.1, 0.4, 0.7, 1.0])  # importance of tokens 1..4 (token 0 is CLS)
    layout = make_layout("vision", [0] * n, [[False, True, True, True, True]] * n)
    dropout = parts.TokenDropout(perturbation="zero", p_min=0.1, p_max=0.5)
    scored = parts.scored_positions(layout, length)
    probability = parts.importance_to_probability(row.expand(n, -1), scored, 0.1, 0.5) * layout.eligible
    dropped = parts.draw_drops(probability)
    x = torch.ones(n, length, 4)
    out = parts.perturb_tokens(x, dropped, probability, dropout.perturbation, dropout.sigma)
    zeroed = (out == 0).all(-1).float().mean(0)  # [L]
    expected = probability[0]
    tolerance = 4 * torch.sqrt(expected * (1 - expected) / n) + 1e-6  # 4 binomial standard errors
    assert bool(((zeroed - expected).abs() <= tolerance).all()), (zeroed, expected)
    # kept eligible tokens carry 1 / (1 - p) (inverted dropout); CLS untouched
    kept = ~dropped
    torch.testing.assert_close(out[..., 0][kept], (1 / (1 - probability))[kept])
    assert torch.equal(out[:, 0], x[:, 0])


def test_token_dropout_rejects_bad_settings():
    with pytest.raises(ValueError, match="^importance: use one of"):
        parts.TokenDropout(importance="random")
    with pytest.raises(ValueError, match="^p_min: need 0 <= p_min <= p_max"):
        parts.TokenDropout(p_min=0.6, p_max=0.5)
    with pytest.raises(ValueError, match="^p_max: 'zero' rescales"):
        parts.TokenDropout(perturbation="zero", p_max=1.0)


def test_mag_attention_masks_padding_and_loss_matches_cosine_formula():
    torch.manual_seed(6)
    mag = parts.AlignmentGuidance(num_tokens=5, vision_width=12, text_width=8, temperature=1.0)
    assert mag.vision_proj.in_features == 12 and mag.vision_proj.out_features == 8
    text = torch.randn(3, 6, 8)
    attended = torch.tensor([[True] * 4 + [False] * 2] * 3)
    attention, features = mag(text, "text", attended)
    assert attention.shape == (3, 5, 6) and features.shape == (3, 5, 8)
    assert torch.equal(attention[..., 4:], torch.zeros(3, 5, 2))
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 5))
    projected = mag.text_proj(text)
    expected_attention = (mag.tokens @ projected.transpose(1, 2))[..., :4].softmax(-1)  # tau = 1, no 1/sqrt(d)
    torch.testing.assert_close(attention[..., :4], expected_attention)
    torch.testing.assert_close(features, attention @ projected)
    # the hook projects text only up to EOS: the same features as the masked full sequence
    cropped_attention, cropped_features = mag(text[:, :4], "text", attended[:, :4])
    torch.testing.assert_close(cropped_attention, attention[..., :4])
    torch.testing.assert_close(cropped_features, features)

    vision = [torch.randn(2, 5, 8), torch.randn(2, 5, 8)]
    text_layers = [torch.randn(3, 5, 8), torch.randn(3, 5, 8), torch.randn(3, 5, 8)]
    labels = torch.tensor([2, 0])
    loss = parts.mag_alignment_loss(vision, text_layers, labels)
    by_hand = torch.stack([
        (1 - F.cosine_similarity(vision[i][b, q], text_layers[i][labels[b], q], dim=0)) / 2
        for i in range(2) for b in range(2) for q in range(5)
    ]).mean()
    torch.testing.assert_close(loss, by_hand)
    aligned = [t[labels] for t in text_layers[:2]]
    torch.testing.assert_close(parts.mag_alignment_loss(aligned, text_layers, labels), torch.tensor(0.0),
                               atol=1e-6, rtol=0)


def test_residual_entropy_equals_formula_and_its_gradient_raises_entropy():
    torch.manual_seed(7)
    img_d, img_o = F.normalize(torch.randn(4, 6), dim=-1), F.normalize(torch.randn(4, 6), dim=-1)
    txt_d, txt_o = F.normalize(torch.randn(3, 6), dim=-1), F.normalize(torch.randn(3, 6), dim=-1)
    scale, lam = 10.0, 0.2
    h_v, h_t = parts.residual_entropies(img_d, img_o, txt_d, txt_o, scale, lam)
    r_v, r_t = (img_d - lam * img_o) / (1 - lam), (txt_d - lam * txt_o) / (1 - lam)
    p_v, p_t = (scale * r_v @ txt_o.T).softmax(-1), (scale * img_o @ r_t.T).softmax(-1)
    torch.testing.assert_close(h_v, (-(p_v * torch.log(p_v + 1e-5)).sum(-1)).mean())
    torch.testing.assert_close(h_t, (-(p_t * torch.log(p_t + 1e-5)).sum(-1)).mean())
    torch.testing.assert_close(parts.residual_entropy_loss(h_v, h_t, 0.05), -0.05 * (h_v + h_t))
    # lambda = 0: the residual is the prompted feature itself
    torch.testing.assert_close(parts.residual_features(img_d, img_o, 0.0), img_d)

    # one gradient step on the loss (w.r.t. the prompted features) increases both entropies
    img_p = img_d.clone().requires_grad_(True)
    txt_p = txt_d.clone().requires_grad_(True)
    loss = parts.residual_entropy_loss(*parts.residual_entropies(img_p, img_o, txt_p, txt_o, scale, lam), 0.05)
    loss.backward()
    with torch.no_grad():
        h_v2, h_t2 = parts.residual_entropies(img_p - 0.5 * img_p.grad, img_o, txt_p - 0.5 * txt_p.grad,
                                              txt_o, scale, lam)
    assert float(h_v2) > float(h_v) and float(h_t2) > float(h_t)


def test_lambda_schedule():
    assert parts.residual_lambda(0, 20, 0.1) == 0.0
    assert round(parts.residual_lambda(10, 20, 0.1), 4) == 0.0739
    table = {1: 0.0262, 2: 0.0405, 5: 0.0609, 15: 0.0799, 19: 0.0829}  # docs/METHOD.md §9, E = 20
    assert {e: round(parts.residual_lambda(e, 20, 0.1), 4) for e in table} == table
    assert [round(parts.residual_lambda(e, 5, 0.1), 4) for e in range(5)] == [0.0, 0.0561, 0.0701, 0.0768, 0.0808]
    assert parts.residual_lambda(0, 20, 0.1, fixed=True) == 0.1
    with pytest.raises(ValueError, match="positive number of epochs, got max_epoch=0"):
        parts.residual_lambda(0, 0, 0.1)


# --------------------------------------------------------------------------------------------------
# The hook inside the real prompted encoders (tiny CLIP)
# --------------------------------------------------------------------------------------------------
def _capture_block_input(blocks, index):
    """Register a pre-hook recording the [L, N, D] input of ``blocks[index]``; returns (store, handle)."""
    store = {}
    handle = blocks[index].register_forward_pre_hook(lambda module, args: store.__setitem__("x", args[0].detach()))
    return store, handle


def _text_inputs(clip_model, n_ctx=4):
    from dpl.clip import build_class_prompts

    torch.manual_seed(8)
    prompts = build_class_prompts(clip_model, ["cat", "golden retriever", "oak tree"], n_ctx=n_ctx)
    ctx = torch.randn(n_ctx, clip_model.transformer.width) * 0.02
    deep = torch.randn(2, n_ctx, clip_model.transformer.width) * 0.02
    return prompts, prompts.assemble(ctx), deep


def _always_drop(**kwargs):
    return parts.TokenDropout(importance="full", perturbation="gaussian", p_min=1.0, p_max=1.0, sigma=0.5, **kwargs)


def test_text_perturbation_reaches_next_block_after_deep_prompt_replacement(tiny_clip):
    from dpl.clip import PromptedTextEncoder

    encoder = PromptedTextEncoder(tiny_clip)
    prompts, embeddings, deep = _text_inputs(tiny_clip)
    mag = parts.AlignmentGuidance(8, tiny_clip.visual.transformer.width, tiny_clip.transformer.width)
    store, handle = _capture_block_input(tiny_clip.transformer.resblocks, 1)
    try:
        encoder(embeddings, prompts.tokenized, deep)
        clean = store["x"].permute(1, 0, 2)  # [C, L, D]
        hook = parts.TokenDropoutHook(_always_drop(), drop_layers={0}, mag=mag)
        encoder(embeddings, prompts.tokenized, deep, hook=hook)
        perturbed = store["x"].permute(1, 0, 2)
    finally:
        handle.remove()
    # without the hook block 1 sees the fresh deep prompts; with it, those prompts arrive perturbed
    torch.testing.assert_close(clean[:, 1:5], deep[0].expand(3, -1, -1))
    assert bool((perturbed[:, :5] != clean[:, :5]).all(-1).all())  # SOS + the 4 prompt positions
    assert torch.equal(perturbed[:, 5:], clean[:, 5:])  # class tokens, '.', EOS, padding never change


def test_vision_perturbation_reaches_next_block_and_spares_cls(tiny_clip):
    from dpl.clip import PromptedVisionEncoder

    encoder = PromptedVisionEncoder(tiny_clip)
    torch.manual_seed(9)
    images = torch.randn(2, 3, 32, 32)
    prompts = torch.randn(3, 4, tiny_clip.visual.transformer.width) * 0.02
    mag = parts.AlignmentGuidance(8, tiny_clip.visual.transformer.width, tiny_clip.transformer.width)
    store, handle = _capture_block_input(tiny_clip.visual.transformer.resblocks, 2)
    try:
        encoder(images, prompts)
        clean = store["x"].permute(1, 0, 2)
        features = encoder(images, prompts, hook=parts.TokenDropoutHook(_always_drop(), drop_layers={1}, mag=mag))
        perturbed = store["x"].permute(1, 0, 2)
    finally:
        handle.remove()
    torch.testing.assert_close(clean[:, -4:], prompts[2].expand(2, -1, -1))
    assert torch.equal(perturbed[:, 0], clean[:, 0])  # CLS never perturbed
    assert bool((perturbed[:, 1:] != clean[:, 1:]).all(-1).all())  # patches and fresh prompts perturbed
    assert not torch.allclose(features, encoder(images, prompts))


def test_hook_collects_mag_features_per_layer_across_text_chunks(tiny_clip):
    from dpl.clip import PromptedTextEncoder

    prompts, embeddings, deep = _text_inputs(tiny_clip)
    mag = parts.AlignmentGuidance(8, tiny_clip.visual.transformer.width, tiny_clip.transformer.width)
    off = parts.TokenDropout(perturbation="none")
    whole = parts.TokenDropoutHook(off, mag=mag, mag_layers={0, 1, 2})
    PromptedTextEncoder(tiny_clip)(embeddings, prompts.tokenized, deep, hook=whole)
    chunked = parts.TokenDropoutHook(off, mag=mag, mag_layers={0, 1, 2})
    PromptedTextEncoder(tiny_clip, chunk_size=2)(embeddings, prompts.tokenized, deep, hook=chunked)
    assert [f.shape for f in whole.mag_features] == [torch.Size([3, 8, tiny_clip.transformer.width])] * 3
    for a, b in zip(whole.mag_features, chunked.mag_features):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("detach", [False, True])
def test_mag_loss_gradients_reach_bridge_tokens_and_prompts_unless_detached(tiny_clip, detach):
    from dpl.clip import PromptedTextEncoder, PromptedVisionEncoder

    tiny_clip = copy.deepcopy(tiny_clip).requires_grad_(False)  # frozen, as load_clip returns it

    prompts, embeddings, deep = _text_inputs(tiny_clip)
    ctx = deep.clone().requires_grad_(True)
    visual = (torch.randn(3, 4, tiny_clip.visual.transformer.width) * 0.02).requires_grad_(True)
    mag = parts.AlignmentGuidance(8, tiny_clip.visual.transformer.width, tiny_clip.transformer.width)
    off = parts.TokenDropout(perturbation="none")
    text_hook = parts.TokenDropoutHook(off, mag=mag, mag_layers={1, 2}, detach_mag=detach)
    vision_hook = parts.TokenDropoutHook(off, mag=mag, mag_layers={1, 2}, detach_mag=detach)
    PromptedTextEncoder(tiny_clip)(embeddings, prompts.tokenized, ctx, hook=text_hook)
    PromptedVisionEncoder(tiny_clip)(torch.randn(2, 3, 32, 32), visual, hook=vision_hook)
    loss = parts.mag_alignment_loss(vision_hook.mag_features, text_hook.mag_features, torch.tensor([0, 2]))
    loss.backward()
    for param in (mag.tokens, mag.vision_proj.weight, mag.text_proj.weight):
        assert param.grad is not None and float(param.grad.abs().sum()) > 0
    assert (ctx.grad is None) == detach and (visual.grad is None) == detach
