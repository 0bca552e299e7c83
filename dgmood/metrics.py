"""Out-of-distribution metrics with OOD as the positive class.

Detectors in :mod:`dgmood` follow scikit-learn's convention: ``score_samples``
is *higher = more in-distribution* (ID). The metrics below follow
pytorch-ood's ``OODMetrics``: out-of-distribution (OOD) points are the
*positive* class, so every function negates the scores before handing them to
:mod:`sklearn.metrics`. All functions take the two score sets separately,
``scores_id`` and ``scores_ood``, which removes any ambiguity about labels.

The oracle envelope of the likelihood + LID dual-threshold rule
(:func:`oracle_dual_auroc`) reproduces the procedure of Kamkari et al.
(ICML 2024, ``notebooks/roc_analysis.py`` of ``layer6ai-labs/dgm_ood_detection``).
It is tuned on the test data and is an upper bound, not a detector; the
deployable rule lives in :mod:`dgmood.thresholds`.
"""

from __future__ import annotations

from numbers import Integral
from typing import Callable, Literal, Union

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from sklearn.utils import check_random_state

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
    """Return ``scores`` as a finite, non-empty 1-D float64 array."""
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name} must be a 1-D array of real scores; got an object of type "
            f"{type(scores).__name__} that cannot be converted to float64."
        ) from exc
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
    if not np.all(np.isfinite(arr)):
        n_bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(
            f"{name} must contain only finite values; got {n_bad} NaN or "
            f"infinite value(s) out of {arr.size}. Remove or clip them first."
        )
    return arr


def _check_pair(scores_id: ArrayLike, scores_ood: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    return _check_scores(scores_id, "scores_id"), _check_scores(scores_ood, "scores_ood")


def _ood_labels_and_scores(s_id: np.ndarray, s_ood: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels with OOD = 1 and scores oriented so that higher = more OOD."""
    y = np.concatenate([np.zeros(s_id.size, dtype=np.int64), np.ones(s_ood.size, dtype=np.int64)])
    return y, -np.concatenate([s_id, s_ood])


def _check_components(components: ArrayLike, name: str) -> np.ndarray:
    try:
        arr = np.asarray(components, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name} must be a real array of shape (n_samples, 2); got an object "
            f"of type {type(components).__name__}."
        ) from exc
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(
            f"{name} must have shape (n_samples, 2) with columns (log p, LID), "
            f"each oriented higher = more in-distribution; got shape {arr.shape}."
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty; at least one sample is needed.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(
            f"{name} must contain only finite values; got "
            f"{int(np.sum(~np.isfinite(arr)))} NaN or infinite entries."
        )
    return arr


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


# --------------------------------------------------------------------------
# oracle envelope of the dual-threshold rule
# --------------------------------------------------------------------------


def _dominance_counts(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    r"""Count :math:`\#\{i : x_i \ge a_q,\ y_i \ge b_q\}` for every query ``q``.

    Square-root decomposition, fully vectorised: the points are sorted by
    :math:`x` descending and cut into blocks of ``s`` points; a table holds,
    for every number of whole blocks, the count of points with :math:`y \ge`
    each candidate :math:`b`; the at most ``s - 1`` points of the last, partial
    block are compared directly. Cost :math:`O(n \sqrt n + Q \sqrt n)`.
    """
    n = points.shape[0]
    order = np.argsort(-points[:, 0], kind="stable")
    xs = points[order, 0]
    ys = points[order, 1]
    # m_q = #{x >= a_q}: the first m_q points of the descending order.
    m = np.searchsorted(-xs, -a, side="right")
    s = max(1, int(np.sqrt(n)))
    n_blocks = n // s
    # distinct y values (ascending) and each point's rank among them
    y_unique = np.unique(ys)
    y_rank = np.searchsorted(y_unique, ys)
    # table[k, r] = #{first k*s points with y_rank >= r}, r in 0..len(y_unique)
    hist = np.zeros((n_blocks + 1, y_unique.size + 1), dtype=np.int64)
    if n_blocks:
        block_of = np.arange(n_blocks * s) // s
        np.add.at(hist, (block_of + 1, y_rank[: n_blocks * s]), 1)
    table = np.cumsum(hist, axis=0)
    table = np.cumsum(table[:, ::-1], axis=1)[:, ::-1]
    # query's rank: number of distinct y values strictly below b
    rb = np.searchsorted(y_unique, b, side="left")
    k = np.minimum(m // s, n_blocks)
    counts = table[k, rb]
    # partial block: points k*s .. m-1 (fewer than s of them), in chunks of
    # about 2**22 comparisons to bound memory
    offs = np.arange(s)
    step = max(1, (1 << 22) // s)
    for lo in range(0, a.size, step):
        sl = slice(lo, lo + step)
        idx = k[sl, None] * s + offs[None, :]
        valid = idx < m[sl, None]
        idx = np.minimum(idx, n - 1)
        counts[sl] += np.sum(valid & (ys[idx] >= b[sl, None]), axis=1)
    return counts


def _staircase_area(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Trapezoid area under the chain of running TPR maxima, (0,0) to (1,1)."""
    order = np.lexsort((tpr, fpr))  # by FPR, then TPR
    fpr, tpr = fpr[order], tpr[order]
    prev_max = np.maximum.accumulate(np.concatenate([[0.0], tpr]))[:-1]
    keep = tpr >= prev_max  # records (ties kept), as `get_convex_hull` of the reference
    x = np.concatenate([[0.0], fpr[keep], [1.0]])
    y = np.concatenate([[0.0], tpr[keep], [1.0]])
    return float(np.trapezoid(y, x))


def oracle_dual_auroc(
    components_id: ArrayLike,
    components_ood: ArrayLike,
    n_pairs: int = 100_000,
    random_state: Union[int, np.random.Generator, None] = 111,
) -> float:
    r"""Oracle AUROC envelope of the likelihood + LID dual-threshold rule.

    A sample is called in-distribution iff :math:`\log p(x) \ge a` **and**
    :math:`\mathrm{LID}(x) \ge b`. Following ``notebooks/roc_analysis.py`` of
    ``layer6ai-labs/dgm_ood_detection`` (Kamkari et al., ICML 2024) step by step:

    1. positives are the ID points, negatives the OOD points;
    2. candidate pairs :math:`(a, b)` are the Cartesian product of the unique
       values of each coordinate over both sets, plus the sentinels
       :math:`\pm\infty`; when there are more than ``n_pairs`` of them, a
       uniform random subset of ``n_pairs`` pairs is kept;
    3. every pair gives

       .. math::

           \mathrm{TPR}(a, b) = \frac{\#\{\mathrm{ID}: c_0 \ge a,\ c_1 \ge b\}}{n_\mathrm{ID}},
           \qquad
           \mathrm{FPR}(a, b) = \frac{\#\{\mathrm{OOD}: c_0 \ge a,\ c_1 \ge b\}}{n_\mathrm{OOD}};

    4. the points are sorted by (FPR, TPR); the chain of running TPR maxima
       (points whose TPR is at least every earlier TPR), closed by (0, 0) and
       (1, 1), is integrated by trapezoids (a staircase, not a convex hull);
    5. the result is :math:`\max(\mathrm{AUROC}(c_0), \text{area})`, with
       :math:`\mathrm{AUROC}(c_0)` the single-likelihood AUROC.

    ID is the positive class here and "both coordinates high" means ID; that
    is the OOD-positive AUROC of negated scores, so the number is on the same
    scale as :func:`auroc`.

    .. warning::
       The thresholds are tuned on the *test* labels: this is an upper bound
       over dual-threshold rules, not a deployable detector. For thresholds
       set on held-out ID data only, use
       :class:`dgmood.thresholds.DualThresholdRule`.

    Parameters
    ----------
    components_id : array-like of shape (n_id, 2)
        ID test points, columns (log p, LID), each higher = more ID.
    components_ood : array-like of shape (n_ood, 2)
        OOD test points, same columns.
    n_pairs : int, default=100_000
        Largest number of candidate threshold pairs.
    random_state : int, Generator or None, default=111
        Seed of the subsampling (:func:`numpy.random.default_rng`). The reference
        shuffles a boolean mask with numpy's global generator; this draws the
        same kind of uniform subset without materialising the grid, so the
        exact subset (hence the last digits) can differ from the reference.

    Returns
    -------
    float
        The envelope AUROC, at least the single-likelihood AUROC. Subsampling
        can leave it slightly below the AUROC of component 1 alone.

    Notes
    -----
    The counts are computed for all pairs at once by sorting (no per-pair
    pass), in :math:`O((n + Q)\sqrt n)` for :math:`Q` pairs.
    """
    c_id = _check_components(components_id, "components_id")
    c_ood = _check_components(components_ood, "components_ood")
    if not isinstance(n_pairs, Integral) or n_pairs < 1:
        raise ValueError(f"n_pairs must be a positive integer; got {n_pairs!r}.")

    sentinels = np.array([-np.inf, np.inf])
    grid_a = np.unique(np.concatenate([c_id[:, 0], c_ood[:, 0], sentinels]))
    grid_b = np.unique(np.concatenate([c_id[:, 1], c_ood[:, 1], sentinels]))
    total = grid_a.size * grid_b.size
    if total > n_pairs:
        rng = np.random.default_rng(random_state)
        flat = np.sort(rng.choice(total, size=int(n_pairs), replace=False))
    else:
        flat = np.arange(total)
    # meshgrid(grid_a, grid_b).ravel() order: a varies fastest
    a = grid_a[flat % grid_a.size]
    b = grid_b[flat // grid_a.size]

    tpr = _dominance_counts(c_id, a, b) / c_id.shape[0]
    fpr = _dominance_counts(c_ood, a, b) / c_ood.shape[0]
    area = _staircase_area(fpr, tpr)

    y = np.concatenate([np.ones(c_id.shape[0]), np.zeros(c_ood.shape[0])])
    single = float(roc_auc_score(y, np.concatenate([c_id[:, 0], c_ood[:, 0]])))
    return max(single, area)


# --------------------------------------------------------------------------
# scikit-learn scorer
# --------------------------------------------------------------------------


def _split_by_label(y_true: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    labels = set(np.unique(y).tolist())
    if not labels <= {1, -1}:
        raise ValueError(
            "make_ood_scorer expects y with +1 for in-distribution and -1 for "
            f"OOD samples; got labels {sorted(labels, key=str)}."
        )
    if labels != {1, -1}:
        raise ValueError(
            "make_ood_scorer needs both classes in every evaluated split (+1 ID "
            f"and -1 OOD); got only {sorted(labels)}. Use a stratified CV "
            "splitter, e.g. StratifiedKFold."
        )
    if y.shape[0] != s.shape[0]:
        raise ValueError(
            f"y has {y.shape[0]} labels but the estimator returned {s.shape[0]} scores."
        )
    return s[y == 1], s[y == -1]


def _balanced_accuracy(y, pred) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return balanced_accuracy_score(y, pred)


# metrics of the thresholded decision (``predict``): these depend on ``offset_``,
# so they are the ones to use when searching over ``contamination``
_DECISION_METRICS = {"balanced_accuracy": _balanced_accuracy}


class _OODScorer:
    """Picklable ``scorer(estimator, X, y)``; see :func:`make_ood_scorer`."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self._fn, greater_is_better = METRICS.get(metric, (None, True))
        self._sign = 1.0 if greater_is_better else -1.0

    def __call__(self, estimator, X: ArrayLike, y: ArrayLike) -> float:
        if self.metric in _DECISION_METRICS:
            y = np.asarray(y)
            _split_by_label(y, np.zeros(len(y)))  # validates the labels
            return float(_DECISION_METRICS[self.metric](y, estimator.predict(X)))
        scores = estimator.score_samples(X)
        s_id, s_ood = _split_by_label(y, scores)
        return self._sign * float(self._fn(s_id, s_ood))

    def __repr__(self) -> str:
        return f"make_ood_scorer(metric={self.metric!r})"


def make_ood_scorer(metric: str = "auroc") -> Callable[..., float]:
    """Scorer for :class:`~sklearn.model_selection.GridSearchCV` on labelled ID/OOD data.

    The scorer ``scorer(estimator, X, y)`` calls ``estimator.score_samples(X)``
    (higher = more ID), splits the scores with ``y`` (``+1`` = ID, ``-1`` =
    OOD, as ``predict`` of outlier detectors) and evaluates ``metric`` with OOD
    as the positive class. For ``"fpr80"`` / ``"fpr95"`` it returns the
    *negated* FPR (as sklearn's ``neg_*`` scorers), so a search that maximises
    the score minimises the FPR. These ranking metrics do not depend on the
    threshold: to tune ``contamination`` (which only moves ``offset_``) use
    ``"balanced_accuracy"``, computed from ``estimator.predict(X)``.

    It is a plain callable rather than :func:`sklearn.metrics.make_scorer`:
    scikit-learn 1.9 does not accept ``response_method="score_samples"``.

    Use a stratified splitter (e.g. ``cv=StratifiedKFold(5)``): a detector
    is not a classifier, so an integer ``cv`` gives unstratified ``KFold``
    folds, which may hold a single class.

    Parameters
    ----------
    metric : {"auroc", "auprc_out", "auprc_in", "fpr80", "fpr95", "balanced_accuracy"}, default="auroc"

    Returns
    -------
    scorer : callable ``scorer(estimator, X, y) -> float``

    Raises
    ------
    ValueError
        At scoring time, when ``y`` holds labels other than {+1, -1} or only
        one of them.
    """
    valid = sorted(METRICS) + sorted(_DECISION_METRICS)
    if not isinstance(metric, str) or metric not in valid:
        raise ValueError(f"metric must be one of {valid}; got {metric!r}.")
    return _OODScorer(metric)
