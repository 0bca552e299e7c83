r"""Normal-bundle LID of a diffusion model (Stanczuk et al., 2024; Kamkari et al., ICML 2024).

Near a data manifold, the score at a slightly noised copy of a point points
back to the manifold: it spans the *normal* directions. Stack
:math:`K` such outputs of the network
(:math:`n = \sigma(t_0) s`, ``sigma_score``),

.. math::

    v_j = \sigma(t_0)\, s(\psi(t_0) y_0 + \sigma(t_0)\epsilon_j,\ t_0), \qquad
    V = [v_1; \dots; v_K] / \sqrt K \in \mathbb R^{K \times D},

:math:`\epsilon_j \sim \mathcal N(0, I)` shared by every point, and take its
singular values. Along normal directions :math:`v_j \approx -\epsilon_j`, so
those singular values are near 1; along the manifold they are near 0. Hence

.. math:: \mathrm{LID}(x; \tau) = \#\{ i : \sigma_i(V) < \tau \}

(D minus the number of normal directions). Dividing by :math:`\sqrt K` and
using :math:`\sigma s` rather than the reference's reverse drift
:math:`-\tfrac12\beta y - \beta s` makes :math:`\tau` scale-free (the
reference tutorial's threshold -3 on its scale is about :math:`\tau = 0.32`
here). Without a threshold, :func:`gap_lid` cuts at the largest gap of the
log singular values.

Cost: K network evaluations (:math:`K = 4D` by default, 3136 for 28x28
images) and one :math:`K \times D` SVD per point; FLIPD
(:mod:`dgmood.lid.flipd`) needs one evaluation and a few JVPs.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..backbones.protocols import ScoreModel
from .base import LIDEstimator, calibrate_log_tau

__all__ = ["normal_bundle_singular_values", "gap_lid", "NormalBundleLID"]


@torch.no_grad()
def normal_bundle_singular_values(model, y0: torch.Tensor, eps: torch.Tensor, t0: float = 0.01,
                                  chunk_size: int = 256) -> torch.Tensor:
    r"""Singular values of :math:`V` (module docstring) for each row of ``y0`` (model space),
    descending, float64, shape (n, D). ``eps`` (K, \*shape): the noise draws, shared by all rows.

    Each point's K copies are evaluated in chunks of ``chunk_size`` rows (the
    last chunk padded to that size), so its values do not depend on the other
    points. No autograd graph is built (one would hold the activations of all
    K evaluations).
    """
    t0 = float(t0)
    if not 0.0 < t0 < 1.0:
        raise ValueError(f"The normal bundle needs t0 in (0, 1), got {t0}.")
    psi, sigma = float(model.sde.psi(t0)), float(model.sde.sigma(t0))
    k = eps.shape[0]
    pad = (-k) % chunk_size
    noise = torch.cat([eps, eps[:1].expand(pad, *eps.shape[1:])]) if pad else eps
    out = []
    for point in y0:
        rows = [model.sigma_score(psi * point + sigma * noise[s : s + chunk_size], t0)
                for s in range(0, len(noise), chunk_size)]
        v = torch.cat(rows)[:k].reshape(k, -1).to(torch.float64) / math.sqrt(k)
        out.append(torch.linalg.svdvals(v))
    return torch.stack(out)


def gap_lid(sv: np.ndarray) -> np.ndarray:
    """LID without a threshold: the singular values below the largest gap of their logarithms.

    ``sv`` (n, D), descending: LID = D - (number of values above the gap).
    """
    log_sv = np.log(np.maximum(np.asarray(sv, dtype=np.float64), 1e-300))
    normal = np.argmax(log_sv[:, :-1] - log_sv[:, 1:], axis=1) + 1
    return (log_sv.shape[1] - normal).astype(np.float64)


class NormalBundleLID(LIDEstimator):
    r"""The normal-bundle estimator behind :class:`~dgmood.lid.base.LIDEstimator`'s interface.

    Parameters
    ----------
    t0 : float, default=0.01
        Noise time of the copies (the ICML paper's 0.01).
    n_draws : int or None
        K, the noisy copies per point; None: 4 D.
    chunk_size : int
        Copies per network call.

    The count :math:`\#\{\sigma_i < \tau\}` *rises* with :math:`\tau`;
    :meth:`calibrate` bisects on it accordingly. ``log_tau=None`` in
    :meth:`count` gives :func:`gap_lid`.
    """

    protocol = ScoreModel
    n_generators = 1
    per_point = True

    def __init__(self, t0: float = 0.01, n_draws: int | None = None, chunk_size: int = 256):
        if not 0.0 < float(t0) < 1.0:
            raise ValueError(f"The normal bundle needs t0 in (0, 1), got {t0}.")
        self.t0, self.n_draws, self.chunk_size = float(t0), n_draws, int(chunk_size)

    def raw(self, model, x, generators, z=None, local_decoder=None):
        """Singular values ``{"sv": (n, D)}``; dequantization noise, then the K draws, from ``generators[0]``."""
        y0 = model.to_model_space(x, generators[0], shared_noise=True)
        k = int(self.n_draws or 4 * model.n_dims)
        eps = torch.randn(k, *y0.shape[1:], generator=generators[0], device=y0.device, dtype=y0.dtype)
        return {"sv": normal_bundle_singular_values(model, y0, eps, self.t0, self.chunk_size)}

    def count(self, raw, log_tau):
        sv = np.asarray(raw["sv"], dtype=np.float64)
        if log_tau is None:
            return gap_lid(sv)
        return (sv < math.exp(log_tau)).sum(1).astype(np.float64)

    def calibrate(self, raw, target):
        """:math:`\\log\\tau` whose mean count is closest to ``target``: bisection on the rising count,
        then the middle (in log) of the interval between the two pooled singular values around
        that :math:`\\tau`, over which the count is the same, so that new points are not decided by
        a threshold sitting on a calibration point's value."""
        log_tau = -calibrate_log_tau(lambda u: self.count(raw, -u), target)
        pooled = np.log(np.maximum(np.asarray(raw["sv"], dtype=np.float64).ravel(), 1e-300))
        below, above = pooled[pooled < log_tau], pooled[pooled >= log_tau]
        if below.size and above.size:
            return float(0.5 * (below.max() + above.min()))
        return float(log_tau)
