"""Out-of-distribution metrics with OOD as the positive class.

Detectors in :mod:`dgmood` follow scikit-learn's convention: ``score_samples``
is *higher = more in-distribution* (ID). The metrics below follow
pytorch-ood's ``OODMetrics``: out-of-distribution (OOD) points are the
*positive* class, so every function negates the scores before handing them to
:mod:`sklearn.metrics`. All functions take the two score sets separately,
``scores_id`` and ``scores_ood``, which removes any ambiguity about labels.

Two functions defined elsewhere are re-exported here:
:func:`~dgmood.envelope.oracle_dual_auroc` (the oracle envelope of the
likelihood + LID dual-threshold rule, :mod:`dgmood.envelope`) and
:func:`~dgmood.model_selection.make_ood_scorer` (a scorer for
:class:`~sklearn.model_selection.GridSearchCV`, :mod:`dgmood.model_selection`).
"""

from __future__ import annotations

from numbers import Integral
from typing import Callable, Literal, Union

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from sklearn.utils import check_array, check_random_state

# re-exported; dgmood.model_selection looks up METRICS here only when called,
# so these imports are not circular
from .envelope import oracle_dual_auroc
from .model_selection import make_ood_scorer

__all__ = [
    "auroc",
    "auprc",
    "fpr_at_tpr",
    "ood_metrics",
    "bootstrap_ci",
    "oracle_dual_auroc",
    "make_ood_scorer",
    "METRICS",
]


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------


def _check_scores(scores: ArrayLike, name: str) -> np.ndarray:
    """``check_array`` (float64, finite), then 1-D and non-empty, naming ``name``."""
    # the shape checks are ours: sklearn's messages for them do not name the argument
    arr = check_array(
        scores,
        dtype=np.float64,
        ensure_2d=False,
        allow_nd=True,
        ensure_all_finite=True,
        ensure_min_samples=0,
        input_name=name,
    )
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D array of shape (n_samples,); got an array of "
            f"shape {arr.shape}. Pass one score per sample (use .ravel() for a "
            f"single column)."
        )
    if arr.size == 0:
        raise ValueError(
            f"{name} is empty; both in-distribution and OOD scores are needed "
            f"(at least one sample each)."
        )
    return arr


def _check_pair(scores_id: ArrayLike, scores_ood: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    return _check_scores(scores_id, "scores_id"), _check_scores(scores_ood, "scores_ood")


def _ood_labels_and_scores(s_id: np.ndarray, s_ood: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels with OOD = 1 and scores oriented so that higher = more OOD."""
    y = np.concatenate([np.zeros(s_id.size, dtype=np.int64), np.ones(s_ood.size, dtype=np.int64)])
    return y, -np.concatenate([s_id, s_ood])


# --------------------------------------------------------------------------
# point metrics
# --------------------------------------------------------------------------


def auroc(scores_id: ArrayLike, scores_ood: ArrayLike) -> float:
    r"""Area under the ROC curve with OOD as the positive class.

    Scores follow the detector convention (higher = more in-distribution), so
    the OOD-positive score is :math:`-s` and

    .. math::

        \mathrm{AUROC} = P(-s_{\mathrm{OOD}} > -s_{\mathrm{ID}})
        + \tfrac12 P(s_{\mathrm{OOD}} = s_{\mathrm{ID}}),

    computed by :func:`sklearn.metrics.roc_auc_score` with ``y = 1`` for OOD.
    (The number equals the ID-positive AUROC of the raw scores.)

    Parameters
    ----------
    scores_id : array-like of shape (n_id,)
        Scores of in-distribution samples, higher = more in-distribution.
    scores_ood : array-like of shape (n_ood,)
        Scores of out-of-distribution samples.

    Returns
    -------
    float
        AUROC in [0, 1]; 1.0 when every ID score exceeds every OOD score.
    """
    y, s = _ood_labels_and_scores(*_check_pair(scores_id, scores_ood))
    return float(roc_auc_score(y, s))


def auprc(
    scores_id: ArrayLike,
    scores_ood: ArrayLike,
    positive: Literal["ood", "id"] = "ood",
) -> float:
    r"""Area under the precision-recall curve (average precision).

    .. math::

        \mathrm{AP} = \sum_n (R_n - R_{n-1}) P_n ,

    :func:`sklearn.metrics.average_precision_score`. With ``positive="ood"``
    this is AUPR-OUT (OOD positive, score :math:`-s`); with ``positive="id"``
    it is AUPR-IN (ID positive, score :math:`s`).

    Parameters
    ----------
    scores_id, scores_ood : array-like of shape (n_id,), (n_ood,)
        Detector scores, higher = more in-distribution.
    positive : {"ood", "id"}, default="ood"
        Which set is the positive class.

    Returns
    -------
    float
        Average precision in [0, 1]; its chance level is the positive share.
    """
    s_id, s_ood = _check_pair(scores_id, scores_ood)
    if positive == "ood":
        y, s = _ood_labels_and_scores(s_id, s_ood)
    elif positive == "id":
        y, s = _ood_labels_and_scores(s_id, s_ood)
        y, s = 1 - y, -s
    else:
        raise ValueError(f"positive must be 'ood' or 'id'; got {positive!r}.")
    return float(average_precision_score(y, s))


def fpr_at_tpr(scores_id: ArrayLike, scores_ood: ArrayLike, tpr: float = 0.95) -> float:
    r"""False-positive rate at the first ROC point reaching a true-positive rate.

    OOD is positive: TPR is the share of OOD samples flagged, FPR the share of
    ID samples wrongly flagged, at threshold :math:`t` on :math:`-s`. The result
    is

    .. math::

        \mathrm{FPR@TPR}_\tau = \mathrm{FPR}(t^*), \quad
        t^* = \max\{t : \mathrm{TPR}(t) \ge \tau\},

    i.e. ``fpr[searchsorted(tpr_curve, tau)]`` on
    :func:`sklearn.metrics.roc_curve` (as pytorch-ood). The HVAE paper reports
    :math:`\tau = 0.80`, pytorch-ood :math:`\tau = 0.95`.

    Parameters
    ----------
    scores_id, scores_ood : array-like of shape (n_id,), (n_ood,)
        Detector scores, higher = more in-distribution.
    tpr : float, default=0.95
        Target true-positive rate in (0, 1].

    Returns
    -------
    float
        FPR in [0, 1]; lower is better.
    """
    if not (isinstance(tpr, (float, int, np.floating, np.integer)) and 0.0 < tpr <= 1.0):
        raise ValueError(f"tpr must be a number in (0, 1]; got {tpr!r}.")
    y, s = _ood_labels_and_scores(*_check_pair(scores_id, scores_ood))
    fpr_curve, tpr_curve, _ = roc_curve(y, s, drop_intermediate=False)
    # tpr_curve is non-decreasing and ends at 1.0, so the index always exists;
    # the small tolerance keeps e.g. 19/20 = 0.95 from missing 0.95.
    idx = int(np.searchsorted(tpr_curve, tpr - 1e-12, side="left"))
    return float(fpr_curve[min(idx, fpr_curve.size - 1)])


def _fpr80(scores_id: ArrayLike, scores_ood: ArrayLike) -> float:
    return fpr_at_tpr(scores_id, scores_ood, tpr=0.80)


def _fpr95(scores_id: ArrayLike, scores_ood: ArrayLike) -> float:
    return fpr_at_tpr(scores_id, scores_ood, tpr=0.95)


def _auprc_in(scores_id: ArrayLike, scores_ood: ArrayLike) -> float:
    return auprc(scores_id, scores_ood, positive="id")


def _auprc_out(scores_id: ArrayLike, scores_ood: ArrayLike) -> float:
    return auprc(scores_id, scores_ood, positive="ood")


#: Named metrics ``f(scores_id, scores_ood) -> float`` and whether greater is better.
METRICS: dict[str, tuple[Callable[[ArrayLike, ArrayLike], float], bool]] = {
    "auroc": (auroc, True),
    "auprc_out": (_auprc_out, True),
    "auprc_in": (_auprc_in, True),
    "fpr80": (_fpr80, False),
    "fpr95": (_fpr95, False),
}


def _resolve_metric(metric: Union[str, Callable]) -> Callable[[ArrayLike, ArrayLike], float]:
    if callable(metric):
        return metric
    if isinstance(metric, str) and metric in METRICS:
        return METRICS[metric][0]
    raise ValueError(
        f"metric must be one of {sorted(METRICS)} or a callable "
        f"f(scores_id, scores_ood) -> float; got {metric!r}."
    )


def ood_metrics(scores_id: ArrayLike, scores_ood: ArrayLike) -> dict[str, float]:
    """All standard OOD metrics at once (OOD positive, as pytorch-ood).

    Parameters
    ----------
    scores_id, scores_ood : array-like of shape (n_id,), (n_ood,)
        Detector scores, higher = more in-distribution.

    Returns
    -------
    dict
        Keys ``auroc``, ``auprc_out`` (AUPR with OOD positive), ``auprc_in``
        (AUPR with ID positive), ``fpr80`` and ``fpr95`` (FPR at 80 % / 95 %
        TPR), each a float.
    """
    s_id, s_ood = _check_pair(scores_id, scores_ood)
    return {name: float(fn(s_id, s_ood)) for name, (fn, _) in METRICS.items()}


def bootstrap_ci(
    metric: Union[str, Callable[[np.ndarray, np.ndarray], float]],
    scores_id: ArrayLike,
    scores_ood: ArrayLike,
    n_boot: int = 1000,
    alpha: float = 0.05,
    random_state: Union[int, np.random.RandomState, None] = 0,
) -> tuple[float, float]:
    r"""Percentile bootstrap confidence interval of an OOD metric.

    ID and OOD scores are resampled *separately* with replacement (a
    stratified bootstrap, keeping :math:`n_\mathrm{ID}` and
    :math:`n_\mathrm{OOD}` fixed); for replicates :math:`m^{*}_1, \dots,
    m^{*}_B` the interval is

    .. math::

        \bigl[\, q_{\alpha/2}(m^{*}),\; q_{1-\alpha/2}(m^{*}) \,\bigr].

    Parameters
    ----------
    metric : str or callable
        A name in :data:`METRICS` (``"auroc"``, ``"auprc_out"``, ``"auprc_in"``,
        ``"fpr80"``, ``"fpr95"``) or a callable ``f(scores_id, scores_ood)``.
    scores_id, scores_ood : array-like of shape (n_id,), (n_ood,)
        Detector scores, higher = more in-distribution.
    n_boot : int, default=1000
        Number of bootstrap replicates.
    alpha : float, default=0.05
        One minus the coverage (0.05 gives a 95 % interval).
    random_state : int, RandomState instance or None, default=0
        Seed of the resampling.

    Returns
    -------
    (low, high) : tuple of float
    """
    fn = _resolve_metric(metric)
    s_id, s_ood = _check_pair(scores_id, scores_ood)
    if not isinstance(n_boot, Integral) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer; got {n_boot!r}.")
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1); got {alpha!r}.")
    rng = check_random_state(random_state)
    reps = np.empty(int(n_boot), dtype=np.float64)
    for b in range(int(n_boot)):
        i_id = rng.randint(0, s_id.size, size=s_id.size)
        i_ood = rng.randint(0, s_ood.size, size=s_ood.size)
        reps[b] = fn(s_id[i_id], s_ood[i_ood])
    low, high = np.quantile(reps, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)
