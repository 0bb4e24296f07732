"""Importance-weighted token dropout (``docs/METHOD.md`` §4-§6), computed on whole batches.

- token importance terms (§4) and their combination, computed without gradients;
- importance -> per-token drop probability (§5) and the drop draw;
- the token perturbation: ``gaussian`` (official), ``zero`` (inverted token dropout), ``none`` (§6);
- ``TokenDropout``: the settings and the call that perturbs one hidden-state tensor.

Shapes: ``N`` sequences (images or class prompts), ``H`` heads, ``L`` tokens, ``K`` bridge tokens,
``D`` widths. No Python loops over sequences or tokens.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dpl.utils.errors import require

# Importance sources: the terms each one averages. "uniform" uses no importance
# at all (every eligible token is dropped with the fixed rate UNIFORM_P: vanilla token dropout).
IMPORTANCE_TERMS = {
    "full": ("self", "cls", "mag"),
    "no_self": ("cls", "mag"),
    "no_cls": ("self", "mag"),
    "no_mag": ("self", "cls"),
    "uniform": (),
}
PERTURBATIONS = ("gaussian", "zero", "none")

L1_EPS = 1e-8  # guard of the L1 normalisation of each importance term (§4)
KEEP_PROBABILITY_MIN = 1e-3  # guard of the 1 / (1 - p) rescaling of kept tokens (§6)


# --------------------------------------------------------------------------------------------------
# Token positions
# --------------------------------------------------------------------------------------------------
def scored_positions(layout, length):
    """[N, L] bool: the tokens that importance is computed over.

    Every position except the global token; for text also nothing after EOS (padding), because the
    global token of a text sequence is its EOS (``layout.global_index``).
    """
    positions = torch.arange(length, device=layout.global_index.device)  # [L]
    global_index = layout.global_index[:, None]  # [N, 1]
    if layout.modality == "text":
        return positions[None, :] < global_index
    return positions[None, :] != global_index


def active_length(layout, length):
    """How many leading positions can matter: text stops after the last EOS (padding is never scored,
    attended by MAG or perturbed), vision uses all ``length`` tokens. For text it is the layout's own
    ``active_length`` when the encoder's caller knew it, else read from the device (one host sync)."""
    if layout.modality != "text":
        return length
    if layout.active_length is not None:
        return min(length, layout.active_length)
    return min(length, int(layout.global_index.max()) + 1)


def attended_positions(layout, length):
    """[N, L] bool: positions the MAG bridge tokens may attend to (text: up to and including EOS)."""
    positions = torch.arange(length, device=layout.global_index.device)
    if layout.modality == "text":
        return positions[None, :] <= layout.global_index[:, None]
    return torch.ones(layout.global_index.shape[0], length, dtype=torch.bool, device=positions.device)


# --------------------------------------------------------------------------------------------------
# Importance (§4)
# --------------------------------------------------------------------------------------------------
def self_attention_score(attn, scored):
    """S_self(j) = mean_h max_{k != j, k scored} A_h[j, k]; 0 on unscored rows.

    attn: [N, H, L, L] attention probabilities (non-negative), scored: [N, L] bool. Keys are restricted
    to scored tokens (the global token and text padding are removed from the key axis) and the diagonal
    is masked; a row with no admissible key scores 0.
    """
    # Probabilities are >= 0, so zeroing the excluded keys leaves the max over the others unchanged.
    keys = attn * scored[:, None, None, :].to(attn.dtype)  # [N, H, L, L], unscored keys 0 (a new tensor)
    keys.diagonal(dim1=-2, dim2=-1).zero_()
    row_max = keys.amax(dim=-1)  # [N, H, L]
    return row_max.mean(dim=1) * scored  # [N, L]


def global_attention_score(attn, global_index, scored):
    """S_cls(j) = mean_h A_h[g, j], the attention the global token g pays to token j; 0 on unscored j."""
    n, heads, _, length = attn.shape
    index = global_index.view(n, 1, 1, 1).expand(n, heads, 1, length)
    global_row = attn.gather(2, index).squeeze(2)  # [N, H, L]
    return global_row.mean(dim=1) * scored


def alignment_score(mag_attn, scored):
    """S_mag(j) = max_q M[q, j] over the K bridge tokens; 0 on unscored j. mag_attn: [N, K, L]."""
    return mag_attn.amax(dim=1) * scored


def l1_normalise(score, scored):
    """Normalise a non-negative [N, L] score to sum 1 over the scored tokens of each row."""
    score = score * scored
    return score / (score.sum(dim=-1, keepdim=True) + L1_EPS)


@torch.no_grad()
def token_importance(terms, attn, mag_attn, global_index, scored):
    """I = mean of the L1-normalised active terms ("self", "cls", "mag"); [N, L], 0 on unscored tokens.

    ``attn`` is needed by "self"/"cls", ``mag_attn`` by "mag" (either may be None otherwise).
    """
    if not terms:
        raise ValueError("token_importance needs at least one term (the 'uniform' source uses none)")
    parts = []
    for term in terms:  # at most three terms, not tokens
        if term == "self":
            parts.append(self_attention_score(attn, scored))
        elif term == "cls":
            parts.append(global_attention_score(attn, global_index, scored))
        elif term == "mag":
            parts.append(alignment_score(mag_attn, scored))
        else:
            raise ValueError(f"unknown importance term {term!r}; expected one of 'self', 'cls', 'mag'")
    return torch.stack([l1_normalise(p.float(), scored) for p in parts]).mean(dim=0)


# --------------------------------------------------------------------------------------------------
# Importance -> probability and the draw (§5)
# --------------------------------------------------------------------------------------------------
def min_max_normalise(importance, scored):
    """Per-row min-max over the scored tokens (a zero range divides by 1); [N, L] in [0, 1], 0 unscored."""
    low = importance.masked_fill(~scored, math.inf).amin(dim=-1, keepdim=True)
    high = importance.masked_fill(~scored, -math.inf).amax(dim=-1, keepdim=True)
    spread = high - low
    spread = torch.where(spread > 0, spread, torch.ones_like(spread))
    normalised = ((importance - low) / spread).clamp(0.0, 1.0)
    return normalised.masked_fill(~scored, 0.0)


def importance_to_probability(importance, scored, p_min, p_max):
    """p = p_max - Î (p_max - p_min): the most important scored token gets p_min, the least p_max.

    Unscored positions get probability 0.
    """
    normalised = min_max_normalise(importance, scored)
    probability = p_max - normalised * (p_max - p_min)
    return probability.masked_fill(~scored, 0.0)


def draw_drops(probability):
    """[N, L] bool: drop iff u < p with u ~ U(0, 1) independently per sequence and token."""
    return torch.rand_like(probability) < probability


# --------------------------------------------------------------------------------------------------
# Perturbation (§6)
# --------------------------------------------------------------------------------------------------
def perturb_tokens(x, dropped, probability, mode, sigma, dense_noise=None):
    """Apply the perturbation to the dropped tokens of x [N, L, D].

    ``dropped`` and ``probability`` are [N, L'] with L' <= L: they cover the first L' positions (text
    stops after the last EOS), later positions are never touched.

    - ``gaussian``: x <- x * (1 + sigma * eps), eps ~ N(0, I), on dropped tokens (official; no rescaling);
    - ``zero``: dropped tokens are zeroed and the kept ones rescaled by 1 / (1 - p) with their own p
      (inverted dropout per token, so each token's expected value is unchanged);
    - ``none``: identity.

    ``probability`` must be 0 wherever a token is not eligible: such tokens are then multiplied by exactly 1.
    ``dense_noise`` (default: on CUDA) draws the gaussian noise for every token of the first L' positions and
    keeps it where dropped, so the step needs no ``nonzero()`` and never waits for the GPU; otherwise noise
    is drawn for the dropped tokens only, which is 1.4-1.6x faster on a CPU, where there is nothing to wait for.
    """
    if mode == "none":
        return x
    if mode == "gaussian":
        if dense_noise if dense_noise is not None else x.is_cuda:
            length = dropped.shape[1]
            head = x[:, :length]
            noise = torch.randn_like(head)
            factor = torch.where(dropped[..., None], 1.0 + sigma * noise, torch.ones_like(noise))  # [N, L', D]
            return torch.cat([head * factor, x[:, length:]], dim=1)
        # token rows of the flattened [N * L, D] view: index_select / index_add are faster than x[rows, cols]
        rows, cols = dropped.nonzero(as_tuple=True)  # [M] each
        flat = rows * x.shape[1] + cols  # [M]
        tokens = x.reshape(-1, x.shape[-1])  # [N * L, D]
        selected = tokens.index_select(0, flat)  # [M, D]
        return tokens.index_add(0, flat, selected * torch.randn_like(selected).mul_(sigma)).view_as(x)
    if mode == "zero":
        keep_scale = 1.0 / (1.0 - probability).clamp_min(KEEP_PROBABILITY_MIN)
        scale = torch.where(dropped, torch.zeros_like(keep_scale), keep_scale)  # [N, L']
        scale = F.pad(scale, (0, x.shape[1] - scale.shape[1]), value=1.0)  # [N, L]
        return x * scale[..., None].to(x.dtype)
    raise ValueError(f"unknown perturbation {mode!r}; expected one of {PERTURBATIONS}")


@dataclass(frozen=True)
class TokenDropout:
    """Importance-weighted token dropout of one hidden-state tensor.

    A bad setting raises ``SettingError`` naming the field (a config reader maps it to its key).
    """

    importance: str = "full"
    perturbation: str = "gaussian"
    p_min: float = 0.1
    p_max: float = 0.5
    sigma: float = 0.03
    uniform_p: float = 0.3

    def __post_init__(self):
        require(self.importance in IMPORTANCE_TERMS, "importance", f"use one of {sorted(IMPORTANCE_TERMS)}")
        require(self.perturbation in PERTURBATIONS, "perturbation", f"use one of {list(PERTURBATIONS)}")
        require(0.0 <= self.p_min <= self.p_max <= 1.0, "p_min",
                f"need 0 <= p_min <= p_max <= 1 (p_min {self.p_min}, p_max {self.p_max})")
        require(0.0 <= self.uniform_p <= 1.0, "uniform_p", "need a rate in [0, 1]")
        if self.perturbation == "zero":
            require(self.p_max < 1.0, "p_max", "'zero' rescales kept tokens by 1/(1-p): p_max must be < 1")
            require(self.uniform_p < 1.0, "uniform_p", "'zero' rescales kept tokens by 1/(1-p): it must be < 1")
        require(self.sigma >= 0, "sigma", "need sigma >= 0")

    @property
    def terms(self):
        return IMPORTANCE_TERMS[self.importance]

    @property
    def active(self):
        """False when the perturbation cannot change anything (no draws, no importance)."""
        return self.perturbation != "none"

    @property
    def needs_attention(self):
        return self.active and bool({"self", "cls"} & set(self.terms))

    @property
    def needs_alignment(self):
        return self.active and "mag" in self.terms

    def probability(self, layout, attn, mag_attn, length):
        """[N, length] drop probability of the first ``length`` positions, 0 outside ``layout.eligible``.

        ``attn`` [N, H, >= length, >= length] and ``mag_attn`` [N, K, >= length] are cropped to ``length``.
        """
        scored = scored_positions(layout, length)
        if self.importance == "uniform":
            probability = torch.full(scored.shape, self.uniform_p, device=scored.device)
        else:
            attn = None if attn is None else attn[..., :length, :length]
            mag_attn = None if mag_attn is None else mag_attn[..., :length]
            importance = token_importance(self.terms, attn, mag_attn, layout.global_index, scored)
            probability = importance_to_probability(importance, scored, self.p_min, self.p_max)
        return probability * layout.eligible[:, :length]

    def __call__(self, x, layout, attn=None, mag_attn=None, length=None):
        """Perturb x [N, L, D]; only eligible tokens can change.

        ``length``: positions that can hold eligible tokens (default ``active_length``); the rest is skipped.
        """
        if not self.active:
            return x
        length = active_length(layout, x.shape[1]) if length is None else length
        with torch.no_grad():
            probability = self.probability(layout, attn, mag_attn, length)
            dropped = draw_drops(probability)
        return perturb_tokens(x, dropped, probability, self.perturbation, self.sigma)
