r"""Input mutation for the background model of Ren et al.'s likelihood ratio (NeurIPS 2019).

The background model is trained on perturbed copies of the training images, so
that it learns the population-level statistics (background) but not the
semantics; :math:`\log p(x) - \log p_{\mathrm{bg}}(x)` then cancels the
background's share of the likelihood. Each 8-bit pixel, with probability
``rate``, is replaced by a uniformly drawn *different* value,
:math:`k' = (k + U\{1, \dots, 255\}) \bmod 256`, as alibi-detect does (Ren's
released code draws from all 256 values, so it may redraw the same one).

Real-valued rows have no pixel grid; for them dgmood's analogue (not in Ren
et al., whose non-image data were DNA sequences) is :func:`mutate_rows`: each
entry, with probability ``rate``, takes the same feature's value from another
row of the batch, which keeps every feature's marginal distribution (the
"background") and breaks the dependence between features (the semantics).
No sklearn here.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["mutate_pixels", "mutate_rows", "MutatedInput", "MUTATIONS"]


def mutate_pixels(k: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``k`` (integer-valued pixels 0..255, any float or integer dtype) with each pixel, with probability
    ``rate``, moved to a uniformly drawn different value; same dtype and shape."""
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"mutation rate must lie in [0, 1], got {rate}.")
    mask = torch.rand(k.shape, generator=generator, device=k.device) < float(rate)
    shift = torch.randint(1, 256, k.shape, generator=generator, device=k.device)
    mutated = (k.to(torch.int64) + shift) % 256
    return torch.where(mask, mutated, k.to(torch.int64)).to(k.dtype)


def mutate_rows(x: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` (rows of real features, shape (n, ...)) with each entry, with probability ``rate``, replaced
    by the same feature's value in a uniformly drawn other row of ``x`` (marginals kept; n >= 2)."""
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"mutation rate must lie in [0, 1], got {rate}.")
    n = x.shape[0]
    if n < 2:
        return x.clone()
    mask = torch.rand(x.shape, generator=generator, device=x.device) < float(rate)
    # another row: i + U{1..n-1} mod n, per entry
    other = (torch.arange(n, device=x.device).view(-1, *([1] * (x.dim() - 1)))
             + torch.randint(1, n, x.shape, generator=generator, device=x.device)) % n
    return torch.where(mask, torch.gather(x, 0, other), x)


def _pixels(x: torch.Tensor, rate: float) -> torch.Tensor:
    return mutate_pixels(torch.round(x * 255.0), rate) / 255.0


#: How :class:`MutatedInput` perturbs a batch: "pixels" (8-bit images in [0, 1]) or "rows" (real features).
MUTATIONS = {"pixels": _pixels, "rows": mutate_rows}


class MutatedInput(nn.Module):
    """Wrap a backbone so that, in training mode only, its input is mutated at ``rate`` with fresh draws
    from the global RNG per batch: ``kind="pixels"`` (default) for 8-bit pixels in [0, 1]
    (:func:`mutate_pixels`), ``"rows"`` for real-valued rows (:func:`mutate_rows`). ``forward`` is the
    backbone's loss on them, so skorch trains it unchanged. In eval mode the input passes untouched;
    score with ``.module``."""

    def __init__(self, module: nn.Module, rate: float = 0.3, kind: str = "pixels"):
        super().__init__()
        if not 0.0 <= float(rate) <= 1.0:
            raise ValueError(f"mutation rate must lie in [0, 1], got {rate}.")
        if kind not in MUTATIONS:
            raise ValueError(f"mutation kind must be one of {sorted(MUTATIONS)}, got {kind!r}.")
        self.module, self.rate, self.kind = module, float(rate), kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.rate > 0:
            x = MUTATIONS[self.kind](x, self.rate)
        return self.module(x)
