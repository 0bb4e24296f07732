"""CLIP weight resolution (path -> cache -> checksummed download) and loading. Never touches the network."""
import hashlib
import io
import sys
import urllib.error
import warnings
from pathlib import Path

import pytest
import torch

from dpl.clip import weights
from dpl.clip.package import clip
from dpl.clip.weights import load_clip, read_clip_state_dict, resolve_clip_weights

FAKE_NAME = "Tiny/8"


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    directory = tmp_path / "clip-cache"
    monkeypatch.setenv(weights.CACHE_ENV, str(directory))
    return directory


@pytest.fixture()
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(weights.urllib.request, "urlopen", refuse)


@pytest.fixture()
def fake_backbone(monkeypatch, tiny_clip_path):
    """A backbone name whose URL carries the SHA256 of the tiny CLIP file (as OpenAI's URLs do)."""
    payload = Path(tiny_clip_path).read_bytes()
    sha = hashlib.sha256(payload).hexdigest()
    url = f"https://weights.invalid/clip/{sha}/Tiny-8.pt"
    monkeypatch.setitem(weights.MODEL_URLS, FAKE_NAME, url)
    return payload, url


def _same_outputs(model, reference):
    tokens = clip.tokenize(["a photo of a dog."])
    images = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), reference.encode_text(tokens))
        torch.testing.assert_close(model.encode_image(images), reference.encode_image(images))


# ---------------------------------------------------------------- loading


def test_load_state_dict_file(tiny_clip, tiny_clip_path):
    model = load_clip("ViT-B/16", path=str(tiny_clip_path))
    assert isinstance(model, clip.model.CLIP) and not model.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())
    _same_outputs(model, tiny_clip)


def test_load_wrapped_state_dict(tiny_clip, tmp_path):
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": tiny_clip.state_dict(), "epoch": 3}, path)
    _same_outputs(load_clip("ViT-B/16", path=path), tiny_clip)


def test_load_fp16_state_dict_comes_back_float32(tiny_clip, tmp_path):
    path = tmp_path / "half.pt"
    torch.save({k: v.half() for k, v in tiny_clip.state_dict().items()}, path)
    model = load_clip("ViT-B/16", path=path)
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
def test_load_torchscript_archive(tiny_clip, tmp_path):
    """OpenAI ships TorchScript archives; a traced tiny CLIP has the same format."""
    images = torch.zeros(1, 3, 32, 32)
    tokens = clip.tokenize(["a dog."]).long()
    traced = torch.jit.trace(tiny_clip, (images, tokens), check_trace=False)
    path = tmp_path / "tiny_jit.pt"
    torch.jit.save(traced, str(path))
    assert set(read_clip_state_dict(path)) == set(tiny_clip.state_dict())
    _same_outputs(load_clip("ViT-B/16", path=path), tiny_clip)


def test_load_resnet_backbone(tmp_path):
    torch.manual_seed(0)
    resnet = clip.model.CLIP(embed_dim=64, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=8,
                             vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=64,
                             transformer_heads=1, transformer_layers=1)
    path = tmp_path / "rn.pt"
    torch.save(resnet.state_dict(), path)
    model = load_clip("RN50", path=path)
    assert isinstance(model.visual, clip.model.ModifiedResNet)


def test_wrong_format_names_the_file(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a weights file")
    with pytest.raises(ValueError, match="garbage.pt is neither a TorchScript archive nor a torch state dict"):
        load_clip("ViT-B/16", path=garbage)
    not_clip = tmp_path / "not_clip.pt"
    torch.save({"weight": torch.zeros(2)}, not_clip)
    with pytest.raises(ValueError, match="not_clip.pt is not a CLIP state dict"):
        load_clip("ViT-B/16", path=not_clip)
    a_list = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], a_list)
    with pytest.raises(ValueError, match="list.pt does not hold a state dict"):
        load_clip("ViT-B/16", path=a_list)


def test_load_to_device_argument(tiny_clip_path):
    model = load_clip("ViT-B/16", path=tiny_clip_path, device=torch.device("cpu"))
    assert next(model.parameters()).device.type == "cpu"


# ---------------------------------------------------------------- resolution


def test_explicit_path_wins_and_missing_path_is_clear(tiny_clip_path, cache_dir, no_network):
    assert resolve_clip_weights("ViT-B/16", str(tiny_clip_path)) == Path(tiny_clip_path)
    with pytest.raises(FileNotFoundError, match=r"MODEL\.BACKBONE\.PATH is '.*nowhere\.pt', which is not a file"):
        resolve_clip_weights("ViT-B/16", str(cache_dir / "nowhere.pt"))


def test_cache_dir_from_environment(cache_dir, fake_backbone, no_network):
    payload, _ = fake_backbone
    cache_dir.mkdir()
    (cache_dir / "Tiny-8.pt").write_bytes(payload)
    assert weights.clip_cache_dir() == cache_dir
    assert resolve_clip_weights(FAKE_NAME) == cache_dir / "Tiny-8.pt"


def test_default_cache_dir(monkeypatch):
    monkeypatch.delenv(weights.CACHE_ENV, raising=False)
    assert weights.clip_cache_dir() == Path.home() / ".cache" / "clip"


def test_checksum_mismatch_is_an_error_and_keeps_the_file(cache_dir, fake_backbone, no_network):
    cache_dir.mkdir()
    cached = cache_dir / "Tiny-8.pt"
    cached.write_bytes(b"someone's own weights")
    with pytest.raises(RuntimeError, match="does not match its SHA256 checksum"):
        resolve_clip_weights(FAKE_NAME)
    assert cached.read_bytes() == b"someone's own weights"


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_mocked_download_is_verified_and_atomic(cache_dir, fake_backbone, monkeypatch, tiny_clip):
    payload, url = fake_backbone
    requested = []

    def fake_urlopen(address, timeout=None):
        requested.append(address)
        return _FakeResponse(payload)

    monkeypatch.setattr(weights.urllib.request, "urlopen", fake_urlopen)
    path = resolve_clip_weights(FAKE_NAME)
    assert requested == [url] and path == cache_dir / "Tiny-8.pt" and path.read_bytes() == payload
    assert sorted(p.name for p in cache_dir.iterdir()) == ["Tiny-8.pt"]  # no temp file left behind
    _same_outputs(load_clip(FAKE_NAME), tiny_clip)
    resolve_clip_weights(FAKE_NAME)
    assert len(requested) == 1  # the verified cache is used the second time


def test_corrupt_download_leaves_nothing(cache_dir, fake_backbone, monkeypatch):
    monkeypatch.setattr(weights.urllib.request, "urlopen", lambda url, timeout=None: _FakeResponse(b"truncated"))
    with pytest.raises(RuntimeError, match="does not match its SHA256 checksum"):
        resolve_clip_weights(FAKE_NAME)
    assert list(cache_dir.iterdir()) == []


def test_offline_error_is_one_actionable_line(cache_dir, no_network):
    with pytest.raises(FileNotFoundError) as info:
        resolve_clip_weights("ViT-B/16")
    message = str(info.value)
    assert "\n" not in message
    for part in ("ViT-B-16.pt", str(cache_dir), "DPL_CLIP_CACHE", "MODEL.BACKBONE.PATH"):
        assert part in message


def test_unknown_backbone_lists_closest_names_first():
    with pytest.raises(ValueError, match=r"unknown CLIP backbone 'ViT-B/61'.*closest first: \['ViT-B/16'"):
        resolve_clip_weights("ViT-B/61")


def test_pocket_backbone(monkeypatch, tiny_clip_path, tmp_path):
    monkeypatch.setattr(weights, "POCKET_PATH", tmp_path / "assets" / "pocket_clip.pt")
    with pytest.raises(FileNotFoundError, match="pocket CLIP .*pocket_clip.pt is missing"):
        resolve_clip_weights("pocket")
    monkeypatch.setattr(weights, "POCKET_PATH", Path(tiny_clip_path))
    assert resolve_clip_weights("pocket") == Path(tiny_clip_path)
    assert "pocket" in weights.available_backbones()


def test_clip_import_silences_only_the_pkg_resources_warning():
    """Re-import the package (and pkg_resources) fresh through our one import point; restore afterwards."""
    from dpl.clip.package import import_clip

    def ours(name):
        return name in ("clip", "pkg_resources") or name.startswith(("clip.", "pkg_resources."))

    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    try:
        for name in saved:
            del sys.modules[name]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fresh = import_clip()
        assert fresh is not clip and hasattr(fresh, "tokenize")  # really imported again
        assert not [w for w in caught if "pkg_resources" in str(w.message)]
    finally:
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)
