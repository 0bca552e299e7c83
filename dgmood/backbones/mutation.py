r"""Input mutation for the background model of Ren et al.'s likelihood ratio (NeurIPS 2019).

The background model is trained on perturbed copies of the training images, so
that it learns the population-level statistics (background) but not the
semantics; :math:`\log p(x) - \log p_{\mathrm{bg}}(x)` then cancels the
background's share of the likelihood. Each 8-bit pixel, with probability
``rate``, is replaced by a uniformly drawn *different* value,
:math:`k' = (k + U\{1, \dots, 255\}) \bmod 256`, as alibi-detect does (Ren's
released code draws from all 256 values, so it may redraw the same one).
No sklearn here.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["mutate_pixels", "MutatedInput"]


def mutate_pixels(k: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``k`` (integer-valued pixels 0..255, any float or integer dtype) with each pixel, with probability
    ``rate``, moved to a uniformly drawn different value; same dtype and shape."""
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"mutation rate must lie in [0, 1], got {rate}.")
    mask = torch.rand(k.shape, generator=generator, device=k.device) < float(rate)
    shift = torch.randint(1, 256, k.shape, generator=generator, device=k.device)
    mutated = (k.to(torch.int64) + shift) % 256
    return torch.where(mask, mutated, k.to(torch.int64)).to(k.dtype)


class MutatedInput(nn.Module):
    """Wrap a backbone so that, in training mode only, its input pixels ([0, 1], 8-bit grid) are mutated
    at ``rate`` with fresh draws from the global RNG per batch; ``forward`` is the backbone's loss on
    them, so skorch trains it unchanged. In eval mode the input passes untouched; score with ``.module``."""

    def __init__(self, module: nn.Module, rate: float = 0.3):
        super().__init__()
        if not 0.0 <= float(rate) <= 1.0:
            raise ValueError(f"mutation rate must lie in [0, 1], got {rate}.")
        self.module, self.rate = module, float(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.rate > 0:
            x = mutate_pixels(torch.round(x * 255.0), self.rate) / 255.0
        return self.module(x)
