"""Tests of dgmood.metrics (OOD-positive metrics, bootstrap) and of the functions it
re-exports: the oracle envelope (dgmood.envelope) and the scorer (dgmood.model_selection)."""

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from dgmood import envelope, metrics, model_selection
from dgmood.metrics import (
    auprc,
    auroc,
    bootstrap_ci,
    fpr_at_tpr,
    make_ood_scorer,
    ood_metrics,
    oracle_dual_auroc,
)


def test_reexports_are_the_moved_functions():
    assert oracle_dual_auroc is envelope.oracle_dual_auroc
    assert make_ood_scorer is model_selection.make_ood_scorer
    assert {"oracle_dual_auroc", "make_ood_scorer", "METRICS"} <= set(metrics.__all__)
    for mod in (metrics, envelope, model_selection):
        assert all(hasattr(mod, name) for name in mod.__all__)


def _tied_scores(seed=0, n_id=300, n_ood=200, shift=0.7):
    """Overlapping scores rounded to one decimal, so there are many ties."""
    rng = np.random.default_rng(seed)
    s_id = np.round(rng.normal(shift, 1.0, n_id), 1)
    s_ood = np.round(rng.normal(0.0, 1.0, n_ood), 1)
    return s_id, s_ood


# ---------------------------------------------------------------- point metrics


def _brute_auroc(s_id, s_ood):
    # OOD positive, higher score = more ID: an OOD point "wins" when it scores lower
    diff = s_id[:, None] - s_ood[None, :]
    return np.mean((diff > 0) + 0.5 * (diff == 0))


def _brute_fpr_at_tpr(s_id, s_ood, target):
    # flag as OOD when score <= t; TPR = OOD caught, FPR = ID flagged
    best = 1.0
    for t in np.unique(np.concatenate([s_id, s_ood])):
        tpr = np.mean(s_ood <= t)
        fpr = np.mean(s_id <= t)
        if tpr >= target:
            best = min(best, fpr)
    return best


def _brute_ap(pos, neg):
    """Average precision, positives scored higher, steps at distinct thresholds."""
    ap, prev_recall = 0.0, 0.0
    for t in np.unique(np.concatenate([pos, neg]))[::-1]:
        tp, fp = np.sum(pos >= t), np.sum(neg >= t)
        recall = tp / pos.size
        ap += (recall - prev_recall) * tp / (tp + fp)
        prev_recall = recall
    return ap


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn_and_brute_force(seed):
    s_id, s_ood = _tied_scores(seed)
    y_id = np.r_[np.ones(s_id.size), np.zeros(s_ood.size)]  # ID-positive view
    expected = roc_auc_score(y_id, np.r_[s_id, s_ood])
    assert auroc(s_id, s_ood) == pytest.approx(expected, abs=1e-12)
    assert auroc(s_id, s_ood) == pytest.approx(_brute_auroc(s_id, s_ood), abs=1e-12)


def test_auroc_direction():
    s_id = np.linspace(10, 11, 50)
    s_ood = np.linspace(0, 1, 30)
    assert auroc(s_id, s_ood) == 1.0
    assert auroc(s_ood, s_id) == 0.0
    assert auprc(s_id, s_ood) == pytest.approx(1.0)
    assert auprc(s_id, s_ood, positive="id") == pytest.approx(1.0)
    assert fpr_at_tpr(s_id, s_ood, 0.95) == 0.0


@pytest.mark.parametrize("seed", [0, 3])
def test_auprc_matches_sklearn_and_brute_force(seed):
    s_id, s_ood = _tied_scores(seed)
    y_ood = np.r_[np.zeros(s_id.size), np.ones(s_ood.size)]
    out = auprc(s_id, s_ood, positive="ood")
    inn = auprc(s_id, s_ood, positive="id")
    assert out == pytest.approx(average_precision_score(y_ood, -np.r_[s_id, s_ood]), abs=1e-12)
    assert inn == pytest.approx(average_precision_score(1 - y_ood, np.r_[s_id, s_ood]), abs=1e-12)
    assert out == pytest.approx(_brute_ap(-s_ood, -s_id), abs=1e-12)
    assert inn == pytest.approx(_brute_ap(s_id, s_ood), abs=1e-12)
    assert out != pytest.approx(inn)  # different positive classes, different numbers


@pytest.mark.parametrize("seed", [0, 4])
@pytest.mark.parametrize("target", [0.8, 0.95, 0.5])
def test_fpr_at_tpr_matches_brute_force(seed, target):
    s_id, s_ood = _tied_scores(seed)
    assert fpr_at_tpr(s_id, s_ood, target) == pytest.approx(
        _brute_fpr_at_tpr(s_id, s_ood, target), abs=1e-12
    )


def test_fpr_at_tpr_exact_fraction():
    # 20 OOD points: TPR = 19/20 = 0.95 must count as reaching 0.95
    s_ood = np.arange(20.0)
    s_id = np.arange(20.0) + 18.5  # ID scores 18.5 .. 37.5
    # flag score <= 18: 19 OOD caught (0.95), ID flagged: none
    assert fpr_at_tpr(s_id, s_ood, 0.95) == 0.0
    # TPR 1.0 needs t >= 19: ID 18.5 flagged -> 1/20
    assert fpr_at_tpr(s_id, s_ood, 1.0) == pytest.approx(1 / 20)


def test_ood_metrics_keys_and_values():
    s_id, s_ood = _tied_scores(5)
    m = ood_metrics(s_id, s_ood)
    assert set(m) == {"auroc", "auprc_out", "auprc_in", "fpr80", "fpr95"}
    assert m["auroc"] == auroc(s_id, s_ood)
    assert m["fpr80"] == fpr_at_tpr(s_id, s_ood, 0.80)
    assert m["fpr95"] == fpr_at_tpr(s_id, s_ood, 0.95)
    assert m["fpr80"] <= m["fpr95"]
    assert all(isinstance(v, float) for v in m.values())


@pytest.mark.parametrize(
    "s_id, s_ood, match",
    [
        (np.ones((3, 2)), np.ones(3), "scores_id must be a 1-D"),
        (np.ones(3), np.ones((3, 1)), "scores_ood must be a 1-D"),
        (np.ones(3), np.ones((2, 2, 2)), "scores_ood must be a 1-D"),
        (np.array([]), np.ones(3), "scores_id is empty"),
        (np.ones(3), [], "scores_ood is empty"),
        (np.ones(3), np.array([1.0, np.nan]), "scores_ood contains NaN"),
        (np.array([np.nan, 1.0]), np.ones(3), "scores_id contains NaN"),
        (np.ones(3), np.array([1.0, np.inf]), "scores_ood contains infinity"),
        (np.array([-np.inf, 1.0]), np.ones(3), "scores_id contains infinity"),
    ],
)
@pytest.mark.parametrize("fn", [auroc, auprc, fpr_at_tpr, ood_metrics])
def test_input_validation(fn, s_id, s_ood, match):
    with pytest.raises(ValueError, match=match):
        fn(s_id, s_ood)


def test_input_conversion():
    # lists and integer arrays are converted to float64, with unchanged results
    s_id, s_ood = _tied_scores(9)
    assert auroc(list(s_id), list(s_ood)) == auroc(s_id, s_ood)
    ints = np.arange(10), np.arange(5, 15)
    assert auroc(*ints) == auroc(*(a.astype(float) for a in ints))


def test_bad_arguments():
    s_id, s_ood = _tied_scores()
    with pytest.raises(ValueError, match="positive"):
        auprc(s_id, s_ood, positive="in")
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_tpr(s_id, s_ood, tpr=95)
    with pytest.raises(ValueError, match="metric"):
        bootstrap_ci("accuracy", s_id, s_ood)


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_estimate_and_narrows():
    widths = []
    for n in (100, 2000):
        s_id, s_ood = _tied_scores(seed=7, n_id=n, n_ood=n, shift=1.0)
        low, high = bootstrap_ci("auroc", s_id, s_ood, n_boot=200, random_state=0)
        point = auroc(s_id, s_ood)
        assert low <= point <= high
        widths.append(high - low)
    assert widths[1] < 0.5 * widths[0]  # width ~ 1/sqrt(n): ~0.22 expected


def test_bootstrap_ci_reproducible_and_callable():
    s_id, s_ood = _tied_scores(seed=8)
    a = bootstrap_ci(auroc, s_id, s_ood, n_boot=100, random_state=3)
    b = bootstrap_ci("auroc", s_id, s_ood, n_boot=100, random_state=3)
    assert a == b
    low, high = bootstrap_ci("fpr95", s_id, s_ood, n_boot=100)
    assert 0.0 <= low <= fpr_at_tpr(s_id, s_ood) <= high <= 1.0


# ---------------------------------------------------------------- oracle envelope


def _brute_envelope(c_id, c_ood):
    """The reference procedure with plain loops and no subsampling."""
    grid_a = np.unique(np.r_[c_id[:, 0], c_ood[:, 0], -np.inf, np.inf])
    grid_b = np.unique(np.r_[c_id[:, 1], c_ood[:, 1], -np.inf, np.inf])
    points = []
    for a in grid_a:
        for b in grid_b:
            tp = np.mean((c_id[:, 0] >= a) & (c_id[:, 1] >= b))
            fp = np.mean((c_ood[:, 0] >= a) & (c_ood[:, 1] >= b))
            points.append((fp, tp))
    points.sort()
    xs, ys = [0.0], [0.0]
    for x, y in points:
        if x >= xs[-1] and y >= ys[-1]:
            xs.append(x)
            ys.append(y)
    xs.append(1.0)
    ys.append(1.0)
    area = sum((xs[i] - xs[i - 1]) * (ys[i] + ys[i - 1]) / 2 for i in range(1, len(xs)))
    y = np.r_[np.ones(len(c_id)), np.zeros(len(c_ood))]
    return max(roc_auc_score(y, np.r_[c_id[:, 0], c_ood[:, 0]]), area)


def _correlated(seed, n_id, n_ood):
    rng = np.random.default_rng(seed)
    cov = [[1.0, 0.6], [0.6, 1.0]]
    c_id = rng.multivariate_normal([0.5, 0.5], cov, n_id)
    c_ood = rng.multivariate_normal([0.7, -0.6], cov, n_ood)  # higher log p, lower LID
    return c_id, c_ood


def test_oracle_hand_computed():
    # ID has both coordinates high, each OOD point only one of them:
    # no single threshold separates, the dual rule a = b = 1 does.
    c_id = np.array([[1.0, 1.0], [2.0, 2.0]])
    c_ood = np.array([[3.0, 0.0], [0.0, 3.0]])
    assert auroc(c_id[:, 0], c_ood[:, 0]) == 0.5
    assert oracle_dual_auroc(c_id, c_ood) == 1.0
    assert _brute_envelope(c_id, c_ood) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oracle_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    c_id = rng.integers(0, 6, size=(15, 2)).astype(float) + [0.5, 1.0]
    c_ood = rng.integers(0, 6, size=(12, 2)).astype(float)
    assert oracle_dual_auroc(c_id, c_ood) == pytest.approx(_brute_envelope(c_id, c_ood), abs=1e-12)


def test_oracle_matches_brute_force_continuous():
    c_id, c_ood = _correlated(3, 40, 30)
    assert oracle_dual_auroc(c_id, c_ood) == pytest.approx(_brute_envelope(c_id, c_ood), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_oracle_dominates_single_scores(seed):
    c_id, c_ood = _correlated(seed, 150, 150)  # 302**2 < 100_000 pairs: no subsampling
    env = oracle_dual_auroc(c_id, c_ood)
    a0 = auroc(c_id[:, 0], c_ood[:, 0])
    a1 = auroc(c_id[:, 1], c_ood[:, 1])
    assert env >= a0 - 1e-12
    assert env >= a1 - 1e-12
    assert env > max(a0, a1)  # both coordinates carry signal here


def test_oracle_constant_second_component_is_likelihood_auroc():
    c_id, c_ood = _correlated(4, 500, 400)
    c_id[:, 1] = 2.0
    c_ood[:, 1] = 2.0
    assert oracle_dual_auroc(c_id, c_ood) == pytest.approx(auroc(c_id[:, 0], c_ood[:, 0]), abs=1e-12)


def test_oracle_constant_first_component_is_lid_auroc():
    c_id, c_ood = _correlated(5, 500, 400)
    c_id[:, 0] = -1.0
    c_ood[:, 0] = -1.0
    a1 = auroc(c_id[:, 1], c_ood[:, 1])
    assert a1 > 0.5
    assert oracle_dual_auroc(c_id, c_ood) == pytest.approx(a1, abs=1e-9)


def test_oracle_subsampling_reproducible_and_close():
    c_id, c_ood = _correlated(6, 600, 600)  # 1202**2 pairs > 100_000: subsampled
    a = oracle_dual_auroc(c_id, c_ood)
    assert a == oracle_dual_auroc(c_id, c_ood)
    full = oracle_dual_auroc(c_id, c_ood, n_pairs=10**7)
    assert abs(a - full) < 0.02
    assert full >= auroc(c_id[:, 1], c_ood[:, 1]) - 1e-12


def test_oracle_validation():
    c_id, c_ood = _correlated(0, 10, 10)
    with pytest.raises(ValueError, match=r"components_id must have shape \(n_samples, 2\)"):
        oracle_dual_auroc(c_id[:, :1], c_ood)
    with pytest.raises(ValueError, match=r"components_ood must have shape \(n_samples, 2\)"):
        oracle_dual_auroc(c_id, c_ood[:, 0])
    with pytest.raises(ValueError, match="components_id contains NaN"):
        oracle_dual_auroc(np.r_[c_id, [[np.nan, 0.0]]], c_ood)
    with pytest.raises(ValueError, match="components_ood contains infinity"):
        oracle_dual_auroc(c_id, np.r_[c_ood, [[0.0, np.inf]]])
    with pytest.raises(ValueError, match="components_ood is empty"):
        oracle_dual_auroc(c_id, np.zeros((0, 2)))
    with pytest.raises(ValueError, match="n_pairs"):
        oracle_dual_auroc(c_id, c_ood, n_pairs=0)


# ---------------------------------------------------------------- scorer


def _labelled_data(seed=0):
    rng = np.random.default_rng(seed)
    x_id = rng.normal(0.0, 1.0, size=(120, 2))
    x_ood = rng.uniform(-8.0, 8.0, size=(60, 2))
    x_ood = x_ood[np.linalg.norm(x_ood, axis=1) > 4.0][:40]  # scattered, away from ID
    X = np.r_[x_id, x_ood]
    y = np.r_[np.ones(len(x_id), dtype=int), -np.ones(len(x_ood), dtype=int)]
    return X, y


def test_make_ood_scorer_matches_auroc():
    X, y = _labelled_data()
    est = IsolationForest(random_state=0).fit(X[y == 1])
    scorer = make_ood_scorer("auroc")
    s = est.score_samples(X)
    assert scorer(est, X, y) == pytest.approx(auroc(s[y == 1], s[y == -1]))
    assert scorer(est, X, y) > 0.95
    # lower FPR is better: the scorer returns it negated, as sklearn's neg_* scorers
    fpr_scorer = make_ood_scorer("fpr95")
    assert fpr_scorer(est, X, y) == pytest.approx(-fpr_at_tpr(s[y == 1], s[y == -1]))


def test_make_ood_scorer_in_grid_search():
    X, y = _labelled_data(1)
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    grid = GridSearchCV(
        IsolationForest(n_estimators=30, random_state=0),
        {"contamination": [0.05, 0.2], "max_samples": [4, 64]},
        scoring=make_ood_scorer("auroc"),
        cv=cv,
        error_score="raise",
    )
    grid.fit(X, y)
    # recompute the best mean test score by hand
    per_fold = []
    for train, test in cv.split(X, y):
        est = IsolationForest(n_estimators=30, random_state=0, **grid.best_params_).fit(X[train])
        s = est.score_samples(X[test])
        per_fold.append(auroc(s[y[test] == 1], s[y[test] == -1]))
    assert grid.best_score_ == pytest.approx(np.mean(per_fold))
    assert 0.9 < grid.best_score_ <= 1.0
    # contamination only moves offset_, not score_samples: identical AUROC
    res = grid.cv_results_
    by_params = {
        (p["contamination"], p["max_samples"]): m
        for p, m in zip(res["params"], res["mean_test_score"])
    }
    assert by_params[(0.05, 4)] == by_params[(0.2, 4)]


def test_make_ood_scorer_errors():
    X, y = _labelled_data()
    est = IsolationForest(n_estimators=10, random_state=0).fit(X)
    scorer = make_ood_scorer()
    with pytest.raises(ValueError, match="both classes"):
        scorer(est, X[y == 1], y[y == 1])
    with pytest.raises(ValueError, match=r"\+1"):
        scorer(est, X, (y > 0).astype(int))  # {0, 1} labels
    with pytest.raises(ValueError, match="metric"):
        make_ood_scorer("accuracy")
