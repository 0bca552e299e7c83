"""Noise of the hierarchical VAE: binarization of the inputs and per-row generators.

:func:`binarize` draws the Bernoulli inputs; :func:`row_generators` gives each
row a generator seeded by ``random_state`` and the row's bytes, and
:func:`per_row_noise` draws from them, so a row's noise depends on that row
only. Re-exported by :mod:`dgmood.backbones.hvae`.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

__all__ = ["binarize", "row_generators", "per_row_noise"]


def binarize(
    x: torch.Tensor, generator: torch.Generator | None = None, shared_noise: bool = False
) -> torch.Tensor:
    """Bernoulli sample of ``x`` in [0, 1]: ``b ~ Bernoulli(x)`` elementwise.

    Evaluation sets are binarized once, with a seeded ``generator`` created on
    ``x.device``, so that every bound of the same point sees the same bits.

    With ``shared_noise=True`` one uniform draw ``u`` of shape ``(1, *x.shape[1:])``
    serves the whole batch, ``b = 1[u < x]`` (common random numbers): a sample's
    bits do not depend on the other samples in its batch nor on their order.

    ``generator`` may also be a list of CPU generators, one per row (see
    :func:`row_generators`): row i is thresholded by its own ``u_i``, drawn
    from its own generator, so its bits depend on that generator only.
    """
    p = x.clamp(0.0, 1.0)
    if isinstance(generator, (list, tuple)):
        u = per_row_noise(torch.rand, (p.shape[1:],), generator, p.device, p.dtype)[0]
        return (u < p).to(p.dtype)
    if not shared_noise:
        return torch.bernoulli(p, generator=generator)
    u = torch.rand((1, *p.shape[1:]), generator=generator, device=p.device, dtype=p.dtype)
    return (u < p).to(p.dtype)


def row_generators(X: np.ndarray, seed: int) -> list[torch.Generator]:
    """One CPU generator per row of ``X``, seeded by ``seed`` and a hash of the row's bytes.

    A row's noise then depends on its content and ``seed`` only: not on its
    batch mates, the batch size or the row order, and two different rows get
    independent draws (unlike noise shared by a batch, which correlates every
    score of an evaluation set through one draw).
    """
    X = np.ascontiguousarray(X)
    gens = []
    for row in X.reshape(len(X), -1):
        digest = hashlib.blake2b(row.tobytes(), digest_size=8, key=int(seed).to_bytes(8, "little", signed=True))
        gens.append(torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1))
    return gens


def per_row_noise(draw, shapes, generators, device, dtype) -> list[torch.Tensor]:
    """``[draw((n, *shape))]`` for each shape, row i drawn from ``generators[i]`` (on the CPU, then moved)."""
    out = []
    for shape in shapes:
        rows = [draw((1, *shape), generator=g, dtype=torch.float32) for g in generators]
        out.append(torch.cat(rows).to(device=device, dtype=dtype))
    return out
