"""Data recipe of the reference models: 3x16x16 patches of the photographs bundled with scikit-image, exposure-augmented.

No download: every image below ships inside the scikit-image wheel (``skimage.data``). Recipe, all with fixed seeds:

1. Photographs: colour ``astronaut, chelsea, coffee, hubble_deep_field, immunohistochemistry, retina, rocket`` and
   greyscale (repeated to RGB) ``camera, brick, grass, gravel, moon, coins, clock``; pixel values in [0, 1].
2. Split by position: the rightmost quarter of every image's columns is **held out** (evaluation only); training
   patches come from the other three quarters, so no held-out pixel is ever seen in training.
3. Patch: a random square crop of side ``s ~ U{16 .. min(96, region)}``, resized to 16x16 (bilinear, antialiased),
   flipped left-right with probability 1/2.
4. Exposure class ``c ~ U{dark, mid, bright}`` (the class label) with a target mean brightness ``m`` drawn from
   U(0.03, 0.25), U(0.30, 0.70) or U(0.75, 0.97); the patch is gamma-corrected, ``y = x ** (ln m / ln mean(x))``, so
   very dark, mid and very bright images are all common (one third each) and every patch keeps its own texture.
5. Scaled to [-1, 1] (``2 y - 1``), the range SD's latents roughly occupy.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import torch
from torch.nn import functional as F

COLOUR = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket")
GREY = ("camera", "brick", "grass", "gravel", "moon", "coins", "clock")
#: Target mean brightness ranges (in [0, 1]) of the exposure classes dark, mid, bright.
EXPOSURE = ((0.03, 0.25), (0.30, 0.70), (0.75, 0.97))
HELD_OUT_FRACTION = 0.25
MAX_CROP = 96
SIZE = 16


def load_photographs() -> list[torch.Tensor]:
    """The bundled photographs as float32 ``[3, H, W]`` tensors in [0, 1]."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from skimage import data

    out = []
    for name in COLOUR + GREY:
        im = torch.from_numpy(getattr(data, name)()).float() / 255.0
        im = im.permute(2, 0, 1)[:3] if im.ndim == 3 else im[None].expand(3, -1, -1)
        out.append(im.contiguous())
    return out


def split(im: torch.Tensor, part: str) -> torch.Tensor:
    """``"train"``: the left three quarters of the columns; ``"held_out"``: the rightmost quarter."""
    cut = round(im.shape[-1] * (1 - HELD_OUT_FRACTION))
    return im[..., :cut] if part == "train" else im[..., cut:]


def base_patches(n: int, part: str, seed: int) -> torch.Tensor:
    """``n`` un-augmented 16x16 patches in [0, 1] (``[n, 3, 16, 16]``), images drawn uniformly."""
    gen = torch.Generator().manual_seed(seed)
    regions = [split(im, part) for im in load_photographs()]
    out = torch.empty(n, 3, SIZE, SIZE)
    for i in range(n):
        r = regions[int(torch.randint(len(regions), (1,), generator=gen))]
        h, w = r.shape[-2:]
        s = int(torch.randint(SIZE, min(MAX_CROP, h, w) + 1, (1,), generator=gen))
        y = int(torch.randint(h - s + 1, (1,), generator=gen))
        x = int(torch.randint(w - s + 1, (1,), generator=gen))
        crop = r[None, :, y : y + s, x : x + s]
        out[i] = F.interpolate(crop, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)[0]
    return out.clamp(0.0, 1.0)


def expose(base: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Step 4 and 5 of the recipe: gamma to a random target mean of each patch's exposure class, then to [-1, 1]."""
    lo = torch.tensor([e[0] for e in EXPOSURE])[labels]
    hi = torch.tensor([e[1] for e in EXPOSURE])[labels]
    target = lo + (hi - lo) * torch.rand(labels.shape[0], generator=gen)
    x = base.clamp(1e-3, 1.0)
    mean = x.mean(dim=(1, 2, 3)).clamp(0.02, 0.98)
    gamma = (target.log() / mean.log()).view(-1, 1, 1, 1)
    return x.pow(gamma) * 2.0 - 1.0


def flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    mask = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


@dataclasses.dataclass
class HeldOut:
    """The evaluation set: images in [-1, 1] and their exposure labels (balanced: ``i % 3``)."""

    images: torch.Tensor
    labels: torch.Tensor


def held_out(n: int = 3000, seed: int = 1234) -> HeldOut:
    """Held-out images, same recipe on the held-out quarter of every photograph (fixed seed, balanced classes)."""
    gen = torch.Generator().manual_seed(seed + 1)
    labels = torch.arange(n) % len(EXPOSURE)
    base = flip(base_patches(n, "held_out", seed), gen)
    return HeldOut(expose(base, labels, gen), labels)


def brightness01(x: torch.Tensor) -> torch.Tensor:
    """Mean brightness of each image in [0, 1] (images in [-1, 1])."""
    return (x.mean(dim=tuple(range(1, x.ndim))) + 1.0) / 2.0


def describe(x: torch.Tensor) -> str:
    b = brightness01(x)
    return (
        f"brightness mean {float(b.mean()):.3f} std {float(b.std()):.3f}; "
        f"dark (<0.2) {float((b < 0.2).float().mean()):.2f}, bright (>0.8) {float((b > 0.8).float().mean()):.2f}; "
        f"pixel std {float(x.std()):.3f}; log10 n {math.log10(x.shape[0]):.1f}"
    )
