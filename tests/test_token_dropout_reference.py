"""The per-sample reference of importance-weighted token dropout (``dpl.bench.token_dropout``) against our
batched ``TokenDropout``: same probabilities, same tokens perturbed. Our random draws are never injected,
so these checks hold however ``perturb_tokens`` consumes random numbers."""
import pytest
import torch

from dpl.bench.token_dropout import (N_CTX, bench_mag, layer_inputs, per_sample_mag, reference_perturb,
                                     reference_token_dropout)
from dpl.drople import TokenDropout, attended_positions, perturb_tokens

COUNTS = {"vision": 3, "text": 6}


def random_mag_attention(layout, count, length, seed):
    """[N, K, L] softmax over the positions MAG may attend (text: up to EOS), 0 elsewhere."""
    generator = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(count, 64, length, generator=generator)
    return logits.masked_fill(~attended_positions(layout, length)[:, None, :], -torch.inf).softmax(dim=-1)


def fixed_mag(mag_attn):
    """``mag_attention`` for the reference that returns sequence i's row of a precomputed [N, K, L]."""
    return lambda i, tokens: mag_attn[i, :, :tokens.shape[0]]


def eligible_changed(out, x):
    return (out != x).any(dim=-1)  # [N, L]


@pytest.mark.parametrize("modality", ["vision", "text"])
def test_reference_probabilities_equal_ours(modality):
    inputs = layer_inputs(modality, COUNTS[modality], seed=1)
    x, attn, layout = inputs["x"], inputs["attn"], inputs["layout"]
    if modality == "text":
        assert len(set(layout.global_index.tolist())) > 2  # several EOS positions
    mag_attn = random_mag_attention(layout, x.shape[0], x.shape[1], seed=2)
    dropout = TokenDropout(p_min=0.1, p_max=0.5)
    ours = dropout.probability(layout, attn, mag_attn, x.shape[1])
    _, reference = reference_token_dropout(x, attn, fixed_mag(mag_attn), dropout, modality, inputs["tokenized"], N_CTX)
    torch.testing.assert_close(reference, ours, rtol=0, atol=1e-6)
    assert torch.equal(reference > 0, layout.eligible)  # p_min > 0: exactly the eligible tokens can be dropped


@pytest.mark.parametrize("modality", ["vision", "text"])
def test_reference_with_per_sample_mag_equals_ours_with_batched_mag(modality):
    """The timed reference computes MAG attention sequence by sequence (text: up to its EOS): same result."""
    inputs = layer_inputs(modality, COUNTS[modality], seed=3)
    x, attn, layout = inputs["x"], inputs["attn"], inputs["layout"]
    mag, dropout = bench_mag(seed=4), TokenDropout()
    with torch.no_grad():
        mag_attn, _ = mag(x, modality, attended_positions(layout, x.shape[1]))
        ours = dropout.probability(layout, attn, mag_attn, x.shape[1])
        _, reference = reference_token_dropout(x, attn, per_sample_mag(mag, modality), dropout, modality,
                                               inputs["tokenized"], N_CTX)
    torch.testing.assert_close(reference, ours, rtol=0, atol=1e-6)


@pytest.mark.parametrize("modality", ["vision", "text"])
def test_fixed_mask_perturbs_the_same_tokens_with_noise_of_scale_sigma(modality):
    inputs = layer_inputs(modality, COUNTS[modality], seed=5)
    x, attn, layout = inputs["x"], inputs["attn"], inputs["layout"]
    generator = torch.Generator().manual_seed(6)
    dropped = (torch.rand(x.shape[:2], generator=generator) < 0.5) & layout.eligible  # [N, L]
    noise = torch.randn(x.shape, generator=generator)
    dropout = TokenDropout(sigma=0.05)
    mag_attn = random_mag_attention(layout, x.shape[0], x.shape[1], seed=7)
    reference, probability = reference_token_dropout(x, attn, fixed_mag(mag_attn), dropout, modality,
                                                     inputs["tokenized"], N_CTX, dropped=dropped, noise=noise)
    expected = torch.where(dropped[..., None], x * (1.0 + dropout.sigma * noise), x)
    assert torch.equal(reference, expected)
    ours = perturb_tokens(x, dropped, probability, "gaussian", dropout.sigma)
    assert torch.equal(eligible_changed(ours, x), dropped) and torch.equal(eligible_changed(reference, x), dropped)
    # sigma-independent in form: the dropped tokens' factor - 1 has mean ~0 and std ~sigma in both
    for out in (ours, reference):
        factor = out[dropped] / x[dropped] - 1.0
        assert factor.numel() > 2000
        assert abs(float(factor.mean())) < 0.1 * dropout.sigma
        assert abs(float(factor.std()) / dropout.sigma - 1.0) < 0.1


@pytest.mark.parametrize("modality", ["vision", "text"])
@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_drawn_path_drops_all_or_no_eligible_tokens_like_ours(modality, rate):
    """With p_min = p_max the draw is certain: both change exactly the eligible tokens (rate 1) or none."""
    inputs = layer_inputs(modality, COUNTS[modality], seed=8)
    x, attn, layout = inputs["x"], inputs["attn"], inputs["layout"]
    mag_attn = random_mag_attention(layout, x.shape[0], x.shape[1], seed=9)
    dropout = TokenDropout(p_min=rate, p_max=rate, sigma=0.5)
    reference, _ = reference_token_dropout(x, attn, fixed_mag(mag_attn), dropout, modality, inputs["tokenized"],
                                           N_CTX, generator=torch.Generator().manual_seed(0))
    ours = dropout(x, layout, attn, mag_attn)
    expected = layout.eligible if rate else torch.zeros_like(layout.eligible)
    assert torch.equal(eligible_changed(reference, x), expected)
    assert torch.equal(eligible_changed(ours, x), expected)


def test_reference_draws_come_from_its_generator():
    x = torch.randn(10, 4)
    probability, eligible = torch.full((10,), 0.5), torch.arange(1, 10)
    first, second = (reference_perturb(x, probability, eligible, 0.1, torch.Generator().manual_seed(0))
                     for _ in range(2))
    assert torch.equal(first, second) and not torch.equal(first, x)
    assert torch.equal(first[0], x[0])  # not eligible
