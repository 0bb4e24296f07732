"""``TokenDropoutHook``: importance-weighted token dropout inside the prompted CLIP encoders (``docs/METHOD.md`` §7).

The prompted encoders of ``dpl.clip.prompted`` call a ``LayerHook`` between blocks; this one perturbs
tokens with ``TokenDropout`` and records the MAG features of the alignment loss.
"""
import torch

from dpl.clip.prompted import LayerHook

from .token_dropout import active_length, attended_positions


class TokenDropoutHook(LayerHook):
    """Importance-weighted token dropout inside one encoder call, plus MAG feature recording.

    The prompted encoders call the hook after block ``layer`` and after block ``layer + 1``'s deep prompts
    are in place, so what it returns is exactly the input of block ``layer + 1``. Ordering decision: the
    perturbation is applied *after* the next layer's prompts replace the prompt positions, so it reaches
    block ``layer + 1`` for every eligible token, the freshly inserted prompts included (perturbing before
    the replacement would discard it at every prompted layer but the last). Importance and MAG read the
    same tensor: block ``layer``'s output with block ``layer + 1``'s prompts at the prompt positions, and
    the attention terms come from block ``layer``'s attention (positions, not the prompt values, match).
    ``before_prompts=True`` is the official code's order instead: importance, MAG and the perturbation
    act on block ``layer``'s output, and the next prompts then overwrite the prompt positions (text: only
    SOS keeps noise at the prompted layers; vision: the appended prompts only after the last one).

    drop_layers: layers after which tokens are perturbed (importance from that block's attention and MAG
        attention over the hook's input);
    mag_layers: layers whose MAG features feed the alignment loss; they are collected in
        ``mag_features`` (layer order, [N, K, D] each) with gradients to the MAG module, and to the encoder
        unless ``detach_mag``. One hook object serves one encoder call (text chunks are concatenated).
    """

    def __init__(self, dropout, drop_layers=(), mag=None, mag_layers=(), detach_mag=False, before_prompts=False):
        self.before_prompts = before_prompts
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
            with torch.no_grad():  # importance only: detached, so no tool sees a grad-requiring view without grad_fn
                mag_attn, _ = self.mag(x[:, :length].detach(), layout.modality, attended_positions(layout, length))
        if layer in self.drop_layers:
            x = self.dropout(x, layout, attn, mag_attn, length)
        return x
