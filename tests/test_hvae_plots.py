"""plot_llr_per_k: one panel per k, the AUROC of -LLR^{>k} in each title."""

import warnings

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dgmood.plotting import plot_llr_per_k

matplotlib.use("Agg")  # no screen needed

L = 3


def _components(n, shift, seed):
    """Synthetic score_components output: llr_k grows with k, OOD shifted up at k=1, 2."""
    rng = np.random.default_rng(seed)
    comp = {"elbo_bound": rng.normal(-230.0, 5.0, n)}
    llr = np.column_stack([rng.normal(10.0 * k + shift * (k in (1, 2)), 3.0, n) for k in range(L + 1)])
    llr[:, 0] = 0.0  # S = 1: LLR^{>0} is identically 0 (a degenerate panel)
    comp["llr"] = llr
    comp["skip"] = comp["elbo_bound"][:, None] - llr
    return comp


@pytest.fixture
def components():
    return _components(60, 0.0, 0), _components(40, 4.0, 1)


def _expected_auroc(c_id, c_ood, k):
    """AUROC of -LLR^{>k} with OOD as the positive class, straight from sklearn."""
    a, b = c_id["llr"][:, k], c_ood["llr"][:, k]
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    return roc_auc_score(y, np.r_[a, b])  # high LLR = OOD


def test_one_panel_per_k_with_its_auroc(components):
    c_id, c_ood = components
    fig = plot_llr_per_k(c_id, c_ood, labels=("ID", "OOD"))
    try:
        assert len(fig.axes) == L + 1
        for k, ax in enumerate(fig.axes):
            expected = _expected_auroc(c_id, c_ood, k)
            assert ax.get_title() == f"k = {k}: AUROC {expected:.3f}"
            assert len(ax.patches) > 0
        assert fig.axes[0].get_title().endswith("AUROC 0.500")  # constant llr_0
        assert _expected_auroc(c_id, c_ood, 1) > 0.75  # the shift shows in the title
        (legend,) = fig.legends  # below the panels, not over one of them
        assert [t.get_text() for t in legend.get_texts()] == ["ID (n=60)", "OOD (n=40)"]
    finally:
        plt.close(fig)


def test_given_axes_and_saved_png(components, tmp_path):
    c_id, c_ood = components
    fig, axes = plt.subplots(2, 2)
    try:
        assert plot_llr_per_k(c_id, c_ood, axes=axes) is fig
        assert axes[0, 0].get_legend() is not None and not fig.legends
        titles = [ax.get_title() for ax in axes.ravel()]
        assert titles == [
            f"k = {k}: AUROC {_expected_auroc(c_id, c_ood, k):.3f}"
            for k in range(L + 1)
        ]
        with pytest.raises(ValueError, match="4 Axes"):
            plot_llr_per_k(c_id, c_ood, axes=axes.ravel()[:3])
    finally:
        plt.close(fig)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no layout-engine switch while saving
        path = plot_llr_per_k(c_id, c_ood, tmp_path / "sub" / "llr.png")
    assert path == tmp_path / "sub" / "llr.png" and path.stat().st_size > 0


def test_rejects_components_without_llr(components):
    c_id, c_ood = components
    with pytest.raises(ValueError, match="components_id needs an 'llr' matrix"):
        plot_llr_per_k({"log_prob": np.zeros(3)}, c_ood)
    with pytest.raises(ValueError, match="4 and 3 llr columns"):
        plot_llr_per_k(c_id, {**c_ood, "llr": c_ood["llr"][:, :3]})
