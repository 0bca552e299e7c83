"""HVAELikelihoodRatioDetector: sklearn checks, the k="auto" rule, the contract, the shipped backbone."""

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.utils import check_random_state
from sklearn.utils.estimator_checks import parametrize_with_checks

from dgmood import HVAELikelihoodRatioDetector
from dgmood.datasets import load_dataset, load_digits, load_fashion_mnist
from dgmood.backbones.schedules import hvae_schedules
from dgmood.detectors.hvae_llr import auto_ks, fisher_llr_score, robust_location_scale
from dgmood.metrics import auroc
from dgmood.pretrained import REGISTRY
from dgmood.thresholds import threshold_at_rate

from .test_estimator_checks import expected_failed_checks

TABULAR = {"channels": 8, "latent_dims": (2, 2)}
IMAGE = {"channels": 8, "blocks_per_stage": 1, "latent_dims": (2, 2)}
FAST = dict(max_epochs=2, batch_size=64, n_samples=2, random_state=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest single-threaded (and do not fight a busy machine for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(k="auto", **kw):
    return HVAELikelihoodRatioDetector(k=k, **{"backbone_params": TABULAR, **FAST, **kw})


@parametrize_with_checks([_tiny(k=1), _tiny(k="auto")], expected_failed_checks=expected_failed_checks)
def test_sklearn_compatible(estimator, check):
    check(estimator)


# ------------------------------------------------------------------ data / fitted detectors
def _gaussian(n, shift=0.0, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    cov = np.array([[1, 0.6, 0, 0], [0.6, 1, 0, 0], [0, 0, 1, -0.3], [0, 0, -0.3, 1]])
    return shift + scale * rng.multivariate_normal(np.zeros(4), cov, size=n)


@pytest.fixture(scope="module")
def X_id():
    return _gaussian(600)


@pytest.fixture(scope="module")
def auto_detector(X_id):
    return _tiny(validation_fraction=0.25).fit(X_id)


@pytest.fixture(scope="module")
def digits():
    return load_digits()[0]


@pytest.fixture(scope="module")
def image_detector(digits):
    return HVAELikelihoodRatioDetector(
        input_shape=(1, 8, 8), backbone_params=IMAGE, max_epochs=1, n_samples=2, random_state=0
    ).fit(digits[:300])


# ------------------------------------------------------------------ k = "auto": ID data only
def test_auto_statistics_come_from_the_held_out_slice_only(auto_detector, X_id):
    det = auto_detector
    n = len(X_id)
    n_cal = int(round(det.validation_fraction * n))
    held_out = X_id[check_random_state(det.seed_).permutation(n)[:n_cal]]
    comps = det.score_components(held_out)
    L = det.n_latent_layers_
    assert comps["llr"].shape == (len(held_out), L + 1)
    center, scale = robust_location_scale(comps["llr"])
    np.testing.assert_allclose(det.llr_center_, center, rtol=1e-12)
    np.testing.assert_allclose(det.llr_scale_, scale, rtol=1e-12)
    np.testing.assert_array_equal(det.auto_ks_, np.arange(1, L))
    np.testing.assert_allclose(det.calibration_scores_, det.score_samples(held_out), rtol=1e-12)
    assert det.offset_ == threshold_at_rate(det.score_samples(held_out), 0.01)


def test_auto_never_reads_ood_data(auto_detector, X_id):
    """Fitting twice on the same ID data gives the same statistics; a probe set scores the same
    whatever OOD data is scored beside it (and before it)."""
    again = clone(auto_detector).fit(X_id)
    for name in ("llr_center_", "llr_scale_", "auto_ks_", "calibration_scores_", "offset_"):
        np.testing.assert_array_equal(getattr(again, name), getattr(auto_detector, name), err_msg=name)
    probe = _gaussian(30, seed=5)
    ood_a, ood_b = _gaussian(40, shift=4.0, seed=6), _gaussian(70, scale=5.0, seed=7)
    ref = auto_detector.score_samples(probe)
    for det, ood in ((auto_detector, ood_a), (again, ood_b)):
        det.score_samples(ood)  # scoring OOD data changes nothing fitted
        # equal up to float64 round-off of batched matrix products (batch sizes differ)
        np.testing.assert_allclose(det.score_samples(np.vstack([probe, ood]))[:30], ref, rtol=1e-12)
        np.testing.assert_allclose(det.score_samples(np.vstack([ood, probe]))[-30:], ref, rtol=1e-12)
    np.testing.assert_array_equal(auto_detector.llr_center_, again.llr_center_)


# ------------------------------------------------------------------ the Fisher combination
def test_score_is_monotone_in_every_llr():
    rng = np.random.default_rng(0)
    llr = rng.normal(scale=3.0, size=(200, 3))
    center, scale = np.array([0.5, -1.0, 2.0]), np.array([1.0, 0.2, 4.0])
    base = fisher_llr_score(llr, center, scale)
    for k in range(3):
        for delta in (1e-6, 0.5, 1e3, 1e8):
            bumped = llr.copy()
            bumped[:, k] += delta
            score = fisher_llr_score(bumped, center, scale)
            assert np.all(score <= base)
            # strictly wherever log p_k is not rounded to 0 (deep inside the ID side), however far out
            visible = (bumped[:, k] - center[k]) / scale[k] > -3
            assert visible.sum() > 50 and np.all(score[visible] < base[visible])
    # far beyond the held-out range the score keeps decreasing and stays finite
    z = np.array([[0.0], [10.0], [40.0], [1e3], [1e12], [1e300]])
    s = fisher_llr_score(z, np.zeros(1), np.ones(1))
    assert np.all(np.isfinite(s)) and np.all(np.diff(s) < 0)


def test_fisher_formula_and_scale_floor():
    from scipy.stats import norm

    llr = np.array([[1.0, 3.0], [-2.0, 0.5]])
    center, scale = np.array([0.0, 1.0]), np.array([2.0, 0.5])
    expected = -(-2 * np.log(norm.sf((llr - center) / scale)).sum(1))
    np.testing.assert_allclose(fisher_llr_score(llr, center, scale), expected, rtol=1e-12)
    # constant or mostly tied held-out columns: a positive scale, never NaN
    values = np.column_stack([np.full(50, 3.0), np.r_[np.zeros(40), np.arange(10.0)], np.arange(50.0)])
    c, s = robust_location_scale(values)
    assert np.all(s > 0) and np.all(np.isfinite(s))
    assert s[1] == pytest.approx(values[:, 1].std())  # MAD is 0: falls back to the std
    assert s[2] == pytest.approx(1.4826 * 12.5)
    assert np.all(np.isfinite(fisher_llr_score(values, c, s)))


def test_auto_ks_leave_out_zero_and_top():
    np.testing.assert_array_equal(auto_ks(3), [1, 2])
    np.testing.assert_array_equal(auto_ks(2), [1])
    assert auto_ks(1).size == 0


# ------------------------------------------------------------------ fixed k, components
def test_int_k_scores_minus_llr_k(X_id):
    for k in (0, 1, 2):
        det = _tiny(k=k, tail="upper").fit(X_id[:200])
        comps = det.score_components(X_id[:50])
        np.testing.assert_array_equal(det.score_samples(X_id[:50]), -comps["llr"][:, k])
        assert det.auto_ks_.size == 0
        both = _tiny(k=k).fit(X_id[:200])  # real-valued rows: tail="auto" is two-sided, -|robust z|
        z = (comps["llr"][:, k] - both.llr_center_[k]) / both.llr_scale_[k]
        np.testing.assert_array_equal(both.score_samples(X_id[:50]), -np.abs(z))
    assert sorted(comps) == ["elbo_bound", "llr", "skip"]
    assert comps["llr"].shape == comps["skip"].shape == (50, 3)
    np.testing.assert_allclose(comps["llr"], comps["elbo_bound"][:, None] - comps["skip"], rtol=1e-12)


def test_k_out_of_range_and_auto_without_middle_layers(X_id):
    with pytest.raises(ValueError, match=r"0\.\.2"):
        _tiny(k=3).fit(X_id[:100])
    with pytest.raises(ValueError, match="L >= 2"):
        _tiny(backbone_params={"channels": 8, "latent_dims": (2,)}).fit(X_id[:100])
    # a user's module: checked after it is loaded
    from dgmood.backbones.hvae import HierarchicalVAE

    module = HierarchicalVAE(input_shape=(4,), channels=8, latent_dims=(2, 2, 2), likelihood="gaussian")
    with pytest.raises(ValueError, match=r"0\.\.3"):
        HVAELikelihoodRatioDetector(backbone=module, k=4, max_epochs=0).fit(X_id[:100])
    det = HVAELikelihoodRatioDetector(backbone=module, k="auto", max_epochs=0, n_samples=2).fit(X_id[:100])
    np.testing.assert_array_equal(det.auto_ks_, [1, 2])
    assert len(det.calibration_scores_) == 100  # nothing trained: all of X calibrates


def test_training_uses_the_kl_schedules(X_id, tmp_path, monkeypatch):
    from dgmood.backbones.fitting import BACKBONES

    sched = BACKBONES["hvae"].train_kwargs({})["schedules"]
    assert [sched["beta"](p) for p in (0.0, 0.1, 0.2, 0.7)] == pytest.approx([0, 0.5, 1, 1])
    assert [sched["free_bits"](p) for p in (0.0, 0.19, 0.3, 0.4, 0.9)] == pytest.approx([2, 2, 1, 0, 0])
    assert hvae_schedules(4.0)["free_bits"](0.3) == pytest.approx(2.0)
    # the schedule reaches training: it ends with beta = 1 and no free bits
    import dgmood.backbones.fitting

    seen = []

    def spy(module, X, **kw):
        out = train_module(module, X, **kw)
        seen.append((kw["schedules"], out[0].beta, out[0].free_bits))
        return out

    train_module = dgmood.backbones.fitting.train_module
    monkeypatch.setattr(dgmood.backbones.fitting, "train_module", spy)
    _tiny(backbone_params={**TABULAR, "free_bits": 3.0}).fit(X_id[:200])
    (schedules, beta, free_bits), = seen
    assert schedules["free_bits"](0.0) == 3.0 and beta == 1.0 and free_bits == 0.0
    monkeypatch.undo()
    # joblib.Memory can hash the schedules: a second fit loads the trained backbone
    a = _tiny(memory=str(tmp_path)).fit(X_id[:200])
    b = _tiny(memory=str(tmp_path), k=1).fit(X_id[:200])
    for key, value in a.backbone_.state_dict().items():
        assert torch.equal(value, b.backbone_.state_dict()[key])
    assert len(list(tmp_path.rglob("output.pkl"))) == 1


def test_likelihood_follows_the_data_range(X_id, digits, image_detector):
    assert _tiny().fit(X_id[:100]).backbone_.likelihood == "gaussian"
    assert image_detector.backbone_.likelihood == "bernoulli"
    with pytest.raises(ValueError, match="Bernoulli"):
        _tiny(backbone_params={**TABULAR, "likelihood": "bernoulli"}).fit(X_id[:100])
    with pytest.raises(ValueError, match="unknown backbone .flow.; valid: \\[.hvae., .pretrained:fmnist-hvae.\\]"):
        _tiny(backbone="flow").fit(X_id[:100])


# ------------------------------------------------------------------ contract on images
@pytest.mark.parametrize(
    "make_bad, match",
    [
        (lambda X: np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X.astype(float)), "NaN"),
        (lambda X: X[:, :-1], "features"),
        (lambda X: X.astype(float) + 300.0, "8-bit pixels"),
        (lambda X: X.astype(float) - 1.0, "8-bit pixels"),
    ],
)
def test_bad_inputs_raise(image_detector, digits, make_bad, match):
    with pytest.raises(ValueError, match=match):
        image_detector.score_samples(make_bad(digits[300:310]))


def test_image_scores_finite_reproducible_and_batch_independent(image_detector, digits):
    X = digits[300:360]
    s = image_detector.score_samples(X)
    assert s.dtype == np.float64 and np.all(np.isfinite(s))
    np.testing.assert_array_equal(image_detector.score_samples(X), s)
    small = clone(image_detector).set_params(batch_size=7)
    small.__dict__.update({k: v for k, v in image_detector.__dict__.items() if k.endswith("_")})
    np.testing.assert_allclose(small.score_samples(X), s, rtol=1e-5, atol=1e-3)
    extremes = np.stack([np.zeros(64), np.full(64, 255), np.tile([0, 255], 32)]).astype(np.uint8)
    assert np.all(np.isfinite(image_detector.score_samples(extremes)))


def test_joblib_roundtrip_identical_scores(tmp_path, image_detector, auto_detector, digits, X_id):
    for det, X in ((image_detector, digits[400:450]), (auto_detector, X_id[:50])):
        path = tmp_path / "det.joblib"
        joblib.dump(det, path)
        loaded = joblib.load(path)
        np.testing.assert_array_equal(loaded.score_samples(X), det.score_samples(X))
        np.testing.assert_array_equal(loaded.predict(X), det.predict(X))


# ------------------------------------------------------------------ the shipped backbone
def test_pretrained_fmnist_hvae_detects_mnist():
    """FashionMNIST -> MNIST, 100 + 100 test images, calibrated on 100 held-out training images.

    A cheap configuration (S = 2, m = 2 skip draws) still separates: LLR^{>1} and k="auto" well
    above chance, the likelihood bound below it (the paradox). Full-size numbers:
    ``benchmarks/results/hvae-llr_*.json``.
    """
    held_out = np.asarray(REGISTRY["fmnist-hvae"].metadata()["heldout_train_indices"])[:100]
    X_fit = load_fashion_mnist("train")[0][held_out]
    X_id = load_dataset("fashion_mnist", "test", n=100, random_state=0)[0]
    X_ood = load_dataset("mnist", "test", n=100, random_state=0)[0]
    det = HVAELikelihoodRatioDetector("pretrained:fmnist-hvae", n_samples=2, n_skip_samples=2, batch_size=100,
                                      random_state=0)
    det.fit(X_fit)
    assert det.n_latent_layers_ == 3 and det.history_ == [] and len(det.calibration_scores_) == 100
    c_id, c_ood = det.score_components(X_id), det.score_components(X_ood)
    assert auroc(-c_id["llr"][:, 1], -c_ood["llr"][:, 1]) > 0.8
    assert auroc(c_id["elbo_bound"], c_ood["elbo_bound"]) < 0.4
    # k="auto" (score_samples is this on the same components; scoring twice would double the test's time)
    assert auroc(det.score_from_components(c_id), det.score_from_components(c_ood)) > 0.85


def test_tabular_far_blob_is_ood_with_the_two_sided_tail():
    """Issue 13: on real-valued rows a far blob drives LLR^{>k} strongly *negative* (the encoder leaves its
    range and the full bound pays KL terms the skip bound drops); the upper tail ranked it as the most
    in-distribution of all (AUROC 0.0), silently. tail="auto" is two-sided for real-valued data."""
    rng = np.random.default_rng(0)
    X, X_far = rng.normal(size=(700, 8)), rng.normal(6.0, 1.0, size=(100, 8))
    det = HVAELikelihoodRatioDetector(max_epochs=15, random_state=0).fit(X[:600])
    assert det.tail_ == "both"
    assert auroc(det.score_samples(X[600:]), det.score_samples(X_far)) > 0.9  # the upper tail alone gave 0.0
    # same seed, same backbone: the estimator the issue was found with, upper tail only
    upper = clone(det).set_params(tail="upper", estimator="independent")
    upper.fit(X[:600])
    assert auroc(upper.score_samples(X[600:]), upper.score_samples(X_far)) < 0.5


def test_two_sided_fisher_is_symmetric_in_z():
    from dgmood.detectors.hvae_llr import fisher_llr_score

    llr = np.array([[1.0, -2.0], [-1.0, 2.0], [0.0, 0.0]])
    s = fisher_llr_score(llr, np.zeros(2), np.ones(2), two_sided=True)
    assert s[0] == s[1] and s[2] > s[0]
    np.testing.assert_allclose(s[2], 0.0, atol=1e-12)  # p = 1 at z = 0


def test_shared_draw_estimators_in_the_detector(X_id):
    """estimator="lme" on the same draws: LLR^{>0} is exactly 0; "hybrid" >= 0; skip draws beyond
    the bound's draws are refused before any training."""
    params = {**TABULAR, "inference": "top_down"}
    lme = _tiny(k=1, estimator="lme", n_skip_samples=2, backbone_params=params).fit(X_id[:200])
    comps = lme.score_components(X_id[:30])
    np.testing.assert_array_equal(comps["llr"][:, 0], 0.0)
    hybrid = clone(lme).set_params(estimator="hybrid").fit(X_id[:200])
    assert (hybrid.score_components(X_id[:30])["llr"][:, 0] >= 0).all()
    assert hybrid.benchmark_fields(comps, comps)["llr_estimator"] == "hybrid"
    with pytest.raises(ValueError, match=r"n_skip_samples \(8\) must not exceed n_samples \(2\)"):
        _tiny(estimator="hybrid", n_skip_samples=8).fit(X_id[:100])
