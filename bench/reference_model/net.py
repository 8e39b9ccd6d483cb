"""The reference network: a small class-conditional UNet for 3x16x16 images (pure torch, no diffusers dependency).

``TinyUNet(x_vp, t, label)`` returns the model output (v or eps) for a VP-scaled input ``x_vp`` at a (continuous)
timestep ``t`` in [0, 999] and an integer class label (``NULL_LABEL`` = unconditional, the CFG negative).
:class:`CompVisModel` wraps it like the WebUI's LatentDiffusion model (``alphas_cumprod``, ``apply_model``) so that
``k_diffusion.external.CompVisVDenoiser`` / ``CompVisDenoiser`` sample it exactly as the WebUI samples a checkpoint.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

#: Exposure classes of the data recipe (data.py): 0 dark, 1 mid, 2 bright; 3 = no label (CFG's negative "prompt").
CLASSES = ("dark", "mid", "bright")
NULL_LABEL = len(CLASSES)
IMAGE_SHAPE = (3, 16, 16)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (continuous) timesteps, as in LDM/diffusers (max period 10000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int) -> None:
        super().__init__()
        self.n1 = nn.GroupNorm(8, cin)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.e = nn.Linear(emb, 2 * cout)
        self.n2 = nn.GroupNorm(8, cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.c2.weight)
        nn.init.zeros_(self.c2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.silu(self.n1(x)))
        scale, shift = self.e(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.n2(h) * (1 + scale) + shift)
        return self.skip(x) + self.c2(h)


class TinyUNet(nn.Module):
    """2x2 pixel-unshuffle (3x16x16 -> 12x8x8), then an 8x8 -> 4x4 UNet with FiLM conditioning on time + class and
    the input's per-channel mean (a direct path for global brightness and colour), then pixel-shuffle back."""

    def __init__(self, ch: int = 32, emb: int = 128) -> None:
        super().__init__()
        self.ch, self.emb_dim = ch, emb
        self.t_mlp = nn.Sequential(nn.Linear(ch, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.label = nn.Embedding(NULL_LABEL + 1, emb)
        self.g = nn.Linear(3, emb)
        c1, c2 = ch, 2 * ch
        self.inp = nn.Conv2d(12, c1, 3, padding=1)
        self.d1 = ResBlock(c1, c1, emb)
        self.down = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.m1 = ResBlock(c2, c2, emb)
        self.m2 = ResBlock(c2, c2, emb)
        self.u1 = ResBlock(c2 + c1, c1, emb)
        self.out_norm = nn.GroupNorm(8, c1)
        self.out = nn.Conv2d(c1, 12, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        emb = self.t_mlp(timestep_embedding(t, self.ch)) + self.label(label) + self.g(x.mean(dim=(2, 3)))
        emb = F.silu(emb)
        h1 = self.d1(self.inp(F.pixel_unshuffle(x, 2)), emb)
        h = self.m2(self.m1(self.down(h1), emb), emb)
        h = self.u1(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h1], 1), emb)
        return F.pixel_shuffle(self.out(F.silu(self.out_norm(h))), 2)


class CompVisModel(nn.Module):
    """What ``k_diffusion.external.CompVis[V]Denoiser`` expects of the WebUI's model: ``alphas_cumprod`` (float32, as
    the WebUI holds it) and ``apply_model(x, t, cond)``; ``cond`` is a LongTensor of class labels (one per row)."""

    def __init__(self, net: TinyUNet, alphas_cumprod: torch.Tensor, parameterization: str) -> None:
        super().__init__()
        self.net = net
        self.parameterization = parameterization
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(torch.float32))

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.net(x.float(), t.float(), cond).to(x.dtype)
