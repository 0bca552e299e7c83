"""Two-component rules (log-likelihood and LID) with thresholds set on held-out ID data only.

The likelihood + LID rule of Kamkari et al. (ICML 2024) calls a sample
in-distribution iff :math:`\\log p(x) \\ge \\psi_L` **and**
:math:`\\mathrm{LID}(x) \\ge \\psi_{\\mathrm{LID}}`. The AUROC their code reports
tunes both thresholds on the test set (see
:func:`dgmood.envelope.oracle_dual_auroc`). Here the thresholds come from
held-out in-distribution data alone: each component is mapped through its
empirical CDF on that data and the score is the smallest of them,

.. math::

    s(x) = \\min_j F_j(c_j(x)).

Thresholding :math:`s` at :math:`q` is the dual rule with every threshold at
the :math:`q`-quantile of its component, and :math:`q` is calibrated on the
*joint* held-out rate so that the false-positive rate on ID data meets a target.

:class:`JointDensityRule` instead scores by a smoothed Gaussian density of the
standardized held-out pairs. Both rules turn a false-positive rate into a
threshold with :func:`~dgmood.thresholds.threshold_at_rate`, the convention
every detector's ``offset_`` uses.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.exceptions import NotFittedError

from .thresholds import (
    EmpiricalCDF,
    _check_float_array,
    _order_statistic,
    robust_location_scale,
    threshold_at_rate,
)

__all__ = ["DualThresholdRule", "JointDensityRule"]


class DualThresholdRule:
    """Dual (multi-)threshold rule calibrated on held-out ID data.

    Fitted on held-out in-distribution components :math:`c \\in \\mathbb{R}^m`
    (e.g. ``(log p, LID)``, each oriented higher = more in-distribution), the
    score is

    .. math::

        s(x) = \\min_j F_j(c_j) + \\varepsilon \\, \\frac1m \\sum_j F_j(c_j),

    with :math:`F_j` the empirical CDF of component :math:`j`. The second term
    (``tie_break`` :math:`=\\varepsilon`, default :math:`10^{-6}`) only breaks
    ties between points with the same minimum: because every :math:`F_j` is a
    multiple of :math:`1/n` and :math:`\\varepsilon < 1/n`, it never reorders
    points with different minima. :math:`s` is finite, in
    :math:`[0, 1 + \\varepsilon]`, and non-decreasing in every component.

    Calling a point in-distribution iff :math:`s(x) \\ge q` is the dual rule
    :math:`c_j \\ge \\psi_j` for all :math:`j`, with :math:`\\psi_j` the
    :math:`q`-quantile of component :math:`j` (exactly so when
    ``tie_break=0``; see :meth:`component_thresholds`). Since the joint
    acceptance rate of ID data is at most :math:`1 - q`, :math:`q` is
    calibrated on the joint held-out rate (:meth:`threshold_for_fpr`).

    Parameters
    ----------
    tie_break : float, default=1e-6
        Weight :math:`\\varepsilon \\ge 0` of the mean-CDF tie-breaking term;
        must be below :math:`1/n` for the held-out size :math:`n`.

    Attributes
    ----------
    cdfs_ : list of EmpiricalCDF
        One per component.
    n_components_ : int
    n_samples_ : int
    heldout_scores_ : ndarray of shape ``(n_samples_,)``
        Scores of the held-out points, sorted ascending.
    """

    def __init__(self, tie_break: float = 1e-6) -> None:
        self.tie_break = tie_break

    def fit(self, components: ArrayLike) -> "DualThresholdRule":
        """Fit one empirical CDF per component on held-out ID data.

        Parameters
        ----------
        components : array-like of shape (n_samples, n_components)
            Finite held-out in-distribution values, each higher = more ID.

        Returns
        -------
        self
        """
        c = _check_float_array(components, "components", ndim=2, allow_inf=False)
        n, m = c.shape
        if n == 0 or m == 0:
            raise ValueError(
                f"components must hold at least one sample and one component; got shape {c.shape}."
            )
        eps = float(self.tie_break)
        if not (0.0 <= eps < 1.0 / n):
            raise ValueError(
                f"tie_break must be in [0, 1/n_samples) = [0, {1.0 / n:.3g}) so it never "
                f"reorders points with different minima; got {self.tie_break!r}."
            )
        self.cdfs_ = [EmpiricalCDF().fit(c[:, j]) for j in range(m)]
        self.n_components_ = m
        self.n_samples_ = n
        self.heldout_scores_ = np.sort(self.score(c))
        return self

    def score(self, components: ArrayLike) -> np.ndarray:
        """Score :math:`s(x)`, higher = more in-distribution.

        Parameters
        ----------
        components : array-like of shape (n_samples, n_components)
            Values in the same column order as in :meth:`fit`; +/-inf allowed.

        Returns
        -------
        ndarray of shape (n_samples,), float64
        """
        self._check_fitted()
        c = _check_float_array(components, "components", ndim=2, allow_inf=True)
        if c.shape[1] != self.n_components_:
            raise ValueError(
                f"components must have {self.n_components_} column(s) as in fit; "
                f"got shape {c.shape}."
            )
        f = np.column_stack([cdf(c[:, j]) for j, cdf in enumerate(self.cdfs_)])
        if f.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        return f.min(axis=1) + float(self.tie_break) * f.mean(axis=1)

    def heldout_rate(self, q: float) -> float:
        """Joint held-out rate :math:`\\#\\{i : s(x_i) < q\\} / n` (the ID points rejected)."""
        self._check_fitted()
        return float(np.searchsorted(self.heldout_scores_, q, side="left") / self.n_samples_)

    def threshold_for_fpr(self, target: float) -> float:
        """Level :math:`q` whose joint held-out false-positive rate is at most ``target``.

        With held-out scores :math:`s_{(1)} \\le \\dots \\le s_{(n)}` and
        :math:`k = \\lfloor \\mathrm{target} \\cdot n \\rfloor`, returns
        :math:`q = s_{(k+1)}`, the largest level with
        :math:`\\#\\{i : s_i < q\\} \\le k`. Flag a sample as OOD iff
        ``score(c) < q``; on fresh ID data the rate is then close to ``target``
        (within binomial error of the held-out size). This is
        :func:`threshold_at_rate` ``(heldout_scores_, target, strict=True)``.

        Parameters
        ----------
        target : float
            Target false-positive rate (ID flagged as OOD), in (0, 1).

        Returns
        -------
        float

        Raises
        ------
        ValueError
            If ``target`` is outside (0, 1) or below :math:`1/n`, which
            ``n`` held-out samples cannot certify.
        """
        self._check_fitted()
        return threshold_at_rate(self.heldout_scores_, target, strict=True)

    def component_thresholds(self, q: float) -> np.ndarray:
        """Per-component thresholds :math:`\\psi_j` of the dual rule behind ``score >= q``.

        :math:`\\psi_j = F_j^{-1}(q - \\varepsilon) = \\min\\{v : F_j(v) \\ge q - \\varepsilon\\}`
        on the held-out values of component :math:`j`. Every point with
        ``score >= q`` has :math:`c_j \\ge \\psi_j` for all :math:`j`; for ``q``
        from :meth:`threshold_for_fpr` the two rules differ only for points
        on the boundary quantiles (and coincide when ``tie_break=0``). Meant
        for plots (threshold lines on a likelihood-vs-LID scatter).

        Returns
        -------
        ndarray of shape (n_components,)
        """
        self._check_fitted()
        level = float(q) - float(self.tie_break)
        return np.array([_order_statistic(cdf.reference_, level) for cdf in self.cdfs_])

    def _check_fitted(self) -> None:
        if not hasattr(self, "cdfs_"):
            raise NotFittedError("This DualThresholdRule is not fitted yet; call fit(components) first.")


class JointDensityRule:
    r"""Typicality of the component vector: a kernel density of held-out ID components.

    Fitted on held-out in-distribution components :math:`c \in \mathbb{R}^m`
    (e.g. ``(log p, LID)``), each column is standardized by its held-out
    median and MAD-based scale (:math:`\tilde c_j = (c_j - \mathrm{med}_j) / s_j`,
    :math:`s_j = 1.4826\,\mathrm{MAD}_j`, else the standard deviation, else 1
    for a constant column), and the score is the log of an isotropic Gaussian
    kernel density estimate (:class:`sklearn.neighbors.KernelDensity`,
    Scott's bandwidth :math:`h = n^{-1/(m+4)}`) of the held-out :math:`\tilde c`:

    .. math:: s(x) = \log \frac1n \sum_{i=1}^n \mathcal N\big(\tilde c(x);\,
              \tilde c_i,\; h^2 I\big).

    Unlike :class:`DualThresholdRule`, which only rejects *low* values of each
    component, this flags any component vector unusual for ID data, e.g. a
    likelihood *above* the ID range together with a low LID: the likelihood
    paradox (simpler OOD data gets higher likelihood) makes the upper tail of
    the likelihood as telling as the lower one, as typicality tests use
    (Nalisnick et al., 2019). Far from the held-out cloud the log density falls
    quadratically with the distance, so it does not saturate, and it stays
    finite (computed in log space).

    Attributes
    ----------
    center_, scale_ : ndarrays of shape (n_components,)
    kde_ : sklearn.neighbors.KernelDensity
        Fitted on the standardized held-out components.
    n_components_, n_samples_ : int
    loo_scores_ : ndarray of shape ``(n_samples_,)``
        Leave-one-out scores of the held-out points, in fit order (each scored
        by the density of the others, as a new ID point would be), so that
        thresholds set on them carry over to new ID data.
    heldout_scores_ : ndarray of shape ``(n_samples_,)``
        The same, sorted ascending.
    """

    def fit(self, components: ArrayLike) -> "JointDensityRule":
        """Standardize and fit the kernel density on held-out ID components (at least 2)."""
        from sklearn.neighbors import KernelDensity

        c = _check_float_array(components, "components", ndim=2, allow_inf=False)
        n, m = c.shape
        if m == 0 or n < 2:
            raise ValueError(
                f"components must hold at least 2 samples and one component to fit a kernel "
                f"density; got shape {c.shape}."
            )
        center, scale = robust_location_scale(c)
        self.center_, self.scale_ = center, np.where(c.std(axis=0) > 0, scale, 1.0)  # constant: unit scale
        cz = (c - center) / self.scale_
        self.kde_ = KernelDensity(kernel="gaussian", bandwidth="scott").fit(cz)
        self.n_components_, self.n_samples_ = m, n
        # leave-one-out: remove each point's own kernel, N(0; 0, h^2 I), from the mixture
        log_sum = self.kde_.score_samples(cz) + np.log(n)
        own = -0.5 * m * np.log(2 * np.pi * self.kde_.bandwidth_**2)
        loo = log_sum + np.log(-np.expm1(np.minimum(own - log_sum, -1e-12))) - np.log(n - 1)
        self.loo_scores_ = np.asarray(loo, dtype=np.float64)
        self.heldout_scores_ = np.sort(self.loo_scores_)
        return self

    def score(self, components: ArrayLike) -> np.ndarray:
        """Log kernel density of the standardized components, higher = more in-distribution."""
        if not hasattr(self, "kde_"):
            raise NotFittedError("This JointDensityRule is not fitted yet; call fit(components) first.")
        c = _check_float_array(components, "components", ndim=2, allow_inf=True)
        if c.shape[1] != self.n_components_:
            raise ValueError(
                f"components must have {self.n_components_} column(s) as in fit; got shape {c.shape}."
            )
        if c.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        cz = np.clip((c - self.center_) / self.scale_, -1e6, 1e6)  # +/-inf -> far away, finite
        return self.kde_.score_samples(cz)

    def threshold_for_fpr(self, target: float) -> float:
        """Level :math:`q = s_{(k+1)}`, :math:`k = \\lfloor \\mathrm{target} \\cdot n \\rfloor`, of the
        held-out (leave-one-out) scores, as :meth:`DualThresholdRule.threshold_for_fpr`
        (:func:`threshold_at_rate` with ``strict=True``); flag ``score < q``."""
        if not hasattr(self, "kde_"):
            raise NotFittedError("This JointDensityRule is not fitted yet; call fit(components) first.")
        return threshold_at_rate(self.heldout_scores_, target, strict=True)
