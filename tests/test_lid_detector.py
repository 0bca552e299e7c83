"""LIDLikelihoodDetector and local PCA against known intrinsic dimensions."""

import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

from dgmood import LIDLikelihoodDetector
from dgmood.datasets import make_manifold
from dgmood.lid.jacobian import calibrate_log_tau, lid_from_singular_values
from dgmood.lid.lpca import lpca_lid
from dgmood.thresholds import threshold_at_rate

from .test_estimator_checks import expected_failed_checks


@pytest.mark.parametrize("kind, d, D", [("subspace", 3, 8), ("subspace", 5, 12), ("sphere", 2, 5), ("sphere", 3, 6)])
def test_local_pca_within_one_of_truth(kind, d, D):
    X = make_manifold(kind, 3000, intrinsic_dim=d, ambient_dim=D, noise=0.001, random_state=0)
    lid = lpca_lid(X[:100], X, n_neighbors=60, method="fo", alpha=0.05, exclude_self=True)
    assert abs(lid.mean() - d) < 1.0, lid.mean()
    lid = lpca_lid(X[:100], X, n_neighbors=60, method="ratio", alpha=0.05, exclude_self=True)
    assert abs(lid.mean() - d) < 1.0, lid.mean()


def test_local_pca_errors():
    X = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match="n_neighbors"):
        lpca_lid(X, X, n_neighbors=50)


def test_tau_calibration_hits_target_within_one():
    rng = np.random.default_rng(0)
    sv = torch.as_tensor(np.sort(np.exp(rng.normal(-2, 2, size=(64, 50))), axis=1)[:, ::-1].copy())
    for target in (5.0, 17.3, 40.0):
        log_tau = calibrate_log_tau(lambda t: lid_from_singular_values(sv, t), target)
        assert abs(lid_from_singular_values(sv, log_tau).mean().item() - target) < 1.0
    with pytest.raises(ValueError, match="outside the reachable range"):
        calibrate_log_tau(lambda t: lid_from_singular_values(sv, t), 51.0)


@pytest.fixture(scope="module")
def subspace_detectors(tmp_path_factory):
    X = make_manifold("subspace", 2000, intrinsic_dim=2, ambient_dim=5, noise=0.01, random_state=0)
    # one cached backbone serves both LID methods
    kw = dict(backbone_params={"hidden": 32, "n_layers": 4}, max_epochs=10, random_state=0,
              lpca_neighbors=50, lpca_alpha=0.05, memory=str(tmp_path_factory.mktemp("cache")))
    exact = LIDLikelihoodDetector(lid_method="exact", **kw).fit(X)
    fast = LIDLikelihoodDetector(lid_method="fast", n_probes=16, n_steps=5, **kw).fit(X)
    return X, exact, fast


def test_flow_on_subspace_gives_lid_near_d(subspace_detectors):
    X, exact, fast = subspace_detectors
    assert abs(exact.lid_target_ - 2) < 1.0  # local PCA finds the plane
    for det in (exact, fast):
        lid = det.score_components(X[:200])["lid"]
        assert abs(lid.mean() - 2) < 2.0, (det.lid_method, lid.mean())


def test_lid_separates_off_manifold_points(subspace_detectors):
    X, exact, _ = subspace_detectors
    off = X[:200] + np.random.default_rng(1).normal(0, 0.5, size=(200, 5))
    assert exact.score_samples(off).mean() < exact.score_samples(X[:200]).mean()


def test_dual_score_monotone_in_each_component(subspace_detectors):
    _, det, _ = subspace_detectors
    rng = np.random.default_rng(0)
    comps = {"log_prob": rng.normal(det.rule_.cdfs_[0].reference_.mean(), 3, 500),
             "lid": rng.uniform(0, 5, 500)}
    base = det.score_from_components(comps)
    for key in comps:
        bumped = dict(comps)
        bumped[key] = comps[key] + np.abs(rng.normal(size=500))
        assert np.all(det.score_from_components(bumped) >= base - 1e-12)


def test_fixed_log_tau_is_used(subspace_detectors):
    X, exact, _ = subspace_detectors
    det = LIDLikelihoodDetector(backbone=exact.backbone_, max_epochs=0, lid_method="exact", log_tau=-30.0,
                                random_state=0).fit(X[:300])
    assert det.log_tau_ == -30.0 and det.lid_target_ is None
    np.testing.assert_allclose(det.score_components(X[:20])["lid"], 5.0)  # every direction counts


def test_small_fit_warns_that_local_pca_is_capped(subspace_detectors):
    X, exact, _ = subspace_detectors
    det = LIDLikelihoodDetector(backbone=exact.backbone_, max_epochs=0, lid_method="exact", lpca_neighbors=500,
                                lpca_alpha=0.05, random_state=0)
    with pytest.warns(UserWarning, match=r"used 199 neighbours \(lpca_neighbors=500") as caught:
        det.fit(X[:200])
    assert caught[0].filename == __file__  # points at the caller's fit, not at library internals
    assert det.lid_target_ <= 198


def test_lid_target_pretrained_needs_a_shipped_calibration(subspace_detectors):
    X, exact, _ = subspace_detectors
    det = LIDLikelihoodDetector(backbone=exact.backbone_, max_epochs=0, lid_target="pretrained", random_state=0)
    with pytest.raises(ValueError, match="lid_calibration"):
        det.fit(X[:100])


def test_lid_target_pretrained_calibrates_to_the_shipped_target():
    """The shipped flow's recorded local-PCA target (5000 held-out images) is the calibration
    aim: the mean LID of the fit images at the calibrated tau lands within 1 of it."""
    from dgmood.datasets import load_dataset
    from dgmood.pretrained import REGISTRY

    record = REGISTRY["fmnist-flow"].metadata()["lid_calibration"]
    assert record["n_reference"] == 5000 and record["n_neighbors"] == 1000
    X, _ = load_dataset("fashion_mnist", "test", n=16, random_state=0)
    det = LIDLikelihoodDetector("pretrained:fmnist-flow", lid_method="fast", n_steps=8, lid_target="pretrained",
                                n_calibration=16, batch_size=16, random_state=0).fit(X)
    assert det.lid_target_ == record["lpca_target"]
    assert abs(det.heldout_components_[:, 1].mean() - record["lpca_target"]) < 1.0
    # refitted on a plain module (the same flow, no shipped metadata), the old record is not reused
    with pytest.raises(ValueError, match="lid_calibration"):
        det.set_params(backbone=det.backbone_, max_epochs=0).fit(X)


def test_joint_rule_sets_offset_on_leave_one_out_scores(subspace_detectors):
    """rule="joint" on the same backbone: offset_ is the contamination quantile of leave-one-out
    held-out scores, off-manifold points score lower, and fresh ID data is flagged near 1 %."""
    X, exact, _ = subspace_detectors
    det = LIDLikelihoodDetector(backbone=exact.backbone_, max_epochs=0, lid_method="exact", rule="joint",
                                log_tau=exact.log_tau_, random_state=0).fit(X[:600])
    assert det.offset_ == threshold_at_rate(det.rule_.loo_scores_, 0.01)
    fresh = X[1200:1800]  # the same plane, points not used by fit
    off = fresh + np.random.default_rng(1).normal(0, 0.5, size=fresh.shape)
    assert det.score_samples(off).mean() < det.score_samples(fresh).mean()
    assert np.mean(det.predict(fresh) == -1) < 0.01 + 4 * np.sqrt(0.01 / 600)


@parametrize_with_checks(
    [LIDLikelihoodDetector(backbone_params={"hidden": 8, "n_layers": 2}, max_epochs=2, lid_target=1.5,
                           n_calibration=16, random_state=0, lid_method="fast", n_probes=2, n_steps=3, batch_size=7),
     # a tiny diffusion (ScoreMLP): FLIPD at a fixed t0, a 2-step ODE likelihood
     LIDLikelihoodDetector("diffusion", backbone_params={"hidden": 8, "n_layers": 1, "t_dim": 4}, max_epochs=2,
                           t0=0.1, ode_params={"steps": 2, "n_probes": 1}, n_probes=2, random_state=0,
                           batch_size=7)],
    expected_failed_checks=expected_failed_checks,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_defaults_on_a_shipped_flow_are_fast_with_the_shipped_target():
    """Defaults that work (issue 13): before, lid_method="exact" and a local-PCA target on the few fit
    images, the slow and weak configuration."""
    from dgmood.pretrained import REGISTRY, heldout_images

    det = LIDLikelihoodDetector("pretrained:fmnist-flow", n_steps=4, n_calibration=8, batch_size=8,
                                random_state=0).fit(heldout_images("fmnist-flow", 8, random_state=0))
    assert det.lid_estimator_.method == "fast"
    assert det.lid_target_ == REGISTRY["fmnist-flow"].metadata()["lid_calibration"]["lpca_target"]
