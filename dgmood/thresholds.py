"""Thresholds set on held-out in-distribution data only.

:func:`threshold_at_rate` is the one convention turning a rejection rate into
a level on held-out scores (every detector's ``offset_`` and both rules'
``threshold_for_fpr``); :class:`EmpiricalCDF` maps a component onto [0, 1]
by its held-out distribution; :func:`robust_location_scale` standardizes by
median and MAD. The two-component rules built on them live in
:mod:`dgmood.rules` (re-exported here).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_array

__all__ = [
    "EmpiricalCDF",
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



def __getattr__(name: str):
    """``DualThresholdRule`` and ``JointDensityRule`` moved to :mod:`dgmood.rules`; still importable here
    (resolved on first use: :mod:`dgmood.rules` imports this module)."""
    if name in ("DualThresholdRule", "JointDensityRule"):
        from . import rules

        return getattr(rules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
