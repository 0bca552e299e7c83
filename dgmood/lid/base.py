r"""The interface every LID estimator follows, and small helpers they share.

An estimator of local intrinsic dimension (LID) does three things, kept apart
so that a threshold can be calibrated once and counts taken for free:

* :meth:`LIDEstimator.raw`: per-point raw quantities of one batch (e.g. the
  Jacobian's singular values, or Lanczos quadrature nodes and weights), the
  only step that runs the model;
* :meth:`LIDEstimator.count`: the LID of every point for a threshold
  :math:`\log\tau`, from those raw quantities alone;
* :meth:`LIDEstimator.calibrate`: the fit-time step, :math:`\log\tau` such
  that the mean count over held-out points equals a target LID.

Counts must be batch-independent bit for bit: a point's count depends on its
own raw quantities only, reduced in a fixed order (:func:`rowwise_sum`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["LIDEstimator", "rowwise_sum", "calibrate_log_tau"]


def rowwise_sum(values: np.ndarray) -> np.ndarray:
    """Sum over the last axis, one column at a time, left to right.

    A vectorized reduction may add a row's terms in an order that depends on
    how many rows there are (kernels vectorize across rows or along them);
    adding whole columns elementwise fixes the order, so a row's sum is the
    same whatever array it sits in.
    """
    values = np.asarray(values, dtype=np.float64)
    total = np.zeros(values.shape[:-1], dtype=np.float64)
    for j in range(values.shape[-1]):
        total = total + values[..., j]
    return total


def calibrate_log_tau(count, target: float, lo: float = -20.0, hi: float = 20.0, tol: float = 1e-3) -> float:
    r"""Bisection on :math:`\log\tau` so that the mean count over a sample equals ``target``.

    ``count(log_tau)`` returns per-point LIDs, non-increasing in
    :math:`\log\tau` and computed from stored raw quantities (so each call is
    free). Returns the :math:`\log\tau` of the bisection path whose mean is
    closest to ``target`` (Kamkari et al., ICML 2024, with local PCA giving the
    target). A target outside the reachable range is a ``ValueError``.
    """
    def mean(t: float) -> float:
        return float(np.mean(np.asarray(count(t), dtype=np.float64)))

    if not mean(hi) <= target <= mean(lo):
        raise ValueError(
            f"target mean LID {target:.1f} is outside the reachable range "
            f"[{mean(hi):.1f}, {mean(lo):.1f}] for log_tau in [{lo}, {hi}]."
        )
    best = (abs(mean(lo) - target), lo)
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        m = mean(mid)
        best = min(best, (abs(m - target), mid))
        if m > target:
            lo = mid
        else:
            hi = mid
    return float(best[1])


class LIDEstimator:
    """Base class of LID estimators (see the module docstring).

    Class attributes a subclass sets:

    * ``protocol``: what the backbone must follow
      (:mod:`dgmood.backbones.protocols`), checked by the detector in ``fit``;
    * ``n_generators``: random streams :meth:`raw` draws from (probes, noise);
    * ``per_point``: True when :meth:`raw` handles each point on its own with
      fixed shapes, so a detector may skip the padding rows of a batch.
    """

    protocol: type | None = None
    n_generators: int = 1
    per_point: bool = False

    def raw(
        self, model: Any, x: torch.Tensor, generators: list[torch.Generator], z: torch.Tensor | None = None,
        local_decoder: Any = None,
    ) -> dict[str, torch.Tensor]:
        """Per-point raw quantities of one batch: tensors whose first axis is the point.

        ``x``: the batch as the model takes it; for a
        :class:`~dgmood.backbones.protocols.LatentFlow`, ``z`` its latent and
        ``local_decoder`` the decoder anchored at its points (else None).
        """
        raise NotImplementedError

    def count(self, raw: dict[str, np.ndarray], log_tau: float) -> np.ndarray:
        """LID of every point for the threshold :math:`\\log\\tau`, shape (n,), float64."""
        raise NotImplementedError

    def calibrate(self, raw: dict[str, np.ndarray], target: float) -> float:
        """:math:`\\log\\tau` whose mean count over ``raw``'s points is ``target`` (bisection)."""
        return calibrate_log_tau(lambda t: self.count(raw, t), target)
