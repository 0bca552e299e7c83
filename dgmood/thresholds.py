"""Deployable dual-threshold rule with thresholds set on held-out ID data only.

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

:func:`threshold_at_rate` is the one convention turning a rejection rate into
a level on held-out scores, used by both rules here.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_array

__all__ = [
    "EmpiricalCDF",
    "DualThresholdRule",
    "JointDensityRule",
    "robust_location_scale",
    "threshold_at_rate",
]

# slack for float round-off when turning a level q into an order statistic
_EPS = 1e-9
#: Consistency factor turning a median absolute deviation into a normal standard deviation.
_MAD_TO_STD = 1.4826
#: Smallest robust scale, relative to ``1 + |median|``: no division by 0.
_SCALE_FLOOR = 1e-6


def _check_float_array(values: ArrayLike, name: str, *, ndim: int, allow_inf: bool) -> np.ndarray:
    """``check_array`` (float64; finite unless ``allow_inf``), then ``ndim`` and no NaN; may be empty."""
    # ndim and NaN checked here: sklearn has no "allow-inf" mode, and its shape
    # messages do not name the argument
    arr = check_array(
        values,
        dtype=np.float64,
        ensure_2d=False,
        allow_nd=True,
        ensure_all_finite=not allow_inf,
        ensure_min_samples=0,
        ensure_min_features=0,
        input_name=name,
    )
    if arr.ndim != ndim:
        shape = "(n_samples,)" if ndim == 1 else "(n_samples, n_components)"
        raise ValueError(f"{name} must have shape {shape}; got an array of shape {arr.shape}.")
    if allow_inf and np.isnan(arr).any():
        raise ValueError(f"{name} contains {int(np.isnan(arr).sum())} NaN value(s); remove them first.")
    return arr


def threshold_at_rate(scores: ArrayLike, rate: float, *, strict: bool = False) -> float:
    r"""Largest level :math:`q` such that flagging ``score < q`` rejects at most ``rate`` of ``scores``.

    With held-out scores sorted, :math:`s_{(1)} \le \dots \le s_{(n)}`,

    .. math::

        k = \lfloor \mathrm{rate} \cdot n + 10^{-9} \rfloor, \qquad
        q = s_{(k+1)} = \texttt{sorted(scores)[k]},

    so :math:`\#\{i : s_i < q\} \le k` (fewer when scores tie at :math:`q`)
    and any larger level rejects more. The :math:`10^{-9}` absorbs round-off
    (``0.29 * 100`` is ``28.999...``). On fresh data from the same distribution
    the rejected share is close to ``rate``, within the binomial error of :math:`n`.

    Parameters
    ----------
    scores : array-like of shape (n,)
        Held-out scores, higher = more in-distribution, in any order; NaN
        rejected, +/-inf allowed.
    rate : float
        Target rejection rate (false-positive rate on ID data), in (0, 1).
    strict : bool, default=False
        When :math:`k < 1` (``rate`` below :math:`1/n`): ``True`` raises a
        ValueError, :math:`n` points cannot certify the rate; ``False``
        returns :math:`s_{(1)} = \min(\mathrm{scores})`, flagging none of them.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If ``scores`` is empty or holds NaN, ``rate`` is outside (0, 1), or
        (``strict=True``) ``rate`` is unreachable.
    """
    if not (isinstance(rate, (int, float, np.integer, np.floating)) and 0.0 < rate < 1.0):
        raise ValueError(f"rate must be a target false-positive rate in (0, 1); got {rate!r}.")
    sorted_scores = np.sort(_check_float_array(scores, "scores", ndim=1, allow_inf=True))
    n = sorted_scores.size
    if n == 0:
        raise ValueError("scores is empty; a threshold needs at least one held-out score.")
    k = int(np.floor(rate * n + _EPS))
    if k < 1:
        if strict:
            raise ValueError(
                f"rate={rate!r} is unreachable with {n} held-out samples: the smallest "
                f"false-positive rate they can resolve is 1/n = {1.0 / n:.3g}. Use a larger "
                f"rate or at least {int(np.ceil(1.0 / rate))} held-out samples."
            )
        return float(sorted_scores[0])
    return float(sorted_scores[min(k, n - 1)])  # k = n only for rate within round-off of 1


def robust_location_scale(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Per-column median and MAD-based scale of held-out values.

    .. math:: c = \operatorname{median}(v),\qquad
              \sigma = \max\bigl(1.4826\,\operatorname{median}|v - c|,\;
              10^{-6}\,(1 + |c|)\bigr),

    falling back to the standard deviation when the MAD is zero (over half the
    values tied), the floor keeping :math:`\sigma > 0` so that no z-score is NaN.

    Parameters
    ----------
    values : ndarray of shape (n, m)

    Returns
    -------
    center, scale : ndarrays of shape (m,)
    """
    values = np.asarray(values, dtype=np.float64)
    center = np.median(values, axis=0)
    scale = _MAD_TO_STD * np.median(np.abs(values - center), axis=0)
    std = values.std(axis=0) if len(values) > 1 else np.zeros_like(center)
    scale = np.where(scale > 0, scale, std)
    return center, np.maximum(scale, _SCALE_FLOOR * (1.0 + np.abs(center)))


def _order_statistic(sorted_ref: np.ndarray, level: float) -> float:
    """Generalised inverse :math:`F^{-1}(q) = \\min\\{v : F(v) \\ge q\\}` on sorted data."""
    n = sorted_ref.size
    r = int(np.ceil(level * n - _EPS))  # need #{ref <= v} >= r
    if r <= 0:
        return -np.inf
    if r > n:
        return np.inf
    return float(sorted_ref[r - 1])


class EmpiricalCDF:
    """Right-continuous empirical CDF of 1-D reference values.

    .. math::

        F(v) = \\frac{\\#\\{i : r_i \\le v\\}}{n},

    evaluated with :func:`numpy.searchsorted` (``side="right"``), so ties are
    counted as at or below (the same values as ``scipy.stats.ecdf(r).cdf``).

    Attributes
    ----------
    reference_ : ndarray of shape (n,)
        The reference values, sorted ascending (float64).
    n_samples_ : int
    """

    def fit(self, values: ArrayLike) -> "EmpiricalCDF":
        """Store the sorted reference values.

        Parameters
        ----------
        values : array-like of shape (n,)
            Finite held-out in-distribution values.

        Returns
        -------
        self
        """
        arr = _check_float_array(values, "values", ndim=1, allow_inf=False)
        if arr.size == 0:
            raise ValueError("values is empty; an empirical CDF needs at least one reference value.")
        self.reference_ = np.sort(arr)
        self.n_samples_ = int(arr.size)
        return self

    def __call__(self, values: ArrayLike) -> np.ndarray:
        """Evaluate :math:`F` at ``values`` (any shape; NaN rejected, +/-inf allowed)."""
        ref = self._fitted_reference()
        arr = np.asarray(values, dtype=np.float64)
        if np.isnan(arr).any():
            raise ValueError("values contains NaN; the empirical CDF is undefined there.")
        return np.searchsorted(ref, arr, side="right") / ref.size

    def quantile(self, q: float) -> float:
        """Smallest reference value :math:`v` with :math:`F(v) \\ge q`.

        Returns ``-inf`` for :math:`q \\le 0` (everything passes) and ``+inf``
        for :math:`q > 1`.
        """
        return _order_statistic(self._fitted_reference(), float(q))

    def _fitted_reference(self) -> np.ndarray:
        ref = getattr(self, "reference_", None)
        if ref is None:
            raise NotFittedError("This EmpiricalCDF is not fitted yet; call fit(values) first.")
        return ref


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
