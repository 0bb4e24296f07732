"""``build_transform(cfg, is_train)``: Dassl's pipelines built from torchvision transforms.

Train: the chosen ``INPUT.TRANSFORMS`` in Dassl's fixed order (a Resize first only when no random
crop is chosen), then ToTensor and the tensor-level choices. Test (whatever ``INPUT.TRANSFORMS``
holds, apart from ``normalize``/``instance_norm``): Resize of the smaller edge to ``max(INPUT.SIZE)``
-> CenterCrop(``INPUT.SIZE``) -> ToTensor (-> Normalize), i.e. CLIP's own preprocessing. The printed
``Building transform_train`` / ``+ ...`` lines are Dassl's.
"""
import torch
from torch import nn
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from dpl.utils.errors import InvalidInputError
from dpl.utils.registry import UnknownNameError

from .patch_randaugment import MAX_MAGNITUDE, PatchRandAugment

INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}

# Names this module builds, in the order they are applied.
PIL_TRANSFORMS = ("random_crop", "random_resized_crop", "center_crop", "random_flip", "imagenet_policy",
                  "cifar10_policy", "svhn_policy", "randaugment", "patch_randaugment", "colorjitter", "randomgrayscale",
                  "gaussian_blur")
TENSOR_TRANSFORMS = ("normalize", "gaussian_noise", "instance_norm")
AVAILABLE_TRANSFORMS = PIL_TRANSFORMS + TENSOR_TRANSFORMS
# Dassl names without an equivalent here (Dassl's own implementations).
UNSUPPORTED_DASSL_TRANSFORMS = ("random_translation", "cutout", "randaugment_fixmatch", "randaugment2")


class GaussianNoise(nn.Module):
    """Add N(mean, std) noise to a tensor image."""

    def __init__(self, mean=0.0, std=0.15):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, img):  # [3, H, W]
        return img + torch.randn_like(img) * self.std + self.mean


class InstanceNormalization(nn.Module):
    """Normalise each channel of one image to zero mean and unit variance."""

    def forward(self, img):  # [C, H, W]
        mean = img.mean(dim=(1, 2), keepdim=True)
        std = img.std(dim=(1, 2), keepdim=True).clamp_min(1e-8)
        return (img - mean) / std


def check_choices(choices):
    for name in choices:
        if name in UNSUPPORTED_DASSL_TRANSFORMS:
            raise UnknownNameError(f'INPUT.TRANSFORMS: "{name}" (a Dassl transform) is not supported; '
                                   f"available: {list(AVAILABLE_TRANSFORMS)}")
        if name not in AVAILABLE_TRANSFORMS:
            raise UnknownNameError(f'INPUT.TRANSFORMS: unknown transform "{name}"; available: {list(AVAILABLE_TRANSFORMS)}')


def interpolation_mode(name):
    if name not in INTERPOLATION_MODES:
        raise UnknownNameError(f'INPUT.INTERPOLATION: unknown mode "{name}"; available: {list(INTERPOLATION_MODES)}')
    return INTERPOLATION_MODES[name]


def build_transform(cfg, is_train=True, choices=None):
    """A ``torchvision.transforms.Compose`` for training (``is_train``) or testing."""
    if cfg.INPUT.NO_TRANSFORM:
        print("Note: no transform is applied!")
        return None
    choices = list(cfg.INPUT.TRANSFORMS if choices is None else choices)
    check_choices(choices)
    interp = interpolation_mode(cfg.INPUT.INTERPOLATION)
    normalize = T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    build = _build_train if is_train else _build_test
    return T.Compose(build(cfg, choices, interp) + _tensor_steps(cfg, choices, normalize, is_train))


def _build_train(cfg, choices, interp):
    print("Building transform_train")
    inp = cfg.INPUT
    size = tuple(inp.SIZE)
    steps = []
    if "random_crop" not in choices and "random_resized_crop" not in choices:
        print(f"+ resize to {size[0]}x{size[1]}")
        steps.append(T.Resize(size, interpolation=interp))
    if "random_crop" in choices:
        print(f"+ random crop (padding = {inp.CROP_PADDING})")
        steps.append(T.RandomCrop(size, padding=inp.CROP_PADDING))
    if "random_resized_crop" in choices:
        scale = tuple(inp.RRCROP_SCALE)
        print(f"+ random resized crop (size={size}, scale={scale})")
        steps.append(T.RandomResizedCrop(size, scale=scale, interpolation=interp))
    if "center_crop" in choices:
        print(f"+ center crop (size={size})")
        steps.append(T.CenterCrop(size))
    if "random_flip" in choices:
        print("+ random flip")
        steps.append(T.RandomHorizontalFlip())
    for name, policy in (("imagenet_policy", T.AutoAugmentPolicy.IMAGENET),
                         ("cifar10_policy", T.AutoAugmentPolicy.CIFAR10), ("svhn_policy", T.AutoAugmentPolicy.SVHN)):
        if name in choices:
            print(f"+ {name.replace('_', ' ')} (torchvision AutoAugment)")
            steps.append(T.AutoAugment(policy, interpolation=interp))
    if "randaugment" in choices:
        print(f"+ randaugment (n={inp.RANDAUGMENT_N}, m={inp.RANDAUGMENT_M})")
        steps.append(T.RandAugment(num_ops=inp.RANDAUGMENT_N, magnitude=inp.RANDAUGMENT_M, interpolation=interp))
    if "patch_randaugment" in choices:
        steps.append(_patch_randaugment(inp))
    if "colorjitter" in choices:
        b, c, s, h = inp.COLORJITTER_B, inp.COLORJITTER_C, inp.COLORJITTER_S, inp.COLORJITTER_H
        print(f"+ color jitter (brightness={b}, contrast={c}, saturation={s}, hue={h})")
        steps.append(T.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h))
    if "randomgrayscale" in choices:
        print(f"+ random gray scale (p={inp.RGS_P})")
        steps.append(T.RandomGrayscale(p=inp.RGS_P))
    if "gaussian_blur" in choices:
        print(f"+ gaussian blur (kernel={inp.GB_K})")
        steps.append(T.RandomApply([T.GaussianBlur(inp.GB_K)], p=inp.GB_P))
    return steps


def _patch_randaugment(inp):
    n, m, patch = inp.PATCH_RANDAUGMENT_N, inp.PATCH_RANDAUGMENT_M, inp.PATCH_RANDAUGMENT_PATCH
    for key, value, ok, allowed in (("N", n, n >= 0, ">= 0"), ("M", m, 0 <= m <= MAX_MAGNITUDE, f"0..{MAX_MAGNITUDE}"),
                                    ("PATCH", patch, patch >= 3, ">= 3 pixels")):
        if not ok:
            raise InvalidInputError(f"INPUT.PATCH_RANDAUGMENT_{key} is {value}: use a value {allowed}")
    print(f"+ patch randaugment (n={n}, m={m}, every {patch}x{patch} patch on its own)")
    return PatchRandAugment(n, m, patch)


def _build_test(cfg, choices, interp):
    print("Building transform_test")
    size = tuple(cfg.INPUT.SIZE)
    print(f"+ resize the smaller edge to {max(size)}")
    print(f"+ {size[0]}x{size[1]} center crop")
    return _clean_view_steps(cfg, interp)


def _clean_view_steps(cfg, interp):
    size = tuple(cfg.INPUT.SIZE)
    return [T.Resize(max(size), interpolation=interp), T.CenterCrop(size)]


TEACHER_VIEWS = ("same", "clean")


def clean_view_transform(cfg):
    """The test pipeline (without its log lines): what ``INPUT.TEACHER_VIEW clean`` shows a frozen teacher."""
    steps = _clean_view_steps(cfg, interpolation_mode(cfg.INPUT.INTERPOLATION)) + [T.ToTensor()]
    if "normalize" in cfg.INPUT.TRANSFORMS:
        steps.append(T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))
    return T.Compose(steps)


def teacher_view_transform(cfg, is_train):
    """``clean_view_transform`` for a training set under ``INPUT.TEACHER_VIEW clean``, else None."""
    view = cfg.INPUT.TEACHER_VIEW
    if view not in TEACHER_VIEWS:
        raise InvalidInputError(f"INPUT.TEACHER_VIEW is {view!r}: use one of {list(TEACHER_VIEWS)}")
    return clean_view_transform(cfg) if is_train and view == "clean" else None


def _tensor_steps(cfg, choices, normalize, is_train):
    print("+ to torch tensor of range [0, 1]")
    steps = [T.ToTensor()]
    if "normalize" in choices:
        print(f"+ normalization (mean={cfg.INPUT.PIXEL_MEAN}, std={cfg.INPUT.PIXEL_STD})")
        steps.append(normalize)
    if is_train and "gaussian_noise" in choices:
        print(f"+ gaussian noise (mean={cfg.INPUT.GN_MEAN}, std={cfg.INPUT.GN_STD})")
        steps.append(GaussianNoise(cfg.INPUT.GN_MEAN, cfg.INPUT.GN_STD))
    if "instance_norm" in choices:
        print("+ instance normalization")
        steps.append(InstanceNormalization())
    return steps
