"""Prompted CLIP encoders: CLIP's text and vision transformers run block by block (IVLP layout).

Both encoders hold references to the frozen CLIP modules (no copies) and add three things to the
stock forward passes: deep prompts placed before each block, a per-layer hook, and per-layer
attention probabilities computed only when the hook asks for them. With no prompts and no hook
they reproduce ``encode_text`` / ``encode_image`` of the same model.

Internally the hidden states keep CLIP's ``[L, N, D]`` (sequence first) layout; hooks see
batch-first ``[N, L, D]`` views.
"""
import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from dpl.clip.package import clip

VIT_ONLY = "prompting needs a ViT backbone"


@dataclass
class TokenLayout:
    """Where the tokens of one encoder call are; what a hook may perturb.

    modality:     "text" or "vision"
    global_index: [N] long, the token whose output becomes the feature (EOS for text, 0 = CLS for vision)
    prompt_index: slice of the prompt positions (text 1..n_ctx, vision the appended tokens)
    eligible:     [N, L] bool, tokens a perturbation may touch (text: SOS + prompts; vision: patches + prompts)
    row_offset:   index of row 0 in the full batch (non-zero when the text encoder runs in chunks)
    active_length: positions that can matter (text: up to the last EOS), when the caller knows it on the host;
                  None: whoever needs it computes it from ``global_index``
    """

    modality: str
    global_index: torch.Tensor
    prompt_index: slice
    eligible: torch.Tensor
    row_offset: int = 0
    active_length: Optional[int] = None


class LayerHook:
    """Base class of per-layer hooks. The default asks for nothing and changes nothing.

    ``__call__(x, layer, layout, attn)`` runs after block ``layer`` and after the deep prompts of
    block ``layer + 1`` are in place; what it returns is exactly the input of block ``layer + 1``
    (after the last block: the input of the final layer norm). ``x`` is ``[N, L, D]``; ``attn`` is
    ``[N, heads, L, L]`` (no grad) of block ``layer`` when ``wants_attention(layer)``, else None.
    A hook with ``before_prompts = True`` runs on block ``layer``'s output *before* those prompts are
    placed: they then overwrite what it returned at the prompt positions.
    """

    before_prompts = False

    def wants_attention(self, layer: int) -> bool:
        return False

    def __call__(self, x: torch.Tensor, layer: int, layout: TokenLayout, attn: Optional[torch.Tensor]) -> torch.Tensor:
        return x


@dataclass(frozen=True)
class ClipArchitecture:
    """Shape facts of a CLIP model (vision fields of a ResNet backbone that do not apply are None)."""

    embed_dim: int
    context_length: int
    text_width: int
    text_layers: int
    text_heads: int
    is_vit: bool
    image_resolution: int
    vision_width: Optional[int]
    vision_layers: Union[int, Tuple[int, ...]]
    vision_heads: Optional[int]
    patch_size: Optional[int]
    num_patches: Optional[int]  # grid * grid, CLS not counted


def is_vit(clip_model) -> bool:
    return isinstance(clip_model.visual, clip.model.VisionTransformer)


def clip_architecture(clip_model) -> ClipArchitecture:
    """Read width, layers, heads and patch facts from a ``clip.model.CLIP``."""
    text_blocks = clip_model.transformer.resblocks
    visual = clip_model.visual
    common = dict(
        embed_dim=clip_model.text_projection.shape[1],
        context_length=clip_model.context_length,
        text_width=clip_model.transformer.width,
        text_layers=len(text_blocks),
        text_heads=text_blocks[0].attn.num_heads,
        image_resolution=visual.input_resolution,
    )
    if not is_vit(clip_model):
        layers = tuple(len(getattr(visual, f"layer{i}")) for i in range(1, 5))
        return ClipArchitecture(**common, is_vit=False, vision_width=None, vision_layers=layers,
                                vision_heads=None, patch_size=None, num_patches=None)
    patch_size = visual.conv1.kernel_size[0]
    return ClipArchitecture(
        **common,
        is_vit=True,
        vision_width=visual.transformer.width,
        vision_layers=len(visual.transformer.resblocks),
        vision_heads=visual.transformer.resblocks[0].attn.num_heads,
        patch_size=patch_size,
        num_patches=(visual.input_resolution // patch_size) ** 2,
    )


def _queries_keys_values(block, x):
    """``ln_1`` and the input projection of a CLIP ``ResidualAttentionBlock``: q, k, v ``[N, H, L, hd]`` of ``x`` ``[L, N, D]``."""
    attn = block.attn
    length, batch, width = x.shape
    heads = attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # [L, N, 3D]
    q, k, v = qkv.view(length, batch, 3, heads, width // heads).permute(2, 1, 3, 0, 4)
    return q, k, v


def _attention_mask(block, length, like):
    """The block's additive mask (causal for text) cropped to ``length``, or None."""
    if block.attn_mask is None:
        return None
    return block.attn_mask[:length, :length].to(device=like.device, dtype=like.dtype)


@torch.no_grad()
def _probabilities(q, k, mask, dtype):
    """softmax(q k^T / sqrt(hd) + mask) ``[N, H, L, L]`` computed in fp32 and returned in ``dtype`` (the hidden
    states': under autocast q is half precision, the residual stream and the importance terms are not)."""
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores + mask
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)


def block_with_attention(block, x: torch.Tensor):
    """``block(x)`` for a CLIP ``ResidualAttentionBlock`` and ``x`` ``[L, N, D]``, plus its attention
    probabilities ``[N, H, L, L]`` (no grad).

    ``ln_1`` and the q/k/v projection run once and serve both; the output still comes from the fused
    attention kernel, so the probabilities cost one extra ``q k^T`` without gradient. (Differentiating an
    explicit softmax instead would keep an ``[N, H, L, L]`` tensor per layer for the backward pass.)
    """
    q, k, v = _queries_keys_values(block, x)
    mask = _attention_mask(block, x.shape[0], x)
    probabilities = _probabilities(q, k, mask, x.dtype)
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [N, H, L, hd]
    attended = attended.permute(2, 0, 1, 3).reshape(x.shape)  # [L, N, D]
    x = x + block.attn.out_proj(attended)
    return x + block.mlp(block.ln_2(x)), probabilities


def attention_probs(block, x: torch.Tensor) -> torch.Tensor:
    """Attention probabilities ``[N, H, L, L]`` of a CLIP ``ResidualAttentionBlock`` for its input ``x`` ``[L, N, D]``,
    without gradients (the block's own mask, causal for text, applies)."""
    with torch.no_grad():
        q, k, _ = _queries_keys_values(block, x)
        return _probabilities(q, k, _attention_mask(block, x.shape[0], x), x.dtype)


def _run_block(block, x, use_checkpoint, with_attention):
    """``(block(x), probabilities or None)``, optionally under activation checkpointing."""
    forward = block_with_attention if with_attention else (lambda b, h: (b(h), None))
    if use_checkpoint and torch.is_grad_enabled():
        return activation_checkpoint(forward, block, x, use_reentrant=False)
    return forward(block, x)


def run_blocks(blocks, x, place_prompts, hook, layout, use_checkpoint=False):
    """Run ``blocks`` over ``x`` ``[L, N, D]``.

    After block ``l``: ``place_prompts(x, l + 1)`` puts the deep prompts of block ``l + 1`` in place,
    then the hook sees (and may replace) exactly what block ``l + 1`` will receive; a hook with
    ``before_prompts`` sees block ``l``'s output before the prompts are placed. Blocks whose layer the hook
    wants attention for return it with their output (``block_with_attention``); the others run unchanged.
    """
    before = hook is not None and hook.before_prompts
    for layer, block in enumerate(blocks):
        wants = hook is not None and hook.wants_attention(layer)
        x, attn = _run_block(block, x, use_checkpoint, wants)
        if not before:
            x = place_prompts(x, layer + 1)
        if hook is not None:
            x = hook(x.permute(1, 0, 2), layer, layout, attn).permute(1, 0, 2)
        if before:
            x = place_prompts(x, layer + 1)
    return x


def text_layout(tokenized: torch.Tensor, n_ctx: int, row_offset: int = 0, active_length=None) -> TokenLayout:
    """Layout of placeholder prompts ``[SOS][ctx_1..ctx_n][class tokens][.][EOS][pad]``; ``active_length``: an
    upper bound of the last EOS position + 1 known on the host (e.g. of all class prompts, for a chunk)."""
    eos = tokenized.argmax(dim=-1)  # EOS has the largest id
    positions = torch.arange(tokenized.shape[1], device=tokenized.device)
    # SOS and prompt positions only; the "< eos" part keeps EOS out even for an empty class name.
    eligible = (positions <= n_ctx).unsqueeze(0) & (positions.unsqueeze(0) < eos.unsqueeze(1))  # [N, L]
    return TokenLayout("text", eos.long(), slice(1, 1 + n_ctx), eligible, row_offset, active_length)


def vision_layout(batch: int, length: int, n_prompts: int, device) -> TokenLayout:
    """Layout of ``[CLS][patches][appended prompts]``: everything but CLS is eligible."""
    eligible = (torch.arange(length, device=device) > 0).unsqueeze(0).repeat(batch, 1)  # [B, L]
    global_index = torch.zeros(batch, dtype=torch.long, device=device)
    return TokenLayout("vision", global_index, slice(length - n_prompts, length), eligible)


class PromptedTextEncoder(nn.Module):
    """CLIP's text tower taking prompt embeddings, with deep prompts, a hook and memory options.

    chunk_size: encode at most this many prompts at a time (0 = all at once); features and
        gradients are those of the plain path, peak activation memory scales with the chunk.
    checkpoint: recompute each block's activations in the backward pass (activation checkpointing)
        instead of storing them; only active while gradients are enabled.
    """

    def __init__(self, clip_model, chunk_size: int = 0, checkpoint: bool = False):
        super().__init__()
        if chunk_size < 0:
            raise ValueError(f"chunk_size must be >= 0 (0 = no chunking), got {chunk_size}")
        self.transformer = clip_model.transformer
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.chunk_size = chunk_size
        self.checkpoint = checkpoint

    @property
    def dtype(self):
        return self.text_projection.dtype

    @property
    def num_layers(self):
        return len(self.transformer.resblocks)

    def forward(self, prompt_embeddings, tokenized, deep_prompts=None, hook=None, n_ctx=None, active_length=None):
        """prompt_embeddings [C, L, D] (layer-0 prompts in place, no positional embedding),
        tokenized [C, L] ids of the placeholder prompt, deep_prompts None or [depth-1, n_ctx, D]
        (positions 1..n_ctx before blocks 1..depth-1), n_ctx: prompt count for the hook's layout when
        no deep prompts are given (default 0: only SOS eligible), active_length: the last EOS position + 1
        of ``tokenized`` if known on the host (the hook's layout then needs no device sync).
        Returns [C, embed_dim], not normalised.
        """
        n_ctx = self._check(prompt_embeddings, tokenized, deep_prompts, n_ctx)
        total = prompt_embeddings.shape[0]
        if not self.chunk_size or total <= self.chunk_size:
            return self._encode(prompt_embeddings, tokenized, deep_prompts, hook, n_ctx, 0, active_length)
        chunks = [
            self._encode(prompt_embeddings[start:start + self.chunk_size], tokenized[start:start + self.chunk_size],
                         deep_prompts, hook, n_ctx, start, active_length)
            for start in range(0, total, self.chunk_size)
        ]
        return torch.cat(chunks, dim=0)

    def encode_tokens(self, tokenized, hook=None):
        """Plain text features of token ids [C, L] (hand-crafted prompts), chunked like ``forward``."""
        tokenized = tokenized.to(self.token_embedding.weight.device)
        return self(self.token_embedding(tokenized), tokenized, hook=hook)

    def _check(self, prompt_embeddings, tokenized, deep_prompts, n_ctx):
        context, width = self.positional_embedding.shape
        if prompt_embeddings.dim() != 3 or prompt_embeddings.shape[1:] != (context, width):
            raise ValueError(f"prompt_embeddings must be [C, {context}, {width}], got {tuple(prompt_embeddings.shape)}")
        if tokenized.shape != prompt_embeddings.shape[:2]:
            raise ValueError(f"tokenized must be {tuple(prompt_embeddings.shape[:2])}, got {tuple(tokenized.shape)}")
        if deep_prompts is None:
            return int(n_ctx or 0)
        if deep_prompts.dim() != 3 or deep_prompts.shape[2] != width or deep_prompts.shape[0] > self.num_layers - 1:
            raise ValueError(
                f"deep_prompts must be [depth-1 <= {self.num_layers - 1}, n_ctx, {width}], got {tuple(deep_prompts.shape)}"
            )
        if n_ctx is not None and n_ctx != deep_prompts.shape[1]:
            raise ValueError(f"n_ctx={n_ctx} disagrees with deep_prompts of {deep_prompts.shape[1]} tokens")
        return deep_prompts.shape[1]

    def _encode(self, prompt_embeddings, tokenized, deep_prompts, hook, n_ctx, row_offset, active_length=None):
        dtype = self.dtype
        x = prompt_embeddings.to(dtype) + self.positional_embedding.to(dtype)
        x = x.permute(1, 0, 2)  # [L, C, D]
        layout = text_layout(tokenized, n_ctx, row_offset, active_length) if hook is not None else None

        def place(h, block_index):
            if deep_prompts is None or not 1 <= block_index <= deep_prompts.shape[0]:
                return h
            prompt = deep_prompts[block_index - 1].to(dtype)  # [n_ctx, D]
            n = prompt.shape[0]
            return torch.cat([h[:1], prompt.unsqueeze(1).expand(-1, h.shape[1], -1), h[1 + n:]], dim=0)

        x = run_blocks(self.transformer.resblocks, x, place, hook, layout, self.checkpoint)
        eos = tokenized.argmax(dim=-1).to(x.device)
        x = x[eos, torch.arange(x.shape[1], device=x.device)]  # [C, D]; LN is per token, so select first
        return self.ln_final(x).to(dtype) @ self.text_projection


class PromptedVisionEncoder(nn.Module):
    """CLIP's vision tower with appended visual prompts (no positional embedding) and a hook.

    A ResNet backbone is accepted for the plain path only (no prompts, no hook).
    """

    def __init__(self, clip_model, checkpoint: bool = False):
        super().__init__()
        self.visual = clip_model.visual
        self.is_vit = is_vit(clip_model)
        self.checkpoint = checkpoint

    @property
    def dtype(self):
        return self.visual.conv1.weight.dtype

    @property
    def num_layers(self):
        return len(self.visual.transformer.resblocks) if self.is_vit else 0

    def forward(self, images, prompts=None, hook=None):
        """images [B, 3, H, W]; prompts None or [depth, n_ctx, D]: prompts[0] appended after the patches
        (after the positional embedding, before ln_pre), prompts[i] replace the last n_ctx tokens before
        block i.  Returns [B, embed_dim], not normalised.
        """
        images = images.to(self.dtype)
        if not self.is_vit:
            if prompts is not None or hook is not None:
                raise ValueError(f"{VIT_ONLY}; this CLIP has a ResNet image encoder (use e.g. ViT-B/16)")
            return self.visual(images)
        visual = self.visual
        x = self._embed_patches(images)  # [B, 1 + P, D]
        n_prompts = 0
        if prompts is not None:
            self._check_prompts(prompts)
            n_prompts = prompts.shape[1]
            x = torch.cat([x, prompts[0].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)], dim=1)
        layout = vision_layout(x.shape[0], x.shape[1], n_prompts, x.device) if hook is not None else None
        x = visual.ln_pre(x).permute(1, 0, 2)  # [L, B, D]

        def place(h, block_index):
            if prompts is None or not 1 <= block_index < prompts.shape[0]:
                return h
            prompt = prompts[block_index].to(h.dtype)  # [n, D]
            return torch.cat([h[:-n_prompts], prompt.unsqueeze(1).expand(-1, h.shape[1], -1)], dim=0)

        x = run_blocks(visual.transformer.resblocks, x, place, hook, layout, self.checkpoint)
        return visual.ln_post(x[0]) @ visual.proj  # CLS token

    def _embed_patches(self, images):
        visual = self.visual
        x = visual.conv1(images)  # [B, D, grid, grid]
        x = x.flatten(2).transpose(1, 2)  # [B, grid*grid, D]
        if x.shape[1] + 1 != visual.positional_embedding.shape[0]:
            raise ValueError(
                f"images of size {tuple(images.shape[-2:])} do not match this CLIP's input resolution "
                f"{visual.input_resolution} (set INPUT.SIZE to ({visual.input_resolution}, {visual.input_resolution}))"
            )
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        return x + visual.positional_embedding.to(x.dtype)

    def _check_prompts(self, prompts):
        width = self.visual.conv1.out_channels
        if (prompts.dim() != 3 or prompts.shape[2] != width or not 1 <= prompts.shape[0] <= self.num_layers
                or prompts.shape[1] < 1):
            raise ValueError(f"visual prompts must be [1 <= depth <= {self.num_layers}, n_ctx >= 1, {width}], "
                             f"got {tuple(prompts.shape)}")
