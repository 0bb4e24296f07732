"""Procedural "coloured shape" scenes: the images and class names of the pocket dataset.

Every class is a composition of two shared attributes, the colour of the shape and the colour of the
background ("red shape on white"), so a model that learned the attributes can recognise a combination
it was never trained on: that is what makes zero-shot transfer to the novel half of a base/new split
meaningful. The shape itself (circle, square, ...) is a nuisance drawn at random: a tiny ViT with
32-pixel patches learns colours in minutes on a CPU but not shapes (measured: a 6-way shape probe
stayed at chance after the pretraining budget), so colours carry the classes.

Rendering is vectorised over the batch: every scene is described by a few tensors (class, centre,
radius, rotation, colours), all shapes are rasterised with inside-tests on one coordinate grid, and
each scene picks its own shape's mask. A scene batch is a pure function of its seed.
"""
from dataclasses import dataclass
import math

import torch
import torch.nn.functional as F

# Colour names and their mean RGB (0-255). Hues are far enough apart that the names are learnable,
# close enough (red/orange/purple) that jitter makes some scenes genuinely ambiguous.
COLOURS = {
    "red": (215, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (230, 215, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 215),
    "purple": (145, 55, 190),
}
# Background colours: a palette of their own, some close to shape colours (pink/red, brown/orange).
BACKGROUNDS = {
    "white": (235, 235, 228),
    "black": (30, 30, 36),
    "grey": (128, 128, 128),
    "cyan": (70, 200, 210),
    "pink": (240, 165, 195),
    "brown": (125, 85, 50),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")


def pocket_classes():
    """All (shape colour, background colour) classes in label order.

    The first half (what ``subsample_classes("base")`` keeps) holds the pairs whose two indices have
    an even sum, the second half the others. Each shape colour and each background therefore appears
    in both halves, and every novel class is an unseen combination of seen attributes.
    """
    pairs = [(c, b) for c in range(len(COLOURS)) for b in range(len(BACKGROUNDS))]
    ordered = [p for p in pairs if sum(p) % 2 == 0] + [p for p in pairs if sum(p) % 2 == 1]
    colour_names, background_names = list(COLOURS), list(BACKGROUNDS)
    return [(colour_names[c], background_names[b]) for c, b in ordered]


def class_names():
    """Human-readable class names in label order, e.g. ``"red shape on white"``."""
    return [f"{colour} shape on {background}" for colour, background in pocket_classes()]


@dataclass
class SceneParams:
    """One batch of scenes; every field has the batch size as its first dimension."""

    label: torch.Tensor  # [B] long, index into pocket_classes()
    centre: torch.Tensor  # [B, 2] in image units (0..1)
    radius: torch.Tensor  # [B] in image units
    shape: torch.Tensor  # [B] long, index into SHAPES (a nuisance, not part of the class)
    angle: torch.Tensor  # [B] radians
    fg_rgb: torch.Tensor  # [B, 3] 0..1
    bg_rgb: torch.Tensor  # [B, 3] 0..1
    noise_seed: int  # seeds the per-pixel background noise


def sample_scenes(labels, seed):
    """Random nuisance parameters (position, size, rotation, colour jitter, background) for ``labels``."""
    gen = torch.Generator().manual_seed(int(seed))
    labels = torch.as_tensor(labels, dtype=torch.long)
    n = labels.numel()
    colour_table = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255.0  # [n_colours, 3]
    background_table = torch.tensor(list(BACKGROUNDS.values()), dtype=torch.float32) / 255.0
    colour_index = torch.tensor([list(COLOURS).index(c) for c, _ in pocket_classes()])[labels]
    background_index = torch.tensor([list(BACKGROUNDS).index(b) for _, b in pocket_classes()])[labels]
    fg = colour_table[colour_index] + 0.06 * torch.randn(n, 3, generator=gen)
    # Background brightness varies per scene, so "white" and "grey" (or "brown" and "black") overlap a little.
    brightness = 0.8 + 0.4 * torch.rand(n, 1, generator=gen)
    bg = background_table[background_index] * brightness + 0.05 * torch.randn(n, 3, generator=gen)
    return SceneParams(
        label=labels,
        centre=0.3 + 0.4 * torch.rand(n, 2, generator=gen),
        radius=0.17 + 0.15 * torch.rand(n, generator=gen),
        shape=torch.randint(0, len(SHAPES), (n,), generator=gen),
        angle=2 * math.pi * torch.rand(n, generator=gen),
        fg_rgb=fg.clamp(0, 1),
        bg_rgb=bg.clamp(0, 1),
        noise_seed=int(torch.randint(0, 2**31 - 1, (1,), generator=gen)),
    )


def _shape_masks(u, v):
    """Inside-masks of every shape in local coordinates ``u, v`` ([B, H, W], unit radius).

    Returns [n_shapes, B, H, W] bool, in the order of SHAPES.
    """
    r = torch.sqrt(u * u + v * v)
    phi = torch.atan2(v, u)
    # Equilateral triangle with vertices on the unit circle: three half-planes at distance 0.5.
    normals = torch.tensor([[0.0, -1.0], [math.sqrt(3) / 2, 0.5], [-math.sqrt(3) / 2, 0.5]])
    triangle = torch.stack([u * nx + v * ny for nx, ny in normals.tolist()]).amax(0) <= 0.5
    star = r <= 0.45 + 0.55 * torch.cos(5 * phi).clamp(min=0) ** 2  # five rounded points
    cross = ((u.abs() <= 0.3) & (v.abs() <= 1.0)) | ((v.abs() <= 0.3) & (u.abs() <= 1.0))
    masks = {
        "circle": r <= 1.0,
        "square": torch.maximum(u.abs(), v.abs()) <= 0.8,
        "triangle": triangle,
        "star": star,
        "cross": cross,
        "ring": (r <= 1.0) & (r >= 0.55),
    }
    return torch.stack([masks[name] for name in SHAPES])


def render(scenes, size=64, supersample=2):
    """Rasterise ``scenes`` to images: uint8 [B, 3, size, size].

    Shapes are drawn at ``supersample`` times the resolution and box-filtered down (anti-aliasing);
    the background carries mild per-pixel noise.
    """
    hi = size * supersample
    n = scenes.label.numel()
    axis = (torch.arange(hi, dtype=torch.float32) + 0.5) / hi
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")  # [hi, hi]
    dx = gx[None] - scenes.centre[:, 0, None, None]  # [B, hi, hi]
    dy = gy[None] - scenes.centre[:, 1, None, None]
    cos, sin = torch.cos(scenes.angle)[:, None, None], torch.sin(scenes.angle)[:, None, None]
    radius = scenes.radius[:, None, None]
    u = (cos * dx + sin * dy) / radius
    v = (-sin * dx + cos * dy) / radius
    mask = _shape_masks(u, v)[scenes.shape, torch.arange(n)].float()  # [B, hi, hi]
    mask = F.avg_pool2d(mask[:, None], supersample)  # [B, 1, size, size] coverage
    noise_gen = torch.Generator().manual_seed(scenes.noise_seed)
    background = scenes.bg_rgb[:, :, None, None] + 0.05 * torch.randn(n, 3, size, size, generator=noise_gen)
    image = mask * scenes.fg_rgb[:, :, None, None] + (1 - mask) * background
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def generate(labels, seed, size=64):
    """Images for ``labels`` (uint8 [B, 3, size, size]), a pure function of ``labels`` and ``seed``."""
    return render(sample_scenes(labels, seed), size=size)
