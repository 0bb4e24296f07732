"""Tokenisation, CoOp-style class prompts and the template tables."""
import pytest
import torch

from dpl.clip import (
    CUSTOM_TEMPLATES,
    IMAGENET_TEMPLATES,
    IMAGENET_TEMPLATES_SELECT,
    PROMPTSRC_TEMPLATES,
    build_class_prompts,
    class_text,
    dataset_template,
    fill_template,
    tokenize,
)

SOS, EOS = 49406, 49407


def _embed(clip_model, texts):
    with torch.no_grad():
        return clip_model.token_embedding(tokenize(texts))


def test_tokenize_returns_int64_ids():
    ids = tokenize(["a photo of a dog.", "x"])
    assert ids.dtype == torch.int64 and ids.shape == (2, 77)
    assert ids[:, 0].tolist() == [SOS, SOS] and ids.argmax(-1).tolist() == [7, 2]
    with pytest.raises(ValueError, match="too long"):
        tokenize(["word " * 100])


def test_class_text_replaces_underscores():
    assert class_text("sea_lion") == "sea lion"


def test_placeholder_prompts_split_into_prefix_and_suffix(tiny_clip):
    prompts = build_class_prompts(tiny_clip, ["sea_lion", "dog"], n_ctx=4)
    assert prompts.texts == ["X X X X sea lion.", "X X X X dog."]
    assert prompts.name_lens == [2, 1] and prompts.ctx_vectors is None
    full = _embed(tiny_clip, prompts.texts)
    assert prompts.prefix.shape == (2, 1, 128) and prompts.suffix.shape == (2, 72, 128)
    torch.testing.assert_close(prompts.prefix, full[:, :1])
    torch.testing.assert_close(prompts.suffix, full[:, 5:])
    assert torch.equal(prompts.tokenized, tokenize(prompts.texts))
    assert not prompts.prefix.requires_grad and not prompts.suffix.requires_grad


@pytest.mark.parametrize("position,texts", [
    ("end", ["p q r s sea lion.", "p q r s dog."]),
    ("front", ["sea lion p q r s.", "dog p q r s."]),
    ("middle", ["p q sea lion r s.", "p q dog r s."]),
])
def test_assemble_puts_the_class_token_where_asked(tiny_clip, position, texts):
    prompts = build_class_prompts(tiny_clip, ["sea_lion", "dog"], n_ctx=4, position=position)
    ctx = _embed(tiny_clip, ["p q r s"])[0, 1:5]  # [4, D] embeddings of the context words
    torch.testing.assert_close(prompts.assemble(ctx), _embed(tiny_clip, texts))
    # Same token count, so the EOS position of the placeholder holds for every position.
    assert torch.equal(prompts.tokenized.argmax(-1), tokenize(texts).argmax(-1))


def test_class_specific_context_and_gradients(tiny_clip):
    prompts = build_class_prompts(tiny_clip, ["cat", "dog", "cow"], n_ctx=2, position="middle")
    ctx = torch.randn(3, 2, 128, requires_grad=True)
    full = prompts.assemble(ctx)
    torch.testing.assert_close(full[:, 1], ctx[:, 0].detach())  # first half before the name
    torch.testing.assert_close(full[:, 3], ctx[:, 1].detach())  # one-token names: second half at 3
    full.sum().backward()
    assert torch.equal(ctx.grad, torch.ones_like(ctx))
    with pytest.raises(ValueError, match="context must be"):
        prompts.assemble(torch.zeros(3, 4, 128))


def test_ctx_init_sets_n_ctx_and_initial_vectors(tiny_clip):
    prompts = build_class_prompts(tiny_clip, ["dog"], ctx_init="a_photo of a")
    assert prompts.n_ctx == 4 and prompts.texts == ["a photo of a dog."]
    expected = _embed(tiny_clip, ["a photo of a"])[0, 1:5]
    assert prompts.ctx_vectors.dtype == torch.float32
    torch.testing.assert_close(prompts.ctx_vectors, expected)
    torch.testing.assert_close(prompts.assemble(prompts.ctx_vectors), _embed(tiny_clip, prompts.texts))


def test_ctx_init_longer_than_n_ctx_keeps_the_rest_as_fixed_text(tiny_clip):
    prompts = build_class_prompts(tiny_clip, ["dog"], n_ctx=2, ctx_init="a photo of a")
    assert prompts.texts == ["a photo of a dog."] and prompts.ctx_vectors.shape == (2, 128)
    torch.testing.assert_close(prompts.suffix, _embed(tiny_clip, prompts.texts)[:, 3:])  # "of a dog." ...


def test_class_prompt_errors(tiny_clip):
    with pytest.raises(ValueError, match="CTX_INIT 'a photo' has 2 tokens, too few for N_CTX=4"):
        build_class_prompts(tiny_clip, ["dog"], n_ctx=4, ctx_init="a photo")
    with pytest.raises(ValueError, match="needs class token position 'end'"):
        build_class_prompts(tiny_clip, ["dog"], n_ctx=2, ctx_init="a photo of a", position="front")
    with pytest.raises(ValueError, match="class token position 'side'"):
        build_class_prompts(tiny_clip, ["dog"], n_ctx=2, position="side")
    with pytest.raises(ValueError, match="N_CTX must be a number"):
        build_class_prompts(tiny_clip, ["dog"])


def test_custom_templates_table():
    assert CUSTOM_TEMPLATES["DescribableTextures"] == "{} texture."
    assert CUSTOM_TEMPLATES["EuroSAT"] == "a centered satellite photo of {}."
    assert CUSTOM_TEMPLATES["Pocket"] == "a photo of a {}."
    assert len(CUSTOM_TEMPLATES) == 16
    assert dataset_template("UCF101") == "a photo of a person doing {}."
    with pytest.raises(KeyError, match="do you mean 'OxfordPets'"):
        dataset_template("OxfordPet")
    assert fill_template("a photo of a {}.", ["sea_lion"]) == ["a photo of a sea lion."]


def test_imagenet_and_promptsrc_templates():
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert IMAGENET_TEMPLATES[39] == "a photo of a {}." and IMAGENET_TEMPLATES[-1] == "a tattoo of the {}."
    assert len(IMAGENET_TEMPLATES_SELECT) == 7 and set(IMAGENET_TEMPLATES_SELECT) <= set(IMAGENET_TEMPLATES)
    assert len(PROMPTSRC_TEMPLATES) == 60
    assert PROMPTSRC_TEMPLATES[:6] == [
        "a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
        "a photo of the hard to see {}.", "a low resolution photo of the {}.",
    ]
    assert PROMPTSRC_TEMPLATES == ["a photo of a {}."] + IMAGENET_TEMPLATES[:39] + IMAGENET_TEMPLATES[40:60]
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
