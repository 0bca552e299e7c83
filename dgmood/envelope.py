"""Oracle envelope of the likelihood + LID dual-threshold rule.

:func:`oracle_dual_auroc` reproduces the procedure of Kamkari et al.
(ICML 2024, ``notebooks/roc_analysis.py`` of ``layer6ai-labs/dgm_ood_detection``).
It is tuned on the test data and is an upper bound, not a detector; the
deployable rule lives in :mod:`dgmood.thresholds`. The number is on the scale
of :func:`dgmood.metrics.auroc`; :mod:`dgmood.metrics` re-exports it.
"""

from __future__ import annotations

from numbers import Integral
from typing import Union

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score
from sklearn.utils import check_array

__all__ = ["oracle_dual_auroc"]


def _check_components(components: ArrayLike, name: str) -> np.ndarray:
    """``check_array`` (float64, finite), then the (n_samples >= 1, 2) shape, naming ``name``."""
    # shape checks are done below so that their messages name the argument
    arr = check_array(
        components,
        dtype=np.float64,
        ensure_2d=False,
        allow_nd=True,
        ensure_all_finite=True,
        ensure_min_samples=0,
        ensure_min_features=0,
        input_name=name,
    )
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(
            f"{name} must have shape (n_samples, 2) with columns (log p, LID), "
            f"each oriented higher = more in-distribution; got shape {arr.shape}."
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty; at least one sample is needed.")
    return arr


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
    scale as :func:`dgmood.metrics.auroc`.

    .. warning::
       The thresholds are tuned on the *test* labels: this is an upper bound
       over dual-threshold rules, not a deployable detector. For thresholds
       set on held-out ID data only, use
       :class:`dgmood.rules.DualThresholdRule`.

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
