"""Residual entropy regularisation and its lambda schedule (``docs/METHOD.md`` §9)."""
import torch
import torch.nn.functional as F

ENTROPY_EPS = 1e-5  # inside log(p + eps) of the entropy (as in SHOT)
RESIDUAL_DENOMINATOR_MIN = 1e-3  # guard of 1 - lambda
# How the residual divides by 1 - lambda: "one_minus_lambda" (guarded by RESIDUAL_DENOMINATOR_MIN), or as the
# official code does, by 0.999 whenever lambda < 1e-3 (so at epoch 0, where lambda = 0, by 0.999, not 1)
RESIDUAL_DENOMINATORS = ("one_minus_lambda", "official")
OFFICIAL_SMALL_LAMBDA, OFFICIAL_SMALL_LAMBDA_DENOMINATOR = 1e-3, 0.999


def residual_lambda(epoch, max_epoch, lam0=0.1, fixed=False):
    """lambda(e) = lam0 [1 - (1 + 10 e / E)^(-0.75)] for the 0-based epoch e (or lam0 when fixed)."""
    if fixed:
        return float(lam0)
    if max_epoch <= 0:
        raise ValueError(f"the lambda schedule needs a positive number of epochs, got max_epoch={max_epoch}")
    return float(lam0) * (1.0 - (1.0 + 10.0 * epoch / max_epoch) ** -0.75)


def residual_denominator(lam, rule="one_minus_lambda"):
    """The divisor of the residual: max(1 - lam, 1e-3), or under the ``official`` rule 0.999 when lam < 1e-3."""
    if rule not in RESIDUAL_DENOMINATORS:
        raise ValueError(f"unknown residual denominator rule {rule!r}; use one of {list(RESIDUAL_DENOMINATORS)}")
    if rule == "official" and lam < OFFICIAL_SMALL_LAMBDA:
        return OFFICIAL_SMALL_LAMBDA_DENOMINATOR
    return max(1.0 - lam, RESIDUAL_DENOMINATOR_MIN)


def residual_features(prompted, frozen, lam, rule="one_minus_lambda"):
    """Z_r = (Z_d - lam Z_o) / (1 - lam) of L2-normalised features (not re-normalised); the divisor is
    ``residual_denominator(lam, rule)``."""
    return (prompted - lam * frozen) / residual_denominator(lam, rule)


def prediction_entropy(logits):
    """H = mean_b [-sum_y p(y) log(p(y) + 1e-5)] with p = softmax(logits) over the last axis."""
    probs = logits.softmax(dim=-1)
    return -(probs * torch.log(probs + ENTROPY_EPS)).sum(dim=-1).mean()


def residual_entropies(image_prompted, image_frozen, text_prompted, text_frozen, logit_scale, lam,
                       rule="one_minus_lambda"):
    """(H_v, H_t): entropies of the residuals scored against the frozen other modality.

    image_*: [B, E], text_*: [C, E] (normalised here); ``logit_scale`` is s = exp(log scale); ``rule``: the
    residual's divisor (``residual_denominator``).
    Vision: p_v = softmax(s Z_r_v Z_o_t^T); text: p_t = softmax(s Z_o_v Z_r_t^T), over the C classes.
    """
    image_prompted, image_frozen, text_prompted, text_frozen = (
        F.normalize(f, dim=-1) for f in (image_prompted, image_frozen, text_prompted, text_frozen)
    )
    image_residual = residual_features(image_prompted, image_frozen, lam, rule)
    text_residual = residual_features(text_prompted, text_frozen, lam, rule)
    entropy_vision = prediction_entropy(logit_scale * image_residual @ text_frozen.t())
    entropy_text = prediction_entropy(logit_scale * image_frozen @ text_residual.t())
    return entropy_vision, entropy_text


def residual_entropy_loss(entropy_vision, entropy_text, weight):
    """L_RE = -weight (H_v + H_t): minimising it maximises the residual entropies."""
    return -weight * (entropy_vision + entropy_text)
