"""The detector contract of DESIGN.md: inputs, thresholds, persistence, reproducibility, sklearn glue."""

import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from dgmood import LikelihoodDetector, TypicalityDetector
from dgmood.backbones.flows import TabularFlow
from dgmood.datasets import load_digits, make_manifold
from dgmood.metrics import make_ood_scorer
from dgmood.model_selection import IDTrainKFold

from .conftest import tiny_flow_params

IMAGE_PARAMS = {"n_levels": 2, "steps_per_level": 1, "hidden": 8}


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits()
    return X, y


@pytest.fixture(scope="module")
def image_detector(digits):
    X, _ = digits
    det = LikelihoodDetector(input_shape=(1, 8, 8), backbone_params=IMAGE_PARAMS, max_epochs=2,
                             random_state=0, batch_size=256)
    return det.fit(X[:600])


@pytest.fixture(scope="module")
def tabular():
    rng = np.random.default_rng(0)
    X = rng.multivariate_normal([0, 0, 0], [[1, 0.5, 0], [0.5, 1, 0], [0, 0, 1]], size=3000)
    return X


@pytest.fixture(scope="module")
def tabular_detector(tabular):
    return LikelihoodDetector(backbone_params={"hidden": 16, "n_layers": 2}, max_epochs=5,
                              contamination=0.1, random_state=0, validation_fraction=0.3).fit(tabular)


# ----------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "make_bad, match",
    [
        (lambda X: np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X.astype(float)), "NaN"),
        (lambda X: np.where(np.arange(X.size).reshape(X.shape) == 5, np.inf, X.astype(float)), "infinity"),
        (lambda X: X[:, :-1], "features"),
        (lambda X: X[:0], "0 sample"),
        (lambda X: X[0], "2D array"),
        (lambda X: X.astype(float) + 300.0, "8-bit pixels"),
        (lambda X: X.astype(float) + 0.5, "fractions"),
        (lambda X: np.array([["a"] * X.shape[1]] * 2), "numeric"),
    ],
)
def test_bad_inputs_raise_clear_errors(image_detector, digits, make_bad, match):
    X = digits[0][:10]
    with pytest.raises(ValueError, match=match):
        image_detector.score_samples(make_bad(X))


def test_images_without_input_shape_are_refused(digits):
    with pytest.raises(ValueError, match="input_shape"):
        LikelihoodDetector(max_epochs=1).fit(digits[0][:50])


def test_input_shape_mismatch_and_unit_range(digits):
    with pytest.raises(ValueError, match="input_shape"):
        LikelihoodDetector(input_shape=(1, 28, 28), max_epochs=1).fit(digits[0][:50])
    det = LikelihoodDetector(input_shape=(1, 8, 8), backbone_params=IMAGE_PARAMS, max_epochs=1, random_state=0)
    det.fit(digits[0][:100].astype(np.float32) / 255.0)
    assert det.data_range_ == "unit"
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        det.score_samples(digits[0][:5].astype(np.float32))


def test_fit_needs_two_samples(tabular):
    with pytest.raises(ValueError, match="1 sample"):
        LikelihoodDetector(max_epochs=1).fit(tabular[:1])


def test_not_fitted_errors(tabular):
    det = LikelihoodDetector()
    for method in ("score_samples", "decision_function", "predict", "score_components", "ood_score"):
        with pytest.raises(NotFittedError):
            getattr(det, method)(tabular[:5])


def test_unknown_backbone(tabular):
    with pytest.raises(ValueError, match="unknown backbone .glow. \\(did you mean .flow.\\?\\)"):
        LikelihoodDetector(backbone="glow", max_epochs=1).fit(tabular[:50])
    with pytest.raises(ValueError, match="unknown backbone .pretrained:nope."):
        LikelihoodDetector(backbone="pretrained:nope", input_shape=(3,), max_epochs=1).fit(tabular[:50])


# ------------------------------------------------------------ scores / finite
def test_constant_and_saturated_images_score_finite(image_detector):
    X = np.stack([np.zeros(64), np.full(64, 255), np.tile([0, 255], 32)]).astype(np.uint8)
    scores = image_detector.score_samples(X)
    assert scores.dtype == np.float64 and np.all(np.isfinite(scores))


def test_scores_reproducible_and_batch_independent(image_detector, digits):
    X = digits[0][600:700]
    a = image_detector.score_samples(X)
    b = image_detector.score_samples(X)
    np.testing.assert_array_equal(a, b)
    small = clone(image_detector).set_params(batch_size=7)
    small.__dict__.update({k: v for k, v in image_detector.__dict__.items() if k.endswith("_")})
    np.testing.assert_allclose(small.score_samples(X), a, rtol=1e-5, atol=1e-3)
    # order invariance: a sample's score does not depend on its neighbours
    perm = np.random.default_rng(1).permutation(len(X))
    np.testing.assert_allclose(image_detector.score_samples(X[perm]), a[perm], rtol=1e-5, atol=1e-3)


def test_same_random_state_same_scores(digits):
    X = digits[0][:300]
    kw = dict(input_shape=(1, 8, 8), backbone_params=IMAGE_PARAMS, max_epochs=1, random_state=3)
    s1 = LikelihoodDetector(**kw).fit(X).score_samples(X[:50])
    s2 = LikelihoodDetector(**kw).fit(X).score_samples(X[:50])
    np.testing.assert_array_equal(s1, s2)
    s3 = LikelihoodDetector(**{**kw, "random_state": 4}).fit(X).score_samples(X[:50])
    assert not np.array_equal(s1, s3)


def test_decision_predict_and_ood_score(tabular_detector, tabular):
    X = tabular[:200]
    s = tabular_detector.score_samples(X)
    np.testing.assert_allclose(tabular_detector.decision_function(X), s - tabular_detector.offset_)
    np.testing.assert_allclose(tabular_detector.ood_score(X), -s)
    pred = tabular_detector.predict(X)
    assert set(np.unique(pred)) <= {-1, 1} and pred.dtype.kind == "i"
    np.testing.assert_array_equal(pred == -1, s < tabular_detector.offset_)


def test_contamination_controls_rate_on_fresh_id_data(tabular_detector):
    rng = np.random.default_rng(123)
    fresh = rng.multivariate_normal([0, 0, 0], [[1, 0.5, 0], [0.5, 1, 0], [0, 0, 1]], size=20000)
    rate = np.mean(tabular_detector.predict(fresh) == -1)
    n_cal = len(tabular_detector.calibration_scores_)  # 900 held-out points
    # binomial error of the held-out quantile dominates: 4 standard errors
    tol = 4 * np.sqrt(0.1 * 0.9 / n_cal)
    assert abs(rate - 0.1) < tol, (rate, tol)


def test_typicality_flags_too_likely_points(tabular):
    det = TypicalityDetector(backbone_params={"hidden": 16, "n_layers": 2}, max_epochs=5, random_state=0).fit(tabular)
    centre = np.zeros((1, 3))  # the mode: far more likely than typical samples
    typical = tabular[:500]
    assert det.score_samples(centre)[0] < np.median(det.score_samples(typical))
    lik = LikelihoodDetector(backbone_params={"hidden": 16, "n_layers": 2}, max_epochs=5, random_state=0).fit(tabular)
    assert lik.score_samples(centre)[0] > np.max(lik.score_samples(typical)) - 1.0
    assert det.entropy_ == pytest.approx(-np.mean(lik.score_components(tabular[:1])["log_prob"]), abs=5)


# -------------------------------------------------------------- persistence
def test_joblib_roundtrip_in_another_process(tmp_path, image_detector, digits):
    X = digits[0][700:760]
    expected = image_detector.score_samples(X)
    path = tmp_path / "det.joblib"
    joblib.dump(image_detector, path)
    np.save(tmp_path / "X.npy", X)
    code = textwrap.dedent(
        f"""
        import joblib, numpy as np
        det = joblib.load({str(path)!r})
        np.save({str(tmp_path / 'out.npy')!r}, det.score_samples(np.load({str(tmp_path / 'X.npy')!r})))
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def test_clone_and_params(tabular_detector):
    fresh = clone(tabular_detector)
    assert not hasattr(fresh, "offset_")
    assert fresh.get_params()["random_state"] == 0
    rs = np.random.RandomState(0)
    assert LikelihoodDetector(random_state=rs).get_params()["random_state"] is rs


def test_user_module_is_not_modified_or_moved(tabular):
    module = TabularFlow(3, n_layers=1, hidden=8)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    det = LikelihoodDetector(backbone=module, max_epochs=2, random_state=0).fit(tabular[:500])
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert det.backbone_ is not module and len(det.history_) == 2


def test_history_records_losses(tabular_detector):
    assert len(tabular_detector.history_) >= 1
    assert all(np.isfinite(row["train_loss"]) for row in tabular_detector.history_)


# ----------------------------------------------------------- sklearn glue
def test_pipeline_and_grid_search_with_ood_scorer(tmp_path):
    X_id = make_manifold("subspace", 1500, intrinsic_dim=2, ambient_dim=4, noise=0.05, random_state=0) * 5 + 3
    X_ood = np.random.default_rng(1).normal(3, 5, size=(300, 4))
    pipe = Pipeline([
        ("scale", StandardScaler()),
        ("det", LikelihoodDetector(backbone_params={"hidden": 16, "n_layers": 2}, max_epochs=3,
                                   random_state=0, memory=str(tmp_path))),
    ])
    pipe.fit(X_id)
    assert pipe.score_samples(X_ood).mean() < pipe.score_samples(X_id[:300]).mean()
    X = np.vstack([X_id, X_ood])
    y = np.r_[np.ones(len(X_id)), -np.ones(len(X_ood))].astype(int)
    search = GridSearchCV(
        pipe, {"det__contamination": [0.05, 0.2]}, scoring=make_ood_scorer("auroc"),
        cv=IDTrainKFold(2, random_state=0),
    )
    search.fit(X, y, det__sample_weight=(y == 1))  # no OOD row reaches any fit, the refit included
    assert search.best_score_ > 0.8
    assert len(search.best_estimator_[-1].calibration_scores_) == 150  # 10 % of the 1500 ID rows
    # contamination only moves offset_: a thresholded metric tells the candidates apart
    search = GridSearchCV(
        pipe, {"det__contamination": [0.01, 0.3]}, scoring=make_ood_scorer("balanced_accuracy"),
        cv=IDTrainKFold(2, random_state=0),
    )
    search.fit(X, y, det__sample_weight=(y == 1))
    scores = search.cv_results_["mean_test_score"]
    assert scores[0] != scores[1] and np.all(scores > 0.5)


def test_random_state_none_scores_consistently(digits):
    det = LikelihoodDetector(input_shape=(1, 8, 8), backbone_params=IMAGE_PARAMS, max_epochs=1).fit(digits[0][:200])
    X = digits[0][200:260]
    np.testing.assert_array_equal(det.score_samples(X), det.score_samples(X))
    np.testing.assert_allclose(det.set_params(batch_size=7).score_samples(X), det.score_samples(X), atol=1e-3)


def test_pretrained_style_module_calibrates_on_all_data(digits):
    from dgmood.backbones.flows import ImageFlow

    module = ImageFlow((1, 8, 8), **IMAGE_PARAMS)
    det = LikelihoodDetector(backbone=module, max_epochs=0, random_state=0).fit(digits[0][:100])
    assert len(det.calibration_scores_) == 100 and det.history_ == []


def test_memory_trains_backbone_once(tmp_path, tabular):
    kw = dict(backbone_params=tiny_flow_params(), max_epochs=2, random_state=0, memory=str(tmp_path))
    a = LikelihoodDetector(contamination=0.05, **kw).fit(tabular[:400])
    b = LikelihoodDetector(contamination=0.2, **kw).fit(tabular[:400])
    # same backbone weights (loaded from the cache), different thresholds
    for k, v in a.backbone_.state_dict().items():
        assert torch.equal(v, b.backbone_.state_dict()[k])
    assert a.offset_ < b.offset_
    cached = [p for p in tmp_path.rglob("output.pkl")]
    assert len(cached) == 1


def test_unavailable_cuda_is_a_clear_error(tabular_detector):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    det = clone(tabular_detector)
    det.set_params(device="cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        det.fit(np.random.default_rng(0).normal(size=(50, 3)))
