"""Patch RandAugment: RandAugment applied to every image patch on its own (the official DroPLe student view).

The image is cut into ``patch x patch`` tiles at stride ``patch`` (196 tiles of 16 x 16 at 224 px; pixels
beyond the last whole tile are left as they are). Each tile draws ``num_ops`` operations uniformly, with
replacement, from ``OPS`` and applies them in order to itself alone, always (no probability), at magnitude
``magnitude`` of ``MAX_MAGNITUDE``. The four enhance operations blend with a degenerate image by the factor
``magnitude / 10 * 1.8 + 0.1`` (1.36 at 7), with Pillow's ``ImageEnhance`` semantics computed on the tile:
Brightness with black, Contrast with the tile's mean grey, Color with its greyscale, Sharpness with its
3 x 3 smoothed version (border pixels kept); AutoContrast and Equalize are Pillow's ``ImageOps`` per channel
of the tile.

``PatchRandAugment`` computes every tile of an image at once: one op at a time over the tiles that drew it
(``[P, 3, p, p]`` integer arithmetic, Pillow's rounding), not a loop over tiles. ``reference_patch_randaugment``
is the per-tile loop through Pillow itself, which defines the result (the test compares the two; the benchmark
times both: ``python -m dpl.bench --patch-randaugment``). The draw uses torch's global generator, which
``DatasetWrapper`` seeds per sample, so a resumed run augments the same way.
"""
import torch
from PIL import Image, ImageEnhance, ImageOps
from torch import nn

OPS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Contrast", "Color", "Sharpness")
MAX_MAGNITUDE = 10
SMOOTH_KERNEL = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0  # ImageFilter.SMOOTH


def enhance_factor(magnitude):
    """The blend factor of the enhance operations at ``magnitude`` (of 10): 0.1 .. 1.9."""
    return magnitude / MAX_MAGNITUDE * 1.8 + 0.1


def draw_ops(num_patches, num_ops, generator=None):
    """``[P, num_ops]`` indices into ``OPS``: each tile's operations, in order."""
    return torch.randint(len(OPS), (num_patches, num_ops), generator=generator)


# ----- the operations on tiles [P, 3, p, p] (int32 values 0..255) -------------------------------------------

def _blend(degenerate, tiles, factor):
    """Pillow's ``Image.blend(degenerate, tiles, factor)``: float32 arithmetic, truncated, clipped to 0..255."""
    mixed = degenerate.float() + factor * (tiles - degenerate).float()
    return mixed.clamp(0, 255).to(torch.int32)  # non-negative after the clamp: truncation is a floor


def _grey(tiles):
    """Pillow's RGB -> L conversion, ``[P, 1, p, p]`` (ITU-R 601-2 luma in 16-bit fixed point, rounded)."""
    r, g, b = tiles[:, 0:1], tiles[:, 1:2], tiles[:, 2:3]
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


def _histograms(tiles):
    """``[P, 3, 256]`` per-channel histograms of every tile."""
    p, c = tiles.shape[:2]
    flat = tiles.reshape(p * c, -1).long() + torch.arange(p * c).unsqueeze(1) * 256
    return torch.bincount(flat.reshape(-1), minlength=p * c * 256).reshape(p, c, 256)


def _apply_luts(tiles, luts):
    """``luts`` [P, 3, 256] applied to ``tiles`` channel by channel."""
    p, c = tiles.shape[:2]
    return torch.gather(luts, 2, tiles.reshape(p, c, -1).long()).reshape(tiles.shape).to(torch.int32)


def identity(tiles, factor):
    return tiles


def autocontrast(tiles, factor):
    """``ImageOps.autocontrast`` (cutoff 0): each channel's range stretched to 0..255 by an integer LUT."""
    flat = tiles.flatten(2)
    lo, hi = flat.amin(dim=2, keepdim=True).double(), flat.amax(dim=2, keepdim=True).double()  # [P, 3, 1]
    span = (hi - lo).clamp_min(1)
    scale = torch.full_like(span, 255.0) / span  # a true division, as Python's (255.0 / t multiplies by 1 / t)
    levels = torch.arange(256, dtype=torch.float64)
    luts = (levels * scale - lo * scale).trunc().clamp(0, 255).long()  # Python's int(): toward zero
    luts = torch.where(hi > lo, luts, levels.long())  # a flat channel stays as it is
    return _apply_luts(tiles, luts)


def equalize(tiles, factor):
    """``ImageOps.equalize``: each channel through the LUT of its cumulative histogram."""
    histograms = _histograms(tiles)  # [P, 3, 256]
    total = histograms.sum(dim=2, keepdim=True)
    levels = torch.arange(256)
    last = torch.where(histograms > 0, levels, -1).amax(dim=2, keepdim=True)  # the highest level present
    step = (total - torch.gather(histograms, 2, last)) // 255
    before = torch.cumsum(histograms, dim=2) - histograms  # pixels below each level
    luts = ((step // 2 + before) // step.clamp_min(1)).clamp(max=255)
    return _apply_luts(tiles, torch.where(step > 0, luts, levels))  # step 0: one level (or almost): unchanged


def brightness(tiles, factor):
    return _blend(torch.zeros_like(tiles), tiles, factor)


def contrast(tiles, factor):
    """Blend with the tile's mean grey (Pillow: ``int(mean of L + 0.5)``)."""
    mean = _grey(tiles).float().mean(dim=(1, 2, 3), keepdim=True)
    return _blend((mean + 0.5).to(torch.int32).expand_as(tiles), tiles, factor)


def color(tiles, factor):
    return _blend(_grey(tiles).expand_as(tiles), tiles, factor)


def sharpness(tiles, factor):
    """Blend with the 3 x 3 SMOOTH filter of the tile (rounded); its one-pixel border is the tile's own."""
    p, c, h, w = tiles.shape
    kernel = SMOOTH_KERNEL.to(torch.float32).expand(c, 1, 3, 3)
    smooth = torch.nn.functional.conv2d(tiles.float(), kernel, groups=c)  # [P, 3, h-2, w-2]
    degenerate = tiles.clone()
    degenerate[:, :, 1:-1, 1:-1] = (smooth + 0.5).clamp(0, 255).to(torch.int32)
    return _blend(degenerate, tiles, factor)


OPERATIONS = (identity, autocontrast, equalize, brightness, contrast, color, sharpness)  # in the order of OPS


def augment_tiles(tiles, ops, factor):
    """``tiles`` [P, 3, p, p] (int32) after each tile's operations ``ops`` [P, N] (indices into ``OPS``)."""
    for round_ops in ops.t():  # the N operations in order; each over all tiles that drew it
        out = tiles.clone()
        for index, operation in enumerate(OPERATIONS):
            chosen = round_ops == index
            if chosen.any():
                out[chosen] = operation(tiles[chosen], factor)
        tiles = out
    return tiles


def to_tiles(image, patch):
    """``([P, 3, p, p] int32 tiles in row-major order, [3, H, W] uint8 image)`` of a PIL RGB image."""
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(image.height, image.width, 3)
    pixels = pixels.permute(2, 0, 1)
    rows, cols = image.height // patch, image.width // patch
    covered = pixels[:, :rows * patch, :cols * patch].to(torch.int32)
    tiles = covered.reshape(3, rows, patch, cols, patch).permute(1, 3, 0, 2, 4).reshape(-1, 3, patch, patch)
    return tiles, pixels


def from_tiles(tiles, pixels, patch):
    """A PIL image: ``pixels`` with its covered part replaced by ``tiles``."""
    _, height, width = pixels.shape
    rows, cols = height // patch, width // patch
    covered = tiles.reshape(rows, cols, 3, patch, patch).permute(2, 0, 3, 1, 4).reshape(3, rows * patch, cols * patch)
    out = pixels.clone()
    out[:, :rows * patch, :cols * patch] = covered.to(torch.uint8)
    return Image.fromarray(out.permute(1, 2, 0).contiguous().numpy(), mode="RGB")


class PatchRandAugment(nn.Module):
    """RandAugment per ``patch x patch`` tile of a PIL image (``INPUT.TRANSFORMS`` name ``patch_randaugment``)."""

    def __init__(self, num_ops=2, magnitude=7, patch=16):
        super().__init__()
        if num_ops < 0 or not 0 <= magnitude <= MAX_MAGNITUDE or patch < 3:
            raise ValueError(f"patch RandAugment: num_ops {num_ops} (>= 0), magnitude {magnitude} (0..{MAX_MAGNITUDE}) "
                             f"and patch {patch} (>= 3) are out of range")
        self.num_ops, self.magnitude, self.patch = num_ops, magnitude, patch

    def forward(self, image, ops=None):
        """``image`` (PIL RGB) augmented; ``ops`` [P, num_ops] fixes the draw (default: drawn now)."""
        tiles, pixels = to_tiles(image.convert("RGB"), self.patch)
        if ops is None:
            ops = draw_ops(len(tiles), self.num_ops)
        return from_tiles(augment_tiles(tiles, ops, enhance_factor(self.magnitude)), pixels, self.patch)

    def extra_repr(self):
        return f"num_ops={self.num_ops}, magnitude={self.magnitude}, patch={self.patch}"


# ----- the definition: Pillow, tile by tile ----------------------------------------------------------------

PIL_OPERATIONS = {
    "Identity": lambda tile, factor: tile,
    "AutoContrast": lambda tile, factor: ImageOps.autocontrast(tile),
    "Equalize": lambda tile, factor: ImageOps.equalize(tile),
    "Brightness": lambda tile, factor: ImageEnhance.Brightness(tile).enhance(factor),
    "Contrast": lambda tile, factor: ImageEnhance.Contrast(tile).enhance(factor),
    "Color": lambda tile, factor: ImageEnhance.Color(tile).enhance(factor),
    "Sharpness": lambda tile, factor: ImageEnhance.Sharpness(tile).enhance(factor),
}


def reference_patch_randaugment(image, ops, magnitude=7, patch=16):
    """Patch RandAugment as described, through Pillow one tile at a time: what ``PatchRandAugment`` computes."""
    image = image.convert("RGB").copy()
    factor = enhance_factor(magnitude)
    cols = image.width // patch
    for index, tile_ops in enumerate(ops.tolist()):
        top, left = index // cols * patch, index % cols * patch
        box = (left, top, left + patch, top + patch)
        tile = image.crop(box)
        for op in tile_ops:
            tile = PIL_OPERATIONS[OPS[op]](tile, factor)
        image.paste(tile, box)
    return image
