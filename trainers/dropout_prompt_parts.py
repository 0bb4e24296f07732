"""The parts of Dropout Prompt Learning (DroPLe), each a separate, testable unit.

Specification: ``docs/METHOD.md`` (section numbers below refer to it).

- token importance terms (§4) and their combination, computed without gradients;
- importance -> per-token drop probability (§5) and the drop draw;
- the token perturbation: ``gaussian`` (official), ``zero`` (inverted token dropout), ``none`` (§6);
- the Multimodal Alignment Guidance (MAG) module and its loss (§8);
- ``TokenDropoutHook``: the ``LayerHook`` that applies importance-weighted token dropout inside the
  prompted CLIP encoders and records the MAG features of the alignment loss (§7, §8);
- the residual entropy loss and its lambda schedule (§9).

Shapes: ``N`` sequences (images or class prompts), ``H`` heads, ``L`` tokens, ``K`` bridge tokens,
``D`` widths. Every function works on whole batches (no Python loops over sequences or tokens).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from dpl.clip.prompted import LayerHook

# Importance sources (TRAINER.DPL.IMPORTANCE): the terms each one averages. "uniform" uses no importance
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
ENTROPY_EPS = 1e-5  # inside log(p + eps) of the entropy (§9, as in SHOT)
RESIDUAL_DENOMINATOR_MIN = 1e-3  # guard of 1 - lambda (§9)


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
    attended by MAG or perturbed), vision uses all ``length`` tokens. One host sync for text."""
    if layout.modality == "text":
        return min(length, int(layout.global_index.max()) + 1)
    return length


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
    length = attn.shape[-1]
    off_diagonal = ~torch.eye(length, dtype=torch.bool, device=attn.device)  # [L, L]
    admissible = scored[:, None, None, :] & off_diagonal  # [N, 1, L, L]
    # Probabilities are >= 0, so filling excluded keys with 0 leaves the max over the others unchanged.
    row_max = attn.masked_fill(~admissible, 0.0).amax(dim=-1)  # [N, H, L]
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
def perturb_tokens(x, dropped, probability, mode, sigma):
    """Apply the perturbation to the dropped tokens of x [N, L, D].

    ``dropped`` and ``probability`` are [N, L'] with L' <= L: they cover the first L' positions (text
    stops after the last EOS), later positions are never touched.

    - ``gaussian``: x <- x * (1 + sigma * eps), eps ~ N(0, I), on dropped tokens (official; no rescaling);
      noise is drawn for the dropped tokens only;
    - ``zero``: dropped tokens are zeroed and the kept ones rescaled by 1 / (1 - p) with their own p
      (inverted dropout per token, so each token's expected value is unchanged);
    - ``none``: identity.

    ``probability`` must be 0 wherever a token is not eligible: such tokens are then multiplied by exactly 1.
    """
    if mode == "none":
        return x
    if mode == "gaussian":
        rows, cols = dropped.nonzero(as_tuple=True)  # [M] each
        selected = x[rows, cols]  # [M, D]
        noise = 1.0 + sigma * torch.randn_like(selected)
        return x.index_put((rows, cols), selected * noise)
    if mode == "zero":
        keep_scale = 1.0 / (1.0 - probability).clamp_min(RESIDUAL_DENOMINATOR_MIN)
        scale = torch.where(dropped, torch.zeros_like(keep_scale), keep_scale)  # [N, L']
        scale = F.pad(scale, (0, x.shape[1] - scale.shape[1]), value=1.0)  # [N, L]
        return x * scale[..., None].to(x.dtype)
    raise ValueError(f"unknown perturbation {mode!r}; expected one of {PERTURBATIONS}")


@dataclass(frozen=True)
class TokenDropout:
    """Importance-weighted token dropout of one hidden-state tensor (settings from TRAINER.DPL)."""

    importance: str = "full"
    perturbation: str = "gaussian"
    p_min: float = 0.1
    p_max: float = 0.5
    sigma: float = 0.03
    uniform_p: float = 0.3

    def __post_init__(self):
        if self.importance not in IMPORTANCE_TERMS:
            raise ValueError(
                f"TRAINER.DPL.IMPORTANCE={self.importance!r} is not one of {sorted(IMPORTANCE_TERMS)}"
            )
        if self.perturbation not in PERTURBATIONS:
            raise ValueError(f"TRAINER.DPL.PERTURBATION={self.perturbation!r} is not one of {PERTURBATIONS}")
        if not 0.0 <= self.p_min <= self.p_max <= 1.0:
            raise ValueError(
                f"TRAINER.DPL.P_MIN={self.p_min} / P_MAX={self.p_max}: need 0 <= P_MIN <= P_MAX <= 1"
            )
        if not 0.0 <= self.uniform_p <= 1.0:
            raise ValueError(f"TRAINER.DPL.UNIFORM_P={self.uniform_p}: need a rate in [0, 1]")
        if self.perturbation == "zero" and max(self.p_max, self.uniform_p) >= 1.0:
            raise ValueError("PERTURBATION 'zero' rescales kept tokens by 1/(1-p): P_MAX and UNIFORM_P must be < 1")
        if self.sigma < 0:
            raise ValueError(f"TRAINER.DPL.SIGMA={self.sigma}: need sigma >= 0")

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


# --------------------------------------------------------------------------------------------------
# Multimodal Alignment Guidance (§8)
# --------------------------------------------------------------------------------------------------
class AlignmentGuidance(nn.Module):
    """K learnable bridge tokens shared by both modalities and all layers, with one linear map per modality.

    ``forward(x, modality, attended)`` returns the attention ``M = softmax_L(tau * Z (W x)^T)`` [N, K, L]
    (no 1/sqrt(d) scaling, masked positions get 0) and the aggregated features ``F = M (W x)`` [N, K, D_text].
    """

    def __init__(self, num_tokens, vision_width, text_width, temperature=1.0):
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"TRAINER.DPL.MAG_TOKENS={num_tokens}: need at least one bridge token")
        self.temperature = float(temperature)
        self.tokens = nn.Parameter(torch.empty(num_tokens, text_width))
        nn.init.kaiming_uniform_(self.tokens)
        self.vision_proj = nn.Linear(vision_width, text_width)
        self.text_proj = nn.Linear(text_width, text_width)

    def forward(self, x, modality, attended=None):
        proj = self.vision_proj if modality == "vision" else self.text_proj
        projected = proj(x.to(self.tokens.dtype))  # [N, L, D]
        logits = self.temperature * torch.einsum("kd,nld->nkl", self.tokens, projected)
        if attended is not None:
            logits = logits.masked_fill(~attended[:, None, :], -math.inf)
        attention = logits.softmax(dim=-1)  # [N, K, L]
        return attention, attention @ projected


def mag_alignment_loss(vision_features, text_features, labels):
    """Mean over layer pairs, batch and bridge tokens of (1 - cos(F^v_{b,q}, F^t_{y_b,q})) / 2.

    vision_features: list of [B, K, D] per layer (in layer order), text_features: list of [C, K, D]; the
    i-th entries are paired, for i < min of the two lengths.
    """
    pairs = min(len(vision_features), len(text_features))
    if pairs == 0:
        raise ValueError("mag_alignment_loss needs at least one vision and one text layer")
    vision = torch.stack(vision_features[:pairs])  # [P, B, K, D]
    text = torch.stack(text_features[:pairs])[:, labels]  # [P, B, K, D]
    return ((1.0 - F.cosine_similarity(vision, text, dim=-1)) / 2.0).mean()


# --------------------------------------------------------------------------------------------------
# The layer hook (§7)
# --------------------------------------------------------------------------------------------------
class TokenDropoutHook(LayerHook):
    """Importance-weighted token dropout inside one encoder call, plus MAG feature recording.

    The prompted encoders call the hook after block ``layer`` and after block ``layer + 1``'s deep prompts
    are in place, so what it returns is exactly the input of block ``layer + 1``. Ordering decision: the
    perturbation is applied *after* the next layer's prompts replace the prompt positions, so it reaches
    block ``layer + 1`` for every eligible token, the freshly inserted prompts included (perturbing before
    the replacement would discard it at every prompted layer but the last). Importance and MAG read the
    same tensor: block ``layer``'s output with block ``layer + 1``'s prompts at the prompt positions, and
    the attention terms come from block ``layer``'s attention (positions, not the prompt values, match).

    drop_layers: layers after which tokens are perturbed (importance from that block's attention and MAG
        attention over the hook's input);
    mag_layers: layers whose MAG features feed the alignment loss; they are collected in
        ``mag_features`` (layer order, [N, K, D] each) with gradients to the MAG module, and to the encoder
        unless ``detach_mag``. One hook object serves one encoder call (text chunks are concatenated).
    """

    def __init__(self, dropout, drop_layers=(), mag=None, mag_layers=(), detach_mag=False):
        self.dropout = dropout
        self.drop_layers = frozenset(drop_layers) if dropout.active else frozenset()
        self.mag_layers = frozenset(mag_layers)
        if mag is None and (self.mag_layers or (self.drop_layers and dropout.needs_alignment)):
            raise ValueError("TokenDropoutHook needs the AlignmentGuidance module for MAG layers / MAG importance")
        self.mag = mag
        self.detach_mag = detach_mag
        self._mag_chunks = {}  # layer -> [[n, K, D] per encoder chunk, in row order]
        self._layout, self._length = None, None  # active_length of the current layout (one per chunk)

    @property
    def mag_features(self):
        """[N, K, D] per MAG layer, in layer order."""
        return [torch.cat(self._mag_chunks[layer]) for layer in sorted(self._mag_chunks)]

    def wants_attention(self, layer):
        return layer in self.drop_layers and self.dropout.needs_attention

    def __call__(self, x, layer, layout, attn):
        if layout is not self._layout:
            self._layout, self._length = layout, active_length(layout, x.shape[1])
        length = self._length
        mag_attn = None
        if layer in self.mag_layers:
            tokens = x[:, :length]  # MAG attends to nothing after EOS, so padding need not be projected
            mag_attn, features = self.mag(tokens.detach() if self.detach_mag else tokens, layout.modality,
                                          attended_positions(layout, length))
            self._mag_chunks.setdefault(layer, []).append(features)
            mag_attn = mag_attn.detach()
        elif layer in self.drop_layers and self.dropout.needs_alignment:
            with torch.no_grad():
                mag_attn, _ = self.mag(x[:, :length], layout.modality, attended_positions(layout, length))
        if layer in self.drop_layers:
            x = self.dropout(x, layout, attn, mag_attn, length)
        return x


# --------------------------------------------------------------------------------------------------
# Residual entropy (§9)
# --------------------------------------------------------------------------------------------------
def residual_lambda(epoch, max_epoch, lam0=0.1, fixed=False):
    """lambda(e) = lam0 [1 - (1 + 10 e / E)^(-0.75)] for the 0-based epoch e (or lam0 when fixed)."""
    if fixed:
        return float(lam0)
    if max_epoch <= 0:
        raise ValueError(f"OPTIM.MAX_EPOCH={max_epoch}: the lambda schedule needs a positive number of epochs")
    return float(lam0) * (1.0 - (1.0 + 10.0 * epoch / max_epoch) ** -0.75)


def residual_features(prompted, frozen, lam):
    """Z_r = (Z_d - lam Z_o) / max(1 - lam, 1e-3) of L2-normalised features (not re-normalised)."""
    return (prompted - lam * frozen) / max(1.0 - lam, RESIDUAL_DENOMINATOR_MIN)


def prediction_entropy(logits):
    """H = mean_b [-sum_y p(y) log(p(y) + 1e-5)] with p = softmax(logits) over the last axis."""
    probs = logits.softmax(dim=-1)
    return -(probs * torch.log(probs + ENTROPY_EPS)).sum(dim=-1).mean()


def residual_entropies(image_prompted, image_frozen, text_prompted, text_frozen, logit_scale, lam):
    """(H_v, H_t): entropies of the residuals scored against the frozen other modality.

    image_*: [B, E], text_*: [C, E] (normalised here); ``logit_scale`` is s = exp(log scale).
    Vision: p_v = softmax(s Z_r_v Z_o_t^T); text: p_t = softmax(s Z_o_v Z_r_t^T), over the C classes.
    """
    image_prompted, image_frozen, text_prompted, text_frozen = (
        F.normalize(f, dim=-1) for f in (image_prompted, image_frozen, text_prompted, text_frozen)
    )
    image_residual = residual_features(image_prompted, image_frozen, lam)
    text_residual = residual_features(text_prompted, text_frozen, lam)
    entropy_vision = prediction_entropy(logit_scale * image_residual @ text_frozen.t())
    entropy_text = prediction_entropy(logit_scale * image_frozen @ text_residual.t())
    return entropy_vision, entropy_text


def residual_entropy_loss(entropy_vision, entropy_text, weight):
    """L_RE = -weight (H_v + H_t): minimising it maximises the residual entropies."""
    return -weight * (entropy_vision + entropy_text)
