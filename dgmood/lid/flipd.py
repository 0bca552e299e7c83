r"""FLIPD: local intrinsic dimension from one score evaluation and one trace (Kamkari et al., NeurIPS 2024).

For a VP-SDE diffusion model (:class:`~dgmood.backbones.diffusion.ScoreDiffusion`)
with network output :math:`n(y) = \sigma(t_0)\, s(y, t_0)` (``sigma_score``):

.. math::

    \mathrm{FLIPD}(x, t_0) = D + \sigma(t_0)\,\mathrm{tr}\,\nabla_y n(y) + \|n(y)\|^2
    = D + \sigma^2(t_0)\,[\mathrm{tr}\,\nabla s(y, t_0) + \|s(y, t_0)\|^2],
    \qquad y = \psi(t_0)\, y_0,

the rate of change of :math:`\log p_{t_0}(\psi(t_0) y_0)` in :math:`\log\sigma`
(Fokker-Planck), which tends to the intrinsic dimension of a data manifold
through :math:`y_0` as :math:`t_0 \to 0`: for a Gaussian on a d-dimensional
linear subspace it is :math:`d` at :math:`t_0 = 0`. :math:`y_0` is the input
in the model's own space (images dequantized and scaled to [-1, 1)).

:math:`t_0` plays the role of the flow's threshold :math:`\tau`: the scale
below which directions count as off the manifold. It must leave
:math:`\sigma(t_0)` well above the dequantization spread (about 0.008 in
[-1, 1) units): there the data are full-dimensional and FLIPD tends to D.
The reference default :math:`t_0 = 10^{-4}` (:math:`\sigma \approx 0.003`) is
not; its image runs use 0.01, 0.1, 0.2.

Cost: the exact trace takes D Jacobian-vector products (784 for 28x28
images); Hutchinson's estimate takes ``n_probes``, with Rademacher probes
shared by every sample of a batch, so a sample's value does not depend on its
batch mates.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..backbones.diffusion import rademacher, value_and_trace
from ..backbones.protocols import ScoreModel
from .base import LIDEstimator

__all__ = ["flipd", "flipd_curve", "FLIPDLID", "T0_GRID"]

#: The log grid of :math:`t_0` that ``t0="auto"`` searches: 16 points over [1e-3, 0.5].
T0_GRID = tuple(float(t) for t in np.geomspace(1e-3, 0.5, 16))


@torch.no_grad()
def flipd(model, y0: torch.Tensor, t0: float, probes: torch.Tensor | None = None) -> torch.Tensor:
    r"""FLIPD of each row of ``y0`` (model space) at :math:`t_0` (module docstring), float64 (n,).

    ``probes`` (P, \*shape): Hutchinson's trace estimate with those probes,
    shared by all rows; None: the exact trace (D JVPs, chunked). Computed
    without an autograd graph (the JVPs are forward-mode): FLIPD is a score,
    not a loss, and a graph per probe would hold every activation of the
    network for the whole batch.
    """
    t0 = float(t0)
    if not 0.0 < t0 < 1.0:
        raise ValueError(f"FLIPD needs t0 in (0, 1), got {t0}.")
    psi, sigma = float(model.sde.psi(t0)), float(model.sde.sigma(t0))
    n, trace = value_and_trace(lambda u: model.sigma_score(u, t0), psi * y0, probes)
    norm2 = n.reshape(n.shape[0], -1).to(torch.float64).pow(2).sum(1)
    return model.n_dims + sigma * trace + norm2


def flipd_curve(model, y0: torch.Tensor, t0s, probes: torch.Tensor | None = None) -> torch.Tensor:
    """FLIPD at each :math:`t_0` of ``t0s`` (same probes for all), float64 (n, len(t0s))."""
    return torch.stack([flipd(model, y0, t0, probes) for t0 in t0s], 1)


class FLIPDLID(LIDEstimator):
    r"""FLIPD as an LID estimator of :class:`~dgmood.lid.base.LIDEstimator`'s interface.

    Its "threshold" is :math:`\log t_0`: :meth:`raw` evaluates FLIPD at every
    :math:`t_0` in ``t0s`` (one column each); :meth:`count` returns the column
    of the requested :math:`t_0`; :meth:`calibrate` picks the :math:`t_0` of
    ``t0s`` whose mean FLIPD over the given points is closest to the target.
    A detector calibrates on a grid (:data:`T0_GRID`) over a few held-out
    points, then sets ``t0s`` to the chosen value alone, so that scoring costs
    one column.

    Parameters
    ----------
    t0s : times in (0, 1).
    trace : "hutchinson" (``n_probes`` Rademacher probes, default 8) or "exact" (D JVPs).
    """

    protocol = ScoreModel
    n_generators = 1
    per_point = False
    calibrates_on_grid = True

    def __init__(self, t0s=T0_GRID, trace: str = "hutchinson", n_probes: int = 8):
        if trace not in ("hutchinson", "exact"):
            raise ValueError(f"trace must be 'hutchinson' or 'exact', got {trace!r}.")
        self.t0s = tuple(float(t) for t in np.atleast_1d(t0s))
        if not self.t0s or not all(0.0 < t < 1.0 for t in self.t0s):
            raise ValueError(f"FLIPD needs t0 values in (0, 1), got {t0s}.")
        self.trace, self.n_probes = trace, int(n_probes)

    def raw(self, model, x, generators, z=None, local_decoder=None):
        """``{"flipd": (n, len(t0s)), "log_t0": (n, len(t0s))}``; the dequantization noise (shared by
        the batch) and then the probes come from ``generators[0]``: a detector gives the estimator
        its own stream, so its dequantized input is another draw than the likelihood's."""
        y0 = model.to_model_space(x, generators[0], shared_noise=True)
        probes = None
        if self.trace == "hutchinson":
            probes = rademacher(self.n_probes, y0.shape[1:], generators[0], y0.device, y0.dtype)
        values = flipd_curve(model, y0, self.t0s, probes)
        log_t0 = torch.log(torch.tensor(self.t0s, dtype=torch.float64)).expand(len(y0), -1)
        return {"flipd": values, "log_t0": log_t0}

    def count(self, raw, log_tau):
        """FLIPD at :math:`t_0 = e^{\\log\\tau}`: the column computed at that time (within 1e-9)."""
        log_t0 = np.asarray(raw["log_t0"], dtype=np.float64)[0]
        j = int(np.argmin(np.abs(log_t0 - log_tau)))
        if abs(log_t0[j] - log_tau) > 1e-9:
            raise ValueError(f"FLIPD was computed at t0 = {np.exp(log_t0).tolist()}, not at {math.exp(log_tau)}.")
        return np.asarray(raw["flipd"], dtype=np.float64)[:, j]

    def calibrate(self, raw, target):
        """:math:`\\log t_0` of the column whose mean FLIPD is closest to ``target``."""
        means = np.asarray(raw["flipd"], dtype=np.float64).mean(0)
        log_t0 = np.asarray(raw["log_t0"], dtype=np.float64)[0]
        return float(log_t0[int(np.argmin(np.abs(means - float(target))))])
