"""Tests of dgmood.thresholds: empirical CDF, threshold_at_rate and the held-out rules."""

import pickle

import numpy as np
import pytest
from scipy import stats
from sklearn.exceptions import NotFittedError

from dgmood.thresholds import DualThresholdRule, EmpiricalCDF, JointDensityRule, threshold_at_rate


def _gaussian_components(n, seed):
    rng = np.random.default_rng(seed)
    cov = [[1.0, 0.5], [0.5, 2.0]]
    return rng.multivariate_normal([0.0, 3.0], cov, size=n)


# ---------------------------------------------------------------- EmpiricalCDF


def test_ecdf_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 10, size=200).astype(float)
    cdf = EmpiricalCDF().fit(ref)
    x = np.r_[np.arange(-1.0, 11.0, 0.5), -np.inf, np.inf]
    expected = stats.ecdf(ref).cdf.evaluate(x)
    np.testing.assert_allclose(cdf(x), expected, atol=1e-15)
    # right-continuous: a tied value counts all its copies
    assert cdf(3.0) == np.mean(ref <= 3.0)
    assert np.all(np.diff(cdf.reference_) >= 0)


def test_ecdf_quantile_is_generalised_inverse():
    ref = np.array([1.0, 2.0, 2.0, 2.0, 5.0])
    cdf = EmpiricalCDF().fit(ref)
    for q in np.linspace(0.01, 1.0, 40):
        v = cdf.quantile(q)
        assert cdf(v) >= q - 1e-12
        assert cdf(np.nextafter(v, -np.inf)) < q
    assert cdf.quantile(0.0) == -np.inf
    assert cdf.quantile(1.5) == np.inf


def test_ecdf_errors_and_pickle():
    with pytest.raises(NotFittedError):
        EmpiricalCDF()(0.0)
    with pytest.raises(ValueError, match=r"values must have shape \(n_samples,\)"):
        EmpiricalCDF().fit(np.ones((3, 2)))
    with pytest.raises(ValueError, match="values is empty"):
        EmpiricalCDF().fit([])
    with pytest.raises(ValueError, match="values contains infinity"):
        EmpiricalCDF().fit([0.0, np.inf])
    with pytest.raises(ValueError, match="values contains NaN"):
        EmpiricalCDF().fit([0.0, np.nan])
    cdf = EmpiricalCDF().fit([3.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        cdf([np.nan])
    clone = pickle.loads(pickle.dumps(cdf))
    np.testing.assert_array_equal(clone([0.0, 1.5, 9.0]), cdf([0.0, 1.5, 9.0]))


# ---------------------------------------------------------------- threshold_at_rate


@pytest.mark.parametrize("n", [1, 7, 20, 100, 333, 1000])
@pytest.mark.parametrize("rate", [0.001, 0.01, 0.05, 0.1, 0.29, 0.5, 0.9])
@pytest.mark.parametrize("ties", [False, True])
def test_threshold_at_rate_rejects_at_most_rate(n, rate, ties):
    rng = np.random.default_rng(n)
    scores = rng.normal(size=n)
    if ties:
        scores = np.round(scores, 1)  # many equal scores
    q = threshold_at_rate(scores, rate)
    k = int(np.floor(rate * n + 1e-9))
    assert np.sum(scores < q) <= k
    assert np.mean(scores < q) <= rate + 1e-12
    assert q in scores
    # the largest such level: the next distinct score up rejects more than k
    above = np.unique(scores[scores > q])
    if above.size:
        assert np.sum(scores < above[0]) > k
    # the formula, independently of the order of the input
    assert q == (np.sort(scores)[k] if k >= 1 else scores.min())
    assert threshold_at_rate(scores[::-1], rate) == q


def test_threshold_at_rate_exact_and_round_off():
    scores = np.arange(100.0)[::-1]  # unsorted input
    assert threshold_at_rate(scores, 0.05) == 5.0  # rejects 0..4: exactly 5 %
    assert threshold_at_rate(scores, 0.29) == 29.0  # 0.29 * 100 = 28.999...: still k = 29
    assert threshold_at_rate([3.0, -np.inf, 1.0, np.inf], 0.5) == 3.0  # +/-inf allowed: rejects -inf, 1
    assert threshold_at_rate(np.arange(10.0), 1 - 1e-12) == 9.0  # k = n by round-off: the maximum


def test_threshold_at_rate_strict_and_tiny_n():
    scores = np.array([4.0, 2.0, 3.0])
    for rate in (0.01, 0.2, 1 / 3 - 1e-3):  # floor(rate * 3) = 0
        assert threshold_at_rate(scores, rate) == 2.0  # min(scores): flags none
        assert np.sum(scores < threshold_at_rate(scores, rate)) == 0
        with pytest.raises(ValueError, match="unreachable"):
            threshold_at_rate(scores, rate, strict=True)
    assert threshold_at_rate(scores, 1 / 3, strict=True) == 3.0
    assert threshold_at_rate([7.0], 0.5) == 7.0


def test_threshold_at_rate_errors():
    for bad in (0.0, 1.0, -0.1, 5, "0.1", None):
        with pytest.raises(ValueError, match=r"rate must be .* in \(0, 1\)"):
            threshold_at_rate([1.0, 2.0], bad)
    with pytest.raises(ValueError, match="scores is empty"):
        threshold_at_rate([], 0.1)
    with pytest.raises(ValueError, match="scores contains 1 NaN"):
        threshold_at_rate([1.0, np.nan, 2.0], 0.1)
    with pytest.raises(ValueError, match=r"scores must have shape \(n_samples,\)"):
        threshold_at_rate(np.ones((4, 2)), 0.5)


@pytest.mark.parametrize("target", [0.002, 0.01, 0.05, 0.1, 0.29, 0.5])
def test_threshold_for_fpr_is_threshold_at_rate(target):
    held = _gaussian_components(500, 7)
    for rule in (DualThresholdRule().fit(held), JointDensityRule().fit(held)):
        q = rule.threshold_for_fpr(target)
        assert q == threshold_at_rate(rule.heldout_scores_, target, strict=True)
        assert q == threshold_at_rate(rule.heldout_scores_, target)  # reachable: same either way
        # the formula the rules used before threshold_at_rate existed
        assert q == np.sort(rule.heldout_scores_)[int(np.floor(target * 500 + 1e-9))]


# ---------------------------------------------------------------- DualThresholdRule


def test_score_monotone_in_each_component():
    rule = DualThresholdRule().fit(_gaussian_components(500, 0))
    rng = np.random.default_rng(1)
    base = _gaussian_components(2000, 2)
    # include held-out values themselves (ties, jumps of the ECDF)
    base = np.r_[base, rule.cdfs_[0].reference_[:100, None] * [1.0, 0.0] + [0.0, 3.0]]
    s0 = rule.score(base)
    assert s0.dtype == np.float64 and np.all(np.isfinite(s0))
    for j in range(2):
        for delta in (rng.exponential(0.3, len(base)), np.full(len(base), 1e-9)):
            moved = base.copy()
            moved[:, j] += delta
            assert np.all(rule.score(moved) >= s0)
    # infinite components are allowed and stay finite, at the ends of the range
    extreme = rule.score(np.array([[-np.inf, -np.inf], [np.inf, np.inf]]))
    assert extreme[0] == 0.0 and extreme[1] == pytest.approx(1.0 + 1e-6)


def test_tie_break_orders_equal_minima():
    rule = DualThresholdRule().fit(_gaussian_components(500, 0))
    lo = rule.cdfs_[0].quantile(0.1)
    s = rule.score(np.array([[lo, 3.0], [lo, 10.0]]))  # same min, larger second ECDF
    assert s[1] > s[0]
    s_plain = DualThresholdRule(tie_break=0.0).fit(_gaussian_components(500, 0)).score(
        np.array([[lo, 3.0], [lo, 10.0]])
    )
    assert s_plain[0] == s_plain[1] == pytest.approx(0.1)


def test_fpr_on_fresh_id_data_within_binomial_interval():
    """Calibrated on 5000 held-out ID points, checked on 20000 fresh ones.

    Tolerance: 4 standard errors of the combined error, the fresh binomial
    sd sqrt(p(1-p)/20000) = 0.0015 and the held-out quantile's sd
    sqrt(p(1-p)/5000) = 0.0031, i.e. 4 * 0.0034 = 0.014, plus 2/5000 for the
    discreteness of the ECDFs.
    """
    target, n_held, n_fresh = 0.05, 5000, 20000
    rule = DualThresholdRule().fit(_gaussian_components(n_held, 10))
    q = rule.threshold_for_fpr(target)
    assert rule.heldout_rate(q) <= target
    # q is the largest such level: the next held-out score above q exceeds the target
    above = rule.heldout_scores_[rule.heldout_scores_ > q]
    assert rule.heldout_rate(above[0]) > target
    fresh_rate = np.mean(rule.score(_gaussian_components(n_fresh, 11)) < q)
    var = target * (1 - target)
    tol = 4 * np.sqrt(var / n_fresh + var / n_held) + 2 / n_held
    assert abs(fresh_rate - target) <= tol, (fresh_rate, tol)


def test_threshold_errors():
    rule = DualThresholdRule().fit(_gaussian_components(500, 0))
    with pytest.raises(ValueError, match="unreachable"):
        rule.threshold_for_fpr(1e-3)  # < 1/500
    rule.threshold_for_fpr(1 / 500)  # just reachable
    for bad in (0.0, 1.0, -0.1, 5):
        with pytest.raises(ValueError, match=r"\(0, 1\)"):
            rule.threshold_for_fpr(bad)
    with pytest.raises(ValueError, match="2 column"):
        rule.score(np.ones((4, 3)))
    with pytest.raises(ValueError, match="tie_break"):
        DualThresholdRule(tie_break=0.01).fit(_gaussian_components(500, 0))
    with pytest.raises(ValueError, match="components contains infinity"):
        DualThresholdRule().fit(np.array([[0.0, np.inf], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="components contains NaN"):
        DualThresholdRule().fit(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="components contains 1 NaN"):
        rule.score(np.array([[0.0, np.nan], [1.0, 2.0]]))  # +/-inf allowed, NaN not
    with pytest.raises(ValueError, match=r"components must have shape \(n_samples, n_components\)"):
        rule.score(np.ones(4))
    with pytest.raises(ValueError, match="at least one sample"):
        DualThresholdRule().fit(np.zeros((0, 2)))
    assert rule.score(np.zeros((0, 2))).shape == (0,)  # an empty batch scores to nothing
    with pytest.raises(NotFittedError):
        DualThresholdRule().score(np.ones((2, 2)))


@pytest.mark.parametrize("tie_break", [0.0, 1e-6])
def test_component_thresholds_match_score_rule(tie_break):
    held = _gaussian_components(1000, 3)
    rule = DualThresholdRule(tie_break=tie_break).fit(held)
    q = rule.threshold_for_fpr(0.1)
    psi = rule.component_thresholds(q)
    assert psi.shape == (2,)
    x = np.r_[_gaussian_components(3000, 4), held]
    accepted = rule.score(x) >= q
    dual = np.all(x >= psi, axis=1)
    assert np.all(dual[accepted])  # score rule implies the dual rule at psi
    if tie_break == 0.0:
        np.testing.assert_array_equal(accepted, dual)
    else:
        assert np.mean(dual != accepted) < 0.005  # differ only on boundary ties


def test_single_component_rule_is_a_quantile():
    held = np.random.default_rng(5).normal(size=(400, 1))
    rule = DualThresholdRule(tie_break=0.0).fit(held)
    q = rule.threshold_for_fpr(0.05)
    assert rule.heldout_rate(q) == pytest.approx(0.05)
    assert rule.component_thresholds(q)[0] == np.sort(held[:, 0])[20]


def test_rule_pickles():
    rule = DualThresholdRule().fit(_gaussian_components(300, 0))
    x = _gaussian_components(50, 1)
    clone = pickle.loads(pickle.dumps(rule))
    np.testing.assert_array_equal(clone.score(x), rule.score(x))
    assert clone.threshold_for_fpr(0.1) == rule.threshold_for_fpr(0.1)


# ------------------------------------------------------------ JointDensityRule
def test_joint_density_matches_the_smoothed_gaussian():
    """KDE of N(mu, diag(s^2)) samples ~ the Gaussian convolved with the kernel: N(0, (1 + h^2) I)
    in standardized units, h = Scott's factor n^(-1/6); the standardization is median / MAD."""
    rng = np.random.default_rng(0)
    n = 20000
    c = rng.normal([5.0, -3.0], [2.0, 0.5], size=(n, 2))
    rule = JointDensityRule().fit(c)
    np.testing.assert_allclose(rule.center_, [5.0, -3.0], atol=0.05)
    np.testing.assert_allclose(rule.scale_, [2.0, 0.5], rtol=0.03)
    var = 1.0 + n ** (-1 / 3)
    pts = np.array([[5.0, -3.0], [7.0, -3.0], [5.0, -2.0], [3.0, -3.5]])
    expected = stats.multivariate_normal([0, 0], var * np.eye(2)).logpdf((pts - [5.0, -3.0]) / [2.0, 0.5])
    np.testing.assert_allclose(rule.score(pts), expected, atol=0.06)


def test_joint_density_flags_both_tails_and_stays_finite():
    rng = np.random.default_rng(1)
    rule = JointDensityRule().fit(rng.normal(size=(500, 2)))
    ray = np.c_[np.linspace(0, 50, 30), np.zeros(30)]
    s = rule.score(ray)
    assert np.all(np.diff(s) < 0) and np.all(np.isfinite(s))
    assert rule.score([[4.0, 0.0]])[0] < rule.score([[0.0, 0.0]])[0] > rule.score([[-4.0, 0.0]])[0]
    assert np.isfinite(rule.score([[np.inf, -np.inf]])).all()


def test_joint_density_fpr_on_fresh_data_uses_leave_one_out():
    """Thresholds on leave-one-out held-out scores carry over to fresh ID data; in-sample ones would not."""
    rng = np.random.default_rng(2)
    heldout = rng.standard_t(5, size=(400, 2))
    rule = JointDensityRule().fit(heldout)
    q = rule.threshold_for_fpr(0.05)
    fresh = rule.score(rng.standard_t(5, size=(20000, 2)))
    rate = float(np.mean(fresh < q))
    sd = np.sqrt(0.05 * 0.95 / 400)  # the held-out quantile's own error dominates
    assert abs(rate - 0.05) < 4 * sd, rate
    assert np.all(rule.loo_scores_ < rule.score(heldout))


def test_joint_density_errors():
    with pytest.raises(NotFittedError):
        JointDensityRule().score([[0.0, 0.0]])
    with pytest.raises(ValueError, match="at least"):
        JointDensityRule().fit(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="components contains infinity"):
        JointDensityRule().fit(np.r_[np.zeros((9, 2)), [[np.inf, 0]]])
    const = JointDensityRule().fit(np.c_[np.full(10, 3.0), np.arange(10.0)])  # e.g. all hard LIDs equal
    assert const.scale_[0] == 1.0
    assert const.score([[3.0, 5.0]])[0] > const.score([[6.0, 5.0]])[0]
    rule = JointDensityRule().fit(np.random.default_rng(0).normal(size=(50, 2)))
    with pytest.raises(ValueError, match="2 column"):
        rule.score(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="unreachable"):
        rule.threshold_for_fpr(0.001)
    assert pickle.loads(pickle.dumps(rule)).score([[0.0, 0.0]]) == pytest.approx(rule.score([[0.0, 0.0]]))
