"""Tokenisation and CoOp-style class prompts, shared by every prompt learner.

A learnable text prompt is ``[SOS][ctx_1..ctx_n][class name tokens][.][EOS][pad]``. Its frozen parts
come from embedding a placeholder sentence with the same token layout (``"X X X X {name}."`` or
``"{ctx_init} {name}."``): position 0 is the *prefix* (SOS), everything after the context is the
*suffix* (class tokens, '.', EOS, padding). The placeholder's token ids give the EOS position
(``argmax``), which never moves because the context has a fixed length.
"""
from dataclasses import dataclass
from typing import List, Optional

import torch

from dpl.clip.package import TOKENIZER, clip
from dpl.utils.errors import InvalidInputError

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")
PLACEHOLDER_WORD = "X"


def class_text(name: str) -> str:
    """The text of a class name in prompts (underscores become spaces, as in every CoOp-family trainer)."""
    return name.replace("_", " ")


def bpe_ids(text: str) -> List[int]:
    """CLIP BPE token ids of ``text`` without SOS/EOS."""
    return TOKENIZER.encode(text)


def tokenize(texts, context_length: int = 77) -> torch.Tensor:
    """Token ids ``[N, context_length]`` as int64 (the ``clip`` package returns int32)."""
    try:
        return clip.tokenize(texts, context_length=context_length).long()
    except RuntimeError as exc:  # the package's "Input ... is too long for context length ..."
        raise InvalidInputError(f"{exc}; shorten the class name or the prompt template") from exc


@dataclass
class ClassPrompts:
    """Frozen parts of the class prompts for one class list (tensors in the CLIP model's dtype and device).

    tokenized:   [C, L] long, ids of the placeholder prompts (EOS = argmax)
    prefix:      [C, 1, D] SOS embeddings
    suffix:      [C, L - 1 - n_ctx, D] embeddings after the context
    ctx_vectors: [n_ctx, D] float32 embeddings of the ``ctx_init`` words (None without ``ctx_init``)
    gather_index:[C, L] long, where each output position reads from ``[prefix, ctx, suffix]`` (class position)
    """

    texts: List[str]
    tokenized: torch.Tensor
    prefix: torch.Tensor
    suffix: torch.Tensor
    name_lens: List[int]
    n_ctx: int
    position: str
    ctx_vectors: Optional[torch.Tensor]
    gather_index: torch.Tensor

    def assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        """Full prompt embeddings ``[C, L, D]`` from a generic ``[n_ctx, D]`` or class-specific ``[C, n_ctx, D]`` context."""
        num_classes = self.prefix.shape[0]
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(num_classes, -1, -1)
        if ctx.shape[:2] != (num_classes, self.n_ctx):
            raise ValueError(f"context must be [{self.n_ctx}, D] or [{num_classes}, {self.n_ctx}, D], got {tuple(ctx.shape)}")
        prompts = torch.cat([self.prefix, ctx.to(self.prefix.dtype), self.suffix], dim=1)  # class token at the end
        if self.position == "end":
            return prompts
        index = self.gather_index.unsqueeze(-1).expand(-1, -1, prompts.shape[-1])
        return torch.gather(prompts, 1, index)


def build_class_prompts(clip_model, classnames, n_ctx=None, ctx_init="", position="end") -> ClassPrompts:
    """Embed the placeholder prompts of ``classnames`` and split them around the context.

    n_ctx:    number of context tokens; may be omitted when ``ctx_init`` is given (then = its token count)
    ctx_init: words initialising the context (underscores become spaces). Its first ``n_ctx`` tokens
              become ``ctx_vectors``; any remaining words stay in the prompt as fixed text after the context
              (PromptSRC's behaviour with 2 context tokens and "a photo of a"), only with ``position="end"``.
    position: class token position ``end`` / ``middle`` / ``front`` (CoOp's CLASS_TOKEN_POSITION)
    """
    if position not in CLASS_TOKEN_POSITIONS:
        raise InvalidInputError(f"class token position {position!r} is not one of {CLASS_TOKEN_POSITIONS}")
    context_text, n_ctx, init_ids = _context_text(n_ctx, ctx_init, position)
    names = [class_text(name) for name in classnames]
    texts = [" ".join(part for part in (context_text, f"{name}.") if part) for name in names]
    embedding = clip_model.token_embedding
    tokenized = tokenize(texts, clip_model.context_length).to(embedding.weight.device)
    with torch.no_grad():
        embedded = embedding(tokenized).to(clip_model.dtype)  # [C, L, D]
        ctx_vectors = None
        if init_ids:
            ids = torch.tensor(init_ids[:n_ctx], dtype=torch.long, device=embedding.weight.device)
            ctx_vectors = embedding(ids).float()
    name_lens = [len(bpe_ids(name)) for name in names]
    return ClassPrompts(
        texts=texts,
        tokenized=tokenized,
        prefix=embedded[:, :1].clone(),
        suffix=embedded[:, 1 + n_ctx:].clone(),
        name_lens=name_lens,
        n_ctx=n_ctx,
        position=position,
        ctx_vectors=ctx_vectors,
        gather_index=class_position_index(name_lens, n_ctx, position, tokenized.shape[1], tokenized.device),
    )


def _context_text(n_ctx, ctx_init, position):
    """(placeholder text of the context, n_ctx, BPE ids of ctx_init or [])."""
    ctx_init = class_text(ctx_init or "").strip()
    if not ctx_init:
        if n_ctx is None or n_ctx < 0:
            raise InvalidInputError(f"N_CTX must be a number >= 0 when CTX_INIT is empty, got {n_ctx}")
        return " ".join([PLACEHOLDER_WORD] * n_ctx), n_ctx, []
    init_ids = bpe_ids(ctx_init)
    n_ctx = len(init_ids) if n_ctx is None else n_ctx
    if not 0 < n_ctx <= len(init_ids):
        raise InvalidInputError(
            f"CTX_INIT {ctx_init!r} has {len(init_ids)} tokens, too few for N_CTX={n_ctx}; "
            "use a longer CTX_INIT, a smaller N_CTX, or an empty CTX_INIT (random init)"
        )
    if n_ctx < len(init_ids) and position != "end":
        raise InvalidInputError(f"CTX_INIT {ctx_init!r} longer than N_CTX={n_ctx} needs class token position 'end'")
    return ctx_init, n_ctx, init_ids


def class_position_index(name_lens, n_ctx, position, length, device=None) -> torch.Tensor:
    """[C, L] source index into ``cat([prefix, ctx, suffix])`` (class at the end) for each output position.

    front:  [SOS][name][ctx][. EOS pad]
    middle: [SOS][ctx[:n//2]][name][ctx[n//2:]][. EOS pad]   (CoOp's half split)
    """
    j = torch.arange(length, device=device).unsqueeze(0)  # [1, L]
    k = torch.tensor(name_lens, dtype=torch.long, device=device).unsqueeze(1)  # [C, 1]
    src = j.expand(k.shape[0], -1).clone()
    if position == "front":
        name_part = (j >= 1) & (j < 1 + k)
        ctx_part = (j >= 1 + k) & (j < 1 + k + n_ctx)
        src = torch.where(name_part, j + n_ctx, torch.where(ctx_part, j - k, src))
    elif position == "middle":
        half = n_ctx // 2
        name_part = (j >= 1 + half) & (j < 1 + half + k)
        ctx_tail = (j >= 1 + half + k) & (j < 1 + n_ctx + k)
        src = torch.where(name_part, j + n_ctx - half, torch.where(ctx_tail, j - k, src))
    return src

