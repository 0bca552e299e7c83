"""Figures people would rather look at than read: score histograms and ROC curves.

Every function draws on a new (or given) matplotlib Axes, and, given ``path``,
saves a PNG there (Agg backend, no screen needed) and returns the path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = [
    "plot_likelihood_vs_lid",
    "plot_llr_per_k",
    "plot_roc",
    "plot_score_histograms",
]


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
    if fig.get_layout_engine() is None:  # keep a figure's own (e.g. constrained) layout
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
    boundary: tuple | None = None,
    labels: tuple[str, str] = ("in-distribution", "out-of-distribution"),
    title: str | None = None,
    ax=None,
):
    """Scatter of log-likelihood (x) against LID (y): the key figure of Kamkari et al. (ICML 2024).

    ``thresholds = (psi_L, psi_LID)`` draws the dual rule's acceptance region
    (upper right: in-distribution). ``boundary = (score, level)`` draws the
    contour ``score(c) = level`` of any rule scoring an (n, 2) array of
    (log p, LID) pairs (e.g. ``(detector.rule_.score, detector.offset_)``).
    """
    fig, ax = _axes(ax, figsize=(5.6, 4.4))
    for comp, label, color in ((components_id, labels[0], "C0"), (components_ood, labels[1], "C3")):
        ax.scatter(comp["log_prob"], comp["lid"], s=6, alpha=0.5, color=color, label=f"{label} (n={len(comp['lid'])})")
    if thresholds is not None:
        ax.axvline(thresholds[0], color="k", linestyle="--", linewidth=1)
        ax.axhline(thresholds[1], color="k", linestyle="--", linewidth=1, label="dual thresholds (held-out ID)")
    if boundary is not None:
        score, level = boundary
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        gx, gy = np.meshgrid(np.linspace(x0, x1, 200), np.linspace(y0, y1, 200))
        grid = score(np.c_[gx.ravel(), gy.ravel()]).reshape(gx.shape)
        ax.contour(gx, gy, grid, levels=[level], colors="k", linestyles="--", linewidths=1)
        ax.plot([], [], "k--", linewidth=1, label="decision boundary (held-out ID)")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
    ax.set_xlabel("log p(x) [nats]")
    ax.set_ylabel("LID")
    if title:
        ax.set_title(title)
    ax.legend(frameon=False, loc="best", markerscale=3)
    return _finish(fig, path)


def plot_llr_per_k(
    components_id: dict,
    components_ood: dict,
    path: str | Path | None = None,
    *,
    labels: tuple[str, str] = ("in-distribution", "out-of-distribution"),
    bins: int = 40,
    axes=None,
):
    r"""Histograms of a hierarchical VAE's :math:`LLR^{>k}`, one panel per k = 0 .. L.

    ``components_id`` and ``components_ood`` are
    :meth:`~dgmood.HVAELikelihoodRatioDetector.score_components` outputs; the
    columns k = 0 .. L of their ``"llr"`` matrices (n, L + 1) are plotted (density histograms, shared
    bins per panel between the 0.5th and 99.5th percentiles of both sets, values
    outside clipped into the end bins). Each panel's title holds the AUROC of
    the single-k score :math:`-LLR^{>k}` (OOD positive,
    :func:`~dgmood.metrics.auroc`).

    ``axes``: a sequence of L + 1 Axes to draw on (the legend then goes in the
    first); by default a new figure with one row of panels and the legend below
    them. Returns the saved path when ``path`` is given, else the
    figure.
    """
    from .metrics import auroc

    mats = []
    for name, comp in (("components_id", components_id), ("components_ood", components_ood)):
        llr = np.asarray(comp["llr"], float) if "llr" in comp else None
        if llr is None or llr.ndim != 2 or llr.shape[1] < 1:
            got = "no 'llr'" if llr is None else f"'llr' of shape {llr.shape}"
            raise ValueError(
                f"{name} needs an 'llr' matrix of shape (n, L + 1) (as score_components returns); got {got}."
            )
        mats.append(llr)
    if mats[0].shape[1] != mats[1].shape[1]:
        raise ValueError(
            f"components_id and components_ood have {mats[0].shape[1]} and {mats[1].shape[1]} llr columns."
        )
    ks = list(range(mats[0].shape[1]))
    if axes is None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(
            1,
            len(ks),
            figsize=(3.0 * len(ks), 3.4),
            squeeze=False,
            layout="constrained",
        )
        axes, legend_outside = axes[0], True
    else:
        legend_outside = False
        axes = list(np.ravel(axes))
        if len(axes) != len(ks):
            raise ValueError(
                f"axes must hold {len(ks)} Axes (k = 0 .. {ks[-1]}), got {len(axes)}."
            )
        fig = axes[0].figure
    for k, ax in zip(ks, axes):
        llr_id, llr_ood = mats[0][:, k], mats[1][:, k]
        both = np.r_[llr_id, llr_ood]
        lo, hi = np.percentile(both, 0.5), np.percentile(both, 99.5)
        if not hi > lo:  # e.g. LLR^{>0} == 0 for every point when S == 1
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
        for values, label, color in (
            (llr_id, labels[0], "C0"),
            (llr_ood, labels[1], "C3"),
        ):
            ax.hist(
                np.clip(values, lo, hi),
                bins=edges,
                density=True,
                alpha=0.55,
                color=color,
                label=f"{label} (n={len(values)})",
            )
        ax.set_title(f"k = {k}: AUROC {auroc(-llr_id, -llr_ood):.3f}")
        ax.set_xlabel(f"LLR$^{{>{k}}}$ [nats]")
    axes[0].set_ylabel("density")
    if legend_outside:
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncol=2, frameon=False)
    else:
        axes[0].legend(frameon=False, fontsize="small")
    return _finish(fig, path)
