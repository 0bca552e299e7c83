r"""Model-free local-PCA estimate of local intrinsic dimension.

For a query point :math:`x`, take its :math:`k` nearest neighbours in a
reference set, centre them, and compute the eigenvalues
:math:`\lambda_1 \ge \dots \ge \lambda_D` of their covariance. Two cuts:

* ``"fo"`` (Fukunaga & Olsen, 1971; scikit-dimension's ``lPCA`` default):
  :math:`\mathrm{LID} = \#\{ i : \lambda_i > \alpha \lambda_1 \}`;
* ``"ratio"`` (explained variance): the smallest :math:`d` with
  :math:`\sum_{i \le d} \lambda_i \ge (1 - \alpha) \sum_i \lambda_i`.

At most :math:`k - 1` eigenvalues are non-zero, so ``n_neighbors`` must exceed
the dimension one hopes to see (the ICML paper's FashionMNIST estimate of 245
needs several hundred neighbours). Used to calibrate the flow's threshold
:math:`\tau` and as a sanity baseline.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors

__all__ = ["lpca_lid", "lid_from_eigenvalues"]


def lid_from_eigenvalues(eigenvalues: np.ndarray, method: str = "fo", alpha: float = 0.05) -> np.ndarray:
    r"""Dimension from descending local-covariance eigenvalues, per row (see module docstring)."""
    ev = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    if method == "fo":
        return (ev > alpha * ev[:, :1]).sum(1).astype(np.float64)
    if method == "ratio":
        cum = np.cumsum(ev, axis=1) / np.maximum(ev.sum(1, keepdims=True), 1e-300)
        return (np.argmax(cum >= 1.0 - alpha - 1e-12, axis=1) + 1).astype(np.float64)
    raise ValueError(f"method must be 'fo' or 'ratio', got {method!r}.")


def lpca_lid(
    X_query: np.ndarray,
    X_ref: np.ndarray,
    n_neighbors: int = 100,
    method: str = "fo",
    alpha: float = 0.05,
    exclude_self: bool = False,
) -> np.ndarray:
    """Local-PCA LID of each query point from its ``n_neighbors`` nearest reference points.

    Parameters
    ----------
    X_query : (n, D) points to estimate at.
    X_ref : (m, D) reference sample of the data manifold.
    exclude_self : drop the nearest neighbour (use when the queries are in ``X_ref``).

    Returns
    -------
    lid : ndarray (n,), float64
    """
    X_query = np.asarray(X_query, dtype=np.float64)
    X_ref = np.asarray(X_ref, dtype=np.float64)
    k = int(n_neighbors) + int(exclude_self)
    if k > len(X_ref) or n_neighbors < 2:
        raise ValueError(
            f"lpca_lid needs 2 <= n_neighbors <= {len(X_ref) - int(exclude_self)} "
            f"(reference points), got n_neighbors={n_neighbors}."
        )
    _, idx = NearestNeighbors(n_neighbors=k).fit(X_ref).kneighbors(X_query)
    if exclude_self:
        idx = idx[:, 1:]
    out = np.empty(len(X_query))
    for i, rows in enumerate(idx):
        nb = X_ref[rows]
        s = np.linalg.svd(nb - nb.mean(0), compute_uv=False)
        out[i] = lid_from_eigenvalues((s**2 / (len(rows) - 1))[None], method, alpha)[0]
    return out
