"""The prompted CLIP encoders: equivalence with CLIP, IVLP prompt placement, hooks, attention, memory options."""
import copy

import pytest
import torch

from dpl.clip import (
    LayerHook,
    PromptedTextEncoder,
    PromptedVisionEncoder,
    attention_probs,
    block_with_attention,
    build_class_prompts,
    clip_architecture,
    tokenize,
)
from dpl.clip.package import clip

CLASSNAMES = ["dog", "sea_lion", "golden retriever", "x"]
N_CTX = 3


class Recorder(LayerHook):
    """Records what the hook sees; optionally asks for attention and edits tokens."""

    def __init__(self, attention_layers=(), edit=None):
        self.attention_layers = set(attention_layers)
        self.edit = edit
        self.seen = {}

    def wants_attention(self, layer):
        return layer in self.attention_layers

    def __call__(self, x, layer, layout, attn):
        self.seen[layer] = (x.detach().clone(), layout, attn)
        return self.edit(x, layer, layout) if self.edit else x


def _randn(seed, *shape, requires_grad=False):
    """Normal draws from a generator of the test's own: its numbers never depend on the tests before it."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).requires_grad_(requires_grad)


@pytest.fixture(scope="module")
def prompts(tiny_clip):
    return build_class_prompts(tiny_clip, CLASSNAMES, n_ctx=N_CTX)


@pytest.fixture(scope="module")
def images():
    return _randn(1, 2, 3, 32, 32)


def _placeholder_embeddings(clip_model, prompts):
    return clip_model.token_embedding(prompts.tokenized)


def _text_input(clip_model, embeddings):
    """Input of text block 0 in LND layout, computed the stock way."""
    return (embeddings + clip_model.positional_embedding).permute(1, 0, 2)


def _vision_input(clip_model, images, appended=None):
    """Input of vision block 0 in LND layout: [CLS][patches] + pos. emb., then appended tokens, then ln_pre."""
    visual = clip_model.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    if appended is not None:
        x = torch.cat([x, appended.expand(x.shape[0], -1, -1)], dim=1)
    return visual.ln_pre(x).permute(1, 0, 2)


# ---------------------------------------------------------------- equivalence with CLIP


@torch.no_grad()
def test_text_without_prompts_equals_encode_text(tiny_clip, prompts):
    encoder = PromptedTextEncoder(tiny_clip)
    tokens = torch.cat([prompts.tokenized, tokenize(["a photo of a cat.", "itap of my {}."])])
    embeddings = tiny_clip.token_embedding(tokens)
    expected = tiny_clip.encode_text(tokens)
    torch.testing.assert_close(encoder(embeddings, tokens), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encoder(embeddings, tokens, hook=LayerHook()), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encoder.encode_tokens(tokens), expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_vision_without_prompts_equals_encode_image(tiny_clip, images):
    encoder = PromptedVisionEncoder(tiny_clip)
    expected = tiny_clip.encode_image(images)
    torch.testing.assert_close(encoder(images), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encoder(images, hook=LayerHook()), expected, atol=1e-5, rtol=1e-5)


def test_encoders_share_clip_modules(tiny_clip):
    text, vision = PromptedTextEncoder(tiny_clip), PromptedVisionEncoder(tiny_clip)
    assert text.transformer is tiny_clip.transformer and text.text_projection is tiny_clip.text_projection
    assert vision.visual is tiny_clip.visual


@torch.no_grad()
def test_half_precision_model_keeps_its_dtype(tiny_clip, prompts, images):
    model = copy.deepcopy(tiny_clip)
    clip.model.convert_weights(model)  # how OpenAI's build_model stores CLIP: fp16 linear/conv/attention weights
    text, vision = PromptedTextEncoder(model), PromptedVisionEncoder(model)
    hook = Recorder(attention_layers=(0, 1, 2))
    text_features = text(model.token_embedding(prompts.tokenized), prompts.tokenized,
                         deep_prompts=torch.zeros(1, N_CTX, 128), hook=hook)
    assert text_features.dtype == torch.float16 and hook.seen[1][2].dtype == torch.float16
    image_features = vision(images, prompts=torch.zeros(2, 2, 128))
    assert image_features.dtype == torch.float16
    torch.testing.assert_close(vision(images), model.encode_image(images))
    torch.testing.assert_close(text.encode_tokens(prompts.tokenized), model.encode_text(prompts.tokenized))


# ---------------------------------------------------------------- IVLP prompt placement


def test_text_deep_prompts_replace_positions_1_to_n_ctx(tiny_clip, prompts):
    encoder = PromptedTextEncoder(tiny_clip)
    embeddings = _placeholder_embeddings(tiny_clip, prompts)
    deep = _randn(2, 1, N_CTX, 128)  # before block 1 only (depth 2 of 3 layers)
    hook = Recorder()
    with torch.no_grad():
        encoder(embeddings, prompts.tokenized, deep_prompts=deep, hook=hook)
        block0_out = tiny_clip.transformer.resblocks[0](_text_input(tiny_clip, embeddings)).permute(1, 0, 2)
        block1_in = hook.seen[0][0]
        block1_out = tiny_clip.transformer.resblocks[1](block1_in.permute(1, 0, 2)).permute(1, 0, 2)
    torch.testing.assert_close(block1_in[:, 1:1 + N_CTX], deep[0].expand(len(CLASSNAMES), -1, -1))
    torch.testing.assert_close(block1_in[:, :1], block0_out[:, :1])  # SOS untouched
    torch.testing.assert_close(block1_in[:, 1 + N_CTX:], block0_out[:, 1 + N_CTX:])  # suffix untouched
    # Beyond the prompt depth the prompt outputs flow on: block 2's input is block 1's output.
    torch.testing.assert_close(hook.seen[1][0], block1_out, atol=1e-5, rtol=1e-5)


def test_text_deep_prompts_change_features_and_get_gradients(tiny_clip, prompts):
    encoder = PromptedTextEncoder(tiny_clip)
    embeddings = _placeholder_embeddings(tiny_clip, prompts).detach()
    deep = _randn(3, 2, N_CTX, 128, requires_grad=True)
    features = encoder(embeddings, prompts.tokenized, deep_prompts=deep)
    with torch.no_grad():
        plain = encoder(embeddings, prompts.tokenized)
    assert _differ(features, plain)
    features.sum().backward()
    assert deep.grad is not None and deep.grad.abs().sum(dim=(1, 2)).gt(0).all()


def test_vision_prompts_are_appended_without_positional_embedding(tiny_clip, images):
    encoder = PromptedVisionEncoder(tiny_clip)
    prompts = _randn(4, 1, 2, 128)  # depth 1: appended before block 0, never replaced
    hook = Recorder()
    with torch.no_grad():
        encoder(images, prompts=prompts, hook=hook)
        expected = tiny_clip.visual.transformer.resblocks[0](_vision_input(tiny_clip, images, prompts[0]))
    seen, layout, _ = hook.seen[0]
    assert seen.shape == (2, 1 + 16 + 2, 128)
    torch.testing.assert_close(seen, expected.permute(1, 0, 2), atol=1e-5, rtol=1e-5)
    assert layout.prompt_index == slice(17, 19)


def test_vision_deep_prompts_replace_the_last_tokens(tiny_clip, images):
    encoder = PromptedVisionEncoder(tiny_clip)
    prompts = _randn(5, 2, 2, 128)
    hook = Recorder()
    with torch.no_grad():
        encoder(images, prompts=prompts, hook=hook)
        block0_out = tiny_clip.visual.transformer.resblocks[0](_vision_input(tiny_clip, images, prompts[0]))
    seen = hook.seen[0][0]
    torch.testing.assert_close(seen[:, -2:], prompts[1].expand(2, -1, -1))
    torch.testing.assert_close(seen[:, :-2], block0_out.permute(1, 0, 2)[:, :-2], atol=1e-5, rtol=1e-5)


def test_cls_output_depends_on_visual_prompts(tiny_clip, images):
    encoder = PromptedVisionEncoder(tiny_clip)
    prompts = _randn(6, 3, 2, 128, requires_grad=True)
    first = encoder(images, prompts=prompts)
    with torch.no_grad():
        second = encoder(images, prompts=prompts + _perturbation(7, 3, 2, 128))
        plain = encoder(images)
    assert _differ(first, second) and _differ(first, plain)
    first.sum().backward()
    assert prompts.grad.abs().sum(dim=(1, 2)).gt(0).all()  # every layer's prompts reach the CLS output


# ---------------------------------------------------------------- hooks


def _perturbation(seed, *shape):
    """A seeded random change of tokens. Not a constant shift: the pre-LayerNorm blocks (ln_pre, ln_1,
    ln_2) remove a shift shared by a token's features exactly, so ``+ 1.0`` would change nothing."""
    return 0.5 * _randn(seed, *shape)


def _differ(a, b):
    """``a`` and ``b`` differ by more than float rounding (which alone can fail ``allclose``'s 1e-8)."""
    return not torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def _add_to_prompts(delta):
    """A hook edit adding ``delta`` (one value per feature, see ``_perturbation``) to the prompt tokens."""
    def edit(x, layer, layout):
        x = x.clone()
        x[:, layout.prompt_index] += delta
        return x
    return edit


def test_hook_edits_of_text_prompts_reach_the_next_block(tiny_clip, prompts):
    encoder = PromptedTextEncoder(tiny_clip)
    embeddings = _placeholder_embeddings(tiny_clip, prompts)
    deep = _randn(8, 2, N_CTX, 128)  # deep prompts before blocks 1 and 2
    with torch.no_grad():
        plain = encoder(embeddings, prompts.tokenized, deep_prompts=deep)
        hook = Recorder(edit=_add_to_prompts(_perturbation(9, 128)))
        edited = encoder(embeddings, prompts.tokenized, deep_prompts=deep, hook=hook)
    assert _differ(plain, edited)
    # The hook after block 0 already saw block 1's deep prompts, and after block 1 those of block 2.
    torch.testing.assert_close(hook.seen[0][0][:, 1:1 + N_CTX], deep[0].expand(len(CLASSNAMES), -1, -1))
    torch.testing.assert_close(hook.seen[1][0][:, 1:1 + N_CTX], deep[1].expand(len(CLASSNAMES), -1, -1))


def test_hook_after_last_prompted_layer_is_not_overwritten(tiny_clip, prompts):
    """Edits after block 0 must survive: block 1's prompts are placed before the hook, not after it."""
    encoder = PromptedTextEncoder(tiny_clip)
    embeddings = _placeholder_embeddings(tiny_clip, prompts)
    deep = _randn(10, 2, N_CTX, 128)

    def only_layer_0(x, layer, layout):
        return _add_to_prompts(_perturbation(11, 128))(x, layer, layout) if layer == 0 else x

    with torch.no_grad():
        plain = encoder(embeddings, prompts.tokenized, deep_prompts=deep)
        hook = Recorder(edit=only_layer_0)
        edited = encoder(embeddings, prompts.tokenized, deep_prompts=deep, hook=hook)
    assert _differ(plain, edited)


def test_hook_edits_of_visual_prompts_reach_the_next_block(tiny_clip, images):
    encoder = PromptedVisionEncoder(tiny_clip)
    prompts = _randn(12, 3, 2, 128)

    def only_layer_0(x, layer, layout):
        return _add_to_prompts(_perturbation(13, 128))(x, layer, layout) if layer == 0 else x

    with torch.no_grad():
        plain = encoder(images, prompts=prompts)
        hook = Recorder(edit=only_layer_0)
        edited = encoder(images, prompts=prompts, hook=hook)
    assert _differ(plain, edited)
    torch.testing.assert_close(hook.seen[0][0][:, -2:], prompts[1].expand(2, -1, -1))


def test_hook_is_called_once_per_layer_with_batch_first_tokens(tiny_clip, prompts, images):
    text_hook, vision_hook = Recorder(), Recorder()
    with torch.no_grad():
        PromptedTextEncoder(tiny_clip)(_placeholder_embeddings(tiny_clip, prompts), prompts.tokenized, hook=text_hook)
        PromptedVisionEncoder(tiny_clip)(images, hook=vision_hook)
    assert sorted(text_hook.seen) == [0, 1, 2] and sorted(vision_hook.seen) == [0, 1, 2]
    assert text_hook.seen[2][0].shape == (len(CLASSNAMES), 77, 128)
    assert vision_hook.seen[2][0].shape == (2, 17, 128)


# ---------------------------------------------------------------- layouts


def test_text_layout_eligible_tokens_are_sos_and_prompts(tiny_clip, prompts):
    hook = Recorder()
    with torch.no_grad():
        PromptedTextEncoder(tiny_clip)(_placeholder_embeddings(tiny_clip, prompts), prompts.tokenized,
                                       deep_prompts=torch.zeros(1, N_CTX, 128), hook=hook)
    layout = hook.seen[0][1]
    eos = prompts.tokenized.argmax(-1)
    assert layout.modality == "text" and layout.prompt_index == slice(1, 1 + N_CTX)
    assert torch.equal(layout.global_index, eos) and layout.global_index.dtype == torch.long
    expected = torch.zeros(len(CLASSNAMES), 77, dtype=torch.bool)
    expected[:, : 1 + N_CTX] = True  # never class tokens, '.', EOS or padding
    assert torch.equal(layout.eligible, expected)


def test_text_layout_without_deep_prompts_uses_n_ctx(tiny_clip, prompts):
    hook = Recorder()
    embeddings = _placeholder_embeddings(tiny_clip, prompts)
    with torch.no_grad():
        PromptedTextEncoder(tiny_clip)(embeddings, prompts.tokenized, hook=hook, n_ctx=N_CTX)
    assert hook.seen[0][1].eligible.sum(dim=1).tolist() == [1 + N_CTX] * len(CLASSNAMES)
    with pytest.raises(ValueError, match="n_ctx=2 disagrees"):
        PromptedTextEncoder(tiny_clip)(embeddings, prompts.tokenized, deep_prompts=torch.zeros(1, 3, 128), n_ctx=2)


def test_vision_layout_excludes_cls(tiny_clip, images):
    hook = Recorder()
    with torch.no_grad():
        PromptedVisionEncoder(tiny_clip)(images, prompts=torch.zeros(1, 2, 128), hook=hook)
    layout = hook.seen[0][1]
    assert layout.modality == "vision" and torch.equal(layout.global_index, torch.zeros(2, dtype=torch.long))
    assert layout.eligible.shape == (2, 19)
    assert not layout.eligible[:, 0].any() and layout.eligible[:, 1:].all()


# ---------------------------------------------------------------- attention probabilities


def _stock_attention(block, x):
    y = block.ln_1(x)
    mask = block.attn_mask.to(y.dtype) if block.attn_mask is not None else None
    return block.attn(y, y, y, need_weights=True, average_attn_weights=False, attn_mask=mask)[1]


def test_text_attention_equals_stock_block_and_is_causal(tiny_clip, prompts):
    embeddings = _placeholder_embeddings(tiny_clip, prompts)
    hook = Recorder(attention_layers=(0, 2))
    deep = _randn(14, 1, N_CTX, 128, requires_grad=True)
    PromptedTextEncoder(tiny_clip)(embeddings, prompts.tokenized, deep_prompts=deep, hook=hook)
    blocks = tiny_clip.transformer.resblocks
    with torch.no_grad():
        expected0 = _stock_attention(blocks[0], _text_input(tiny_clip, embeddings))
        expected2 = _stock_attention(blocks[2], hook.seen[1][0].permute(1, 0, 2))
    attn0, attn1, attn2 = (hook.seen[layer][2] for layer in range(3))
    assert attn1 is None  # not asked for
    assert attn0.shape == (len(CLASSNAMES), 2, 77, 77)
    torch.testing.assert_close(attn0, expected0, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(attn2, expected2, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(attn2.sum(-1), torch.ones(len(CLASSNAMES), 2, 77))
    assert attn2.triu(diagonal=1).eq(0).all()  # causal: no attention to later tokens
    assert not attn2.requires_grad and attn2.grad_fn is None  # no graph although the prompts need grad


def test_vision_attention_equals_stock_block(tiny_clip, images):
    hook = Recorder(attention_layers=(1,))
    prompts = _randn(15, 2, 2, 128, requires_grad=True)
    PromptedVisionEncoder(tiny_clip)(images, prompts=prompts, hook=hook)
    with torch.no_grad():
        expected = _stock_attention(tiny_clip.visual.transformer.resblocks[1], hook.seen[0][0].permute(1, 0, 2))
    attn = hook.seen[1][2]
    assert hook.seen[0][2] is None and attn.shape == (2, 2, 19, 19)
    torch.testing.assert_close(attn, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 19))
    assert attn.grad_fn is None


def test_attention_probs_directly(tiny_clip):
    block = tiny_clip.transformer.resblocks[1]
    x = _randn(16, 77, 3, 128)
    torch.testing.assert_close(attention_probs(block, x), _stock_attention(block, x), atol=1e-5, rtol=1e-4)



@pytest.mark.parametrize("tower", ["text", "vision"])
def test_block_with_attention_equals_the_block_in_output_and_gradient(tiny_clip, tower):
    """The attention a hook reads comes from the block's own pass: same output, same gradient, stock probabilities."""
    if tower == "text":
        block, x = tiny_clip.transformer.resblocks[1], _randn(21, 77, 3, 128)
    else:
        block, x = tiny_clip.visual.transformer.resblocks[1], _randn(22, 19, 2, 128)
    weight = _randn(23, *x.shape)
    plain_input, joint_input = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    plain = block(plain_input)
    (plain * weight).sum().backward()
    joint, probabilities = block_with_attention(block, joint_input)
    (joint * weight).sum().backward()
    torch.testing.assert_close(joint, plain, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(joint_input.grad, plain_input.grad, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(probabilities, _stock_attention(block, x), atol=1e-5, rtol=1e-4)
    assert probabilities.grad_fn is None and probabilities.shape == (x.shape[1], 2, x.shape[0], x.shape[0])


# ---------------------------------------------------------------- memory options


@pytest.mark.parametrize("chunk_size,checkpoint", [(3, False), (0, True), (2, True)])
def test_chunked_and_checkpointed_text_encoding_equal_plain(tiny_clip, prompts, chunk_size, checkpoint):
    ctx = (prompts.ctx_vectors if prompts.ctx_vectors is not None else _randn(17, N_CTX, 128)).clone()

    def features_and_grads(encoder):
        ctx_param = ctx.clone().requires_grad_(True)
        deep = torch.linspace(-1, 1, 2 * N_CTX * 128).reshape(2, N_CTX, 128).requires_grad_(True)
        features = encoder(prompts.assemble(ctx_param), prompts.tokenized, deep_prompts=deep)
        (features * torch.arange(features.numel()).reshape(features.shape).sin()).sum().backward()
        return features.detach(), ctx_param.grad, deep.grad

    plain = features_and_grads(PromptedTextEncoder(tiny_clip))
    other = features_and_grads(PromptedTextEncoder(tiny_clip, chunk_size=chunk_size, checkpoint=checkpoint))
    for expected, actual in zip(plain, other):
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_chunked_text_hook_sees_row_offsets(tiny_clip, prompts):
    offsets = []

    class Offsets(LayerHook):
        def __call__(self, x, layer, layout, attn):
            if layer == 0:
                offsets.append((layout.row_offset, x.shape[0]))
            return x

    with torch.no_grad():
        PromptedTextEncoder(tiny_clip, chunk_size=3)(_placeholder_embeddings(tiny_clip, prompts), prompts.tokenized,
                                                     hook=Offsets())
    assert offsets == [(0, 3), (3, 1)]


def test_checkpointed_vision_equals_plain(tiny_clip, images):
    prompts = _randn(18, 2, 2, 128)
    grads = []
    for checkpoint in (False, True):
        param = prompts.clone().requires_grad_(True)
        PromptedVisionEncoder(tiny_clip, checkpoint=checkpoint)(images, prompts=param).pow(2).sum().backward()
        grads.append(param.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- bad input, architecture facts, ResNet


def test_bad_shapes_give_clear_errors(tiny_clip, prompts, images):
    text, vision = PromptedTextEncoder(tiny_clip), PromptedVisionEncoder(tiny_clip)
    embeddings = _placeholder_embeddings(tiny_clip, prompts)
    with pytest.raises(ValueError, match="deep_prompts must be"):
        text(embeddings, prompts.tokenized, deep_prompts=torch.zeros(3, N_CTX, 128))  # > layers - 1
    with pytest.raises(ValueError, match="visual prompts must be"):
        vision(images, prompts=torch.zeros(4, 2, 128))
    with pytest.raises(ValueError, match="input resolution 32"):
        vision(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="chunk_size"):
        PromptedTextEncoder(tiny_clip, chunk_size=-1)


def test_clip_architecture_facts(tiny_clip):
    arch = clip_architecture(tiny_clip)
    assert (arch.text_width, arch.text_layers, arch.text_heads) == (128, 3, 2)
    assert (arch.vision_width, arch.vision_layers, arch.vision_heads) == (128, 3, 2)
    assert (arch.patch_size, arch.num_patches, arch.image_resolution, arch.embed_dim) == (8, 16, 32, 64)
    assert arch.is_vit and arch.context_length == 77


def make_tiny_resnet_clip():
    torch.manual_seed(0)
    return clip.model.CLIP(embed_dim=64, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=8,
                vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=64,
                transformer_heads=1, transformer_layers=1).eval()


def test_resnet_backbone_plain_path_and_prompting_error():
    model = make_tiny_resnet_clip()
    vision = PromptedVisionEncoder(model)
    images = _randn(19, 1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(vision(images), model.encode_image(images))
        tokens = tokenize(["a photo of a dog."])
        torch.testing.assert_close(PromptedTextEncoder(model).encode_tokens(tokens), model.encode_text(tokens))
    with pytest.raises(ValueError, match="prompting needs a ViT backbone"):
        vision(images, prompts=torch.zeros(1, 2, 8))
    with pytest.raises(ValueError, match="prompting needs a ViT backbone"):
        vision(images, hook=LayerHook())
    arch = clip_architecture(model)
    assert not arch.is_vit and arch.vision_layers == (1, 1, 1, 1) and arch.num_patches is None
