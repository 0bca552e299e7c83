r"""Noise-prediction networks for VP-SDE diffusion models: a small U-Net for images, an MLP for rows.

Both map a noisy input :math:`y_t` and a time :math:`t \in (0, 1]` to
:math:`\sigma(t)\, s(y_t, t)`, the score scaled by the noise level, which
denoising score matching trains towards :math:`-\epsilon`
(:class:`~dgmood.backbones.diffusion.ScoreDiffusion`). Every operation acts on
each sample alone (group normalization, no batch statistics), so a sample's
output never depends on its batch mates.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ScoreUNet", "ScoreMLP", "time_embedding"]


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    r"""Sinusoidal features of :math:`1000 t`: :math:`[\sin(1000 t\, \omega_j), \cos(1000 t\, \omega_j)]`,
    :math:`\omega_j = 10^{-4 j / (dim/2)}` (Vaswani et al., 2017; Ho et al., 2020). Shape (n, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
    angles = 1000.0 * t.reshape(-1, 1) * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], 1)


def _groups(channels: int) -> int:
    return math.gcd(8, channels)


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added in between, plus a (1x1 if needed) skip."""

    def __init__(self, c_in: int, c_out: int, t_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(t_dim, c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        out = self.conv1(nn.functional.silu(self.norm1(h)))
        out = out + self.time(emb)[:, :, None, None]
        out = self.conv2(nn.functional.silu(self.norm2(out)))
        return self.skip(h) + out


class ScoreUNet(nn.Module):
    r"""U-Net for :math:`\sigma(t) s(y, t)` on images (Ho et al., 2020, without attention).

    Levels at full, 1/2 and 1/4 resolution (28 -> 14 -> 7 for 28x28), each
    with ``blocks`` residual blocks of ``channels * mult`` channels on the way
    down and ``blocks`` + 1 on the way up (with the skip connections); the time
    enters each block as a learned shift of its channels. H and W must be
    divisible by 4. The defaults (32 channels, mults (1, 2, 2), 1 block) give
    about 1.6 M parameters: sized for CPU training.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        channels: int = 32,
        mults: tuple[int, ...] = (1, 2, 2),
        blocks: int = 1,
        t_dim: int = 128,
    ):
        super().__init__()
        c, h, w = (int(s) for s in input_shape)
        if h % 2 ** (len(mults) - 1) or w % 2 ** (len(mults) - 1):
            raise ValueError(f"ScoreUNet needs H and W divisible by {2 ** (len(mults) - 1)}, got {input_shape}.")
        self.t_dim = int(t_dim)
        self.time_mlp = nn.Sequential(nn.Linear(t_dim, 4 * t_dim), nn.SiLU(), nn.Linear(4 * t_dim, 4 * t_dim))
        e = 4 * t_dim
        self.stem = nn.Conv2d(c, channels, 3, padding=1)
        widths = [channels * m for m in mults]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, prev = [channels], channels
        for i, width in enumerate(widths):
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(_ResBlock(prev, width, e))
                prev = width
                skips.append(prev)
            self.down.append(level)
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(prev, prev, 3, stride=2, padding=1))
                skips.append(prev)
        self.mid = nn.ModuleList([_ResBlock(prev, prev, e), _ResBlock(prev, prev, e)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, width in reversed(list(enumerate(widths))):
            level = nn.ModuleList()
            for _ in range(blocks + 1):
                level.append(_ResBlock(prev + skips.pop(), width, e))
                prev = width
            self.up.append(level)
            if i > 0:
                self.upsample.append(nn.Conv2d(prev, prev, 3, padding=1))
        self.head = nn.Sequential(nn.GroupNorm(_groups(prev), prev), nn.SiLU(), nn.Conv2d(prev, c, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(time_embedding(t, self.t_dim))
        h = self.stem(y)
        hs = [h]
        for i, level in enumerate(self.down):
            for block in level:
                h = block(h, emb)
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                hs.append(h)
        for block in self.mid:
            h = block(h, emb)
        for i, level in enumerate(self.up):
            for block in level:
                h = block(torch.cat([h, hs.pop()], 1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](nn.functional.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.head(h)


class ScoreMLP(nn.Module):
    r"""MLP for :math:`\sigma(t) s(y, t)` on rows of :math:`\mathbb R^D`: ``n_layers`` hidden
    SiLU layers of width ``hidden`` over the input concatenated with a time embedding."""

    def __init__(self, n_features: int, hidden: int = 256, n_layers: int = 3, t_dim: int = 32):
        super().__init__()
        self.t_dim = int(t_dim)
        layers, width = [], int(n_features) + self.t_dim
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        last = nn.Linear(width, int(n_features))
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([y, time_embedding(t, self.t_dim)], 1))
