"""What importance-weighted token dropout computes in one forward pass, kept for pictures.

``ImportanceRecorder`` is a ``LayerHook`` that runs at the layers where training drops tokens and records, per
token, the three importance terms, the combined importance and the drop probability, with the functions the
training step calls (``dpl.drople.token_dropout``). It perturbs nothing: the recorded pass is the clean forward
pass, so at the first dropping layer the numbers are exactly those of a training step on the same input (at later
layers training sees tokens perturbed by the earlier ones, a random draw).

Shapes: ``N`` sequences, ``L`` the positions that can matter (text: up to the last EOS).
"""
from dataclasses import dataclass, fields
from typing import Dict, Optional, Tuple

import torch

from dpl.clip.prompted import LayerHook
from dpl.drople.token_dropout import (active_length, alignment_score, attended_positions, global_attention_score,
                                      scored_positions, self_attention_score, token_importance)

# The importance terms in the order figures show them, with the names the method gives them.
TERM_TITLES = {
    "cls": "global-token attention",
    "self": "max self-attention",
    "mag": "alignment guidance",
}


@dataclass
class TokenMaps:
    """Per-token numbers of one layer (``layer``), or their mean over layers (``layer`` None); ``[N, L]`` each.

    terms:       raw scores S_cls, S_self and (with an alignment module) S_mag; 0 on unscored tokens
    importance:  I, the mean of the L1-normalised terms the importance source uses (None for "uniform")
    probability: the drop probability p, 0 wherever no perturbation may act
    scored:      bool, the tokens importance is computed over (not the global token, not text padding)
    eligible:    bool, the tokens a perturbation may touch
    used:        the terms the importance source averages (the others are recorded, not used)
    """

    layer: Optional[int]
    terms: Dict[str, torch.Tensor]
    importance: Optional[torch.Tensor]
    probability: torch.Tensor
    scored: torch.Tensor
    eligible: torch.Tensor
    used: Tuple[str, ...] = ()


@torch.no_grad()
def layer_token_maps(dropout, x, layout, attn, mag=None, layer=None):
    """``TokenMaps`` of hidden states ``x`` ``[N, L_full, D]`` with block attention ``attn`` ``[N, H, L_full, L_full]``.

    ``dropout`` is the ``TokenDropout`` whose importance source and probability range apply; ``mag`` the
    ``AlignmentGuidance`` module or None. The probability is ``dropout.probability`` itself, the importance
    ``token_importance`` with the source's terms, as in ``TokenDropout.__call__``.
    """
    length = active_length(layout, x.shape[1])
    scored = scored_positions(layout, length)
    attn = attn[..., :length, :length]
    mag_attn = None
    if mag is not None:
        mag_attn, _ = mag(x[:, :length], layout.modality, attended_positions(layout, length))  # [N, K, L]
    terms = {"cls": global_attention_score(attn, layout.global_index, scored),
             "self": self_attention_score(attn, scored)}
    if mag_attn is not None:
        terms["mag"] = alignment_score(mag_attn, scored)
    importance = None
    if dropout.terms:
        importance = token_importance(dropout.terms, attn, mag_attn, layout.global_index, scored)
    probability = dropout.probability(layout, attn, mag_attn, length)
    return TokenMaps(layer, {k: v.float() for k, v in terms.items()}, importance, probability.float(), scored,
                     layout.eligible[:, :length], dropout.terms)


class ImportanceRecorder(LayerHook):
    """Records ``TokenMaps`` after each of ``layers`` of one encoder call and changes nothing.

    ``before_prompts`` as the training hook's (``TokenDropoutHook``), so the recorded tensor is the one training
    scores. A text encoder that runs in chunks calls the hook once per chunk; ``maps`` joins the rows.
    """

    def __init__(self, dropout, layers, mag=None, before_prompts=False):
        self.dropout = dropout
        self.layers = frozenset(layers)
        self.mag = mag
        self.before_prompts = before_prompts
        self._chunks = {}  # layer -> [TokenMaps per encoder chunk]

    def wants_attention(self, layer):
        return layer in self.layers

    def __call__(self, x, layer, layout, attn):
        if layer in self.layers:
            maps = layer_token_maps(self.dropout, x, layout, attn, self.mag, layer)
            self._chunks.setdefault(layer, []).append(_to_cpu(maps))
        return x

    @property
    def maps(self):
        """``{layer: TokenMaps}`` over all rows, in layer order."""
        return {layer: _join_rows(self._chunks[layer]) for layer in sorted(self._chunks)}


def mean_over_layers(maps_by_layer):
    """The element-wise mean of several layers' ``TokenMaps`` (terms present in every layer); ``layer`` None.

    A probability averaged over the dropping layers is the expected fraction of them at which a token is dropped.
    """
    maps = list(maps_by_layer.values())
    if not maps:
        raise ValueError("no layer to average: the model drops tokens after no layer")
    first = maps[0]

    def mean(tensors):
        return torch.stack(tensors).mean(dim=0)

    common = [name for name in first.terms if all(name in m.terms for m in maps)]
    importance = None if first.importance is None else mean([m.importance for m in maps])
    return TokenMaps(None, {name: mean([m.terms[name] for m in maps]) for name in common}, importance,
                     mean([m.probability for m in maps]), first.scored, first.eligible, first.used)


def _to_cpu(maps):
    values = {f.name: getattr(maps, f.name) for f in fields(maps)}
    values["terms"] = {k: v.detach().cpu() for k, v in maps.terms.items()}
    for name in ("importance", "probability", "scored", "eligible"):
        values[name] = None if values[name] is None else values[name].detach().cpu()
    return TokenMaps(**values)


def _join_rows(chunks):
    """One ``TokenMaps`` of row chunks (the text encoder's); chunks of different lengths are zero-padded."""
    if len(chunks) == 1:
        return chunks[0]
    length = max(c.probability.shape[1] for c in chunks)

    def cat(tensors):
        return torch.cat([torch.cat([t, t.new_zeros(t.shape[0], length - t.shape[1])], dim=1) for t in tensors])

    first = chunks[0]
    importance = None if first.importance is None else cat([c.importance for c in chunks])
    return TokenMaps(first.layer, {k: cat([c.terms[k] for c in chunks]) for k in first.terms}, importance,
                     cat([c.probability for c in chunks]), cat([c.scored for c in chunks]),
                     cat([c.eligible for c in chunks]), first.used)
