"""Figures people would rather look at than read: score histograms and ROC curves.

Every function draws on a new (or given) matplotlib Axes, and, given ``path``,
saves a PNG there (Agg backend, no screen needed) and returns the path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_score_histograms", "plot_roc", "plot_likelihood_vs_lid"]


def _axes(ax=None, figsize=(6.4, 4.0)):
    import matplotlib

    if ax is None:
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def _finish(fig, path):
    if path is None:
        return fig
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_score_histograms(
    scores_id: np.ndarray,
    scores_ood: np.ndarray,
    path: str | Path | None = None,
    *,
    labels: tuple[str, str] = ("in-distribution", "out-of-distribution"),
    xlabel: str = "score",
    title: str | None = None,
    threshold: float | None = None,
    bins: int = 60,
    ax=None,
):
    """Overlaid density histograms of two score samples (e.g. log-likelihoods).

    ``threshold`` draws a vertical line (e.g. a detector's ``offset_``).
    Returns the saved path when ``path`` is given, else the figure.
    """
    scores_id, scores_ood = np.asarray(scores_id, float), np.asarray(scores_ood, float)
    fig, ax = _axes(ax)
    lo = np.percentile(np.r_[scores_id, scores_ood], 0.5)
    hi = np.percentile(np.r_[scores_id, scores_ood], 99.5)
    edges = np.linspace(lo, hi, bins + 1)
    for values, label, color in ((scores_id, labels[0], "C0"), (scores_ood, labels[1], "C3")):
        ax.hist(np.clip(values, lo, hi), bins=edges, density=True, alpha=0.55, color=color,
                label=f"{label} (n={len(values)})")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label="threshold")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    if title:
        ax.set_title(title)
    ax.legend(frameon=False)
    return _finish(fig, path)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path | None = None, ax=None):
    """ROC curves, OOD as the positive class: ``{name: (scores_id, scores_ood)}``."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = _axes(ax, figsize=(4.6, 4.4))
    for name, (s_id, s_ood) in curves.items():
        y = np.r_[np.zeros(len(s_id)), np.ones(len(s_ood))]
        score = -np.r_[s_id, s_ood]
        fpr, tpr, _ = roc_curve(y, score)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(y, score):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("false-positive rate (ID flagged)")
    ax.set_ylabel("true-positive rate (OOD caught)")
    ax.legend(frameon=False, loc="lower right")
    return _finish(fig, path)


def plot_likelihood_vs_lid(
    components_id: dict,
    components_ood: dict,
    path: str | Path | None = None,
    *,
    thresholds: tuple[float, float] | None = None,
    labels: tuple[str, str] = ("in-distribution", "out-of-distribution"),
    title: str | None = None,
    ax=None,
):
    """Scatter of log-likelihood (x) against LID (y): the key figure of Kamkari et al. (ICML 2024).

    ``thresholds = (psi_L, psi_LID)`` draws the dual rule's acceptance region
    (upper right: in-distribution).
    """
    fig, ax = _axes(ax, figsize=(5.6, 4.4))
    for comp, label, color in ((components_id, labels[0], "C0"), (components_ood, labels[1], "C3")):
        ax.scatter(comp["log_prob"], comp["lid"], s=6, alpha=0.5, color=color, label=f"{label} (n={len(comp['lid'])})")
    if thresholds is not None:
        ax.axvline(thresholds[0], color="k", linestyle="--", linewidth=1)
        ax.axhline(thresholds[1], color="k", linestyle="--", linewidth=1, label="dual thresholds (held-out ID)")
    ax.set_xlabel("log p(x) [nats]")
    ax.set_ylabel("LID")
    if title:
        ax.set_title(title)
    ax.legend(frameon=False, loc="lower left", markerscale=3)
    return _finish(fig, path)
