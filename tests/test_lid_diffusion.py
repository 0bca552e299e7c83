"""LIDLikelihoodDetector on a diffusion backbone: FLIPD and the ODE likelihood, against closed forms."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from dgmood import LIDLikelihoodDetector
from dgmood.backbones.diffusion import ScoreDiffusion
from dgmood.lid.flipd import T0_GRID

from .test_diffusion import SDE, GaussianScore


class _Float32Gaussian(nn.Module):
    """The exact Gaussian score in float64 behind a float32 interface (as a trained network)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, y, t):
        return self.inner(y.double(), t.double()).to(y.dtype)


@pytest.fixture(scope="module")
def subspace():
    """Rank-2 Gaussian in R^5 (plus a 1e-4 jitter): ID rows on the plane, OOD rows off it."""
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(5, 2, generator=g, dtype=torch.float64))
    cov = basis @ basis.T + 1e-4 * torch.eye(5, dtype=torch.float64)
    net = GaussianScore(torch.zeros(5, dtype=torch.float64), cov)
    rng = np.random.default_rng(0)
    X_id = rng.normal(size=(300, 2)) @ basis.numpy().T
    X_ood = X_id[:40] + 0.5 * rng.normal(size=(40, 5))
    return ScoreDiffusion((5,), net=_Float32Gaussian(net)), net, X_id, X_ood


def test_flipd_detector_matches_the_closed_forms(subspace):
    module, net, X_id, X_ood = subspace
    det = LIDLikelihoodDetector(module, max_epochs=0, data_range="real", lid_target=2.0, n_calibration=64,
                                ode_params={"solver": "rk45", "trace": "exact"}, batch_size=32,
                                random_state=0).fit(X_id[:200])
    assert det.lid_method_ == "flipd" and det.t0_ in T0_GRID
    assert abs(det.t0_curve_[np.argmin(np.abs(det.t0_curve_[:, 0] - det.t0_)), 1] - 2.0) < 0.2
    comps = det.score_components(np.r_[X_id[200:240], X_ood])
    y = torch.as_tensor(np.r_[X_id[200:240], X_ood], dtype=torch.float32).double()
    exact_lp = net.marginal(0.01).log_prob(y).numpy()
    np.testing.assert_allclose(comps["log_prob"], exact_lp, atol=0.02 * np.abs(exact_lp).max())
    t0 = det.t0_
    psi, sigma = float(SDE.psi(t0)), float(SDE.sigma(t0))
    a_inv = torch.linalg.inv(net.marginal(t0).covariance_matrix)
    r = (psi * y) @ a_inv
    exact_lid = (5 - sigma**2 * torch.trace(a_inv) + sigma**2 * (r**2).sum(1)).numpy()
    # Hutchinson with 8 probes: unbiased, so the mean over 80 rows is close; each row only roughly
    assert abs(comps["lid"].mean() - exact_lid.mean()) < 0.1 * exact_lid.mean()
    assert np.corrcoef(comps["lid"], exact_lid)[0, 1] > 0.9
    assert comps["lid"][40:].mean() > comps["lid"][:40].mean() + 1  # off the plane: more directions
    fields = det.benchmark_fields({k: v[:40] for k, v in comps.items()}, {k: v[40:] for k, v in comps.items()})
    assert fields["lid_method"] == "flipd" and fields["t0"] == det.t0_ and fields["ode"]["solver"] == "rk45"


def test_fixed_t0_skips_the_grid(subspace):
    module, _, X_id, _ = subspace
    det = LIDLikelihoodDetector(module, max_epochs=0, data_range="real", t0=0.05, ode_params={"steps": 2},
                                random_state=0).fit(X_id[:50])
    assert det.t0_ == 0.05 and det.log_tau_ == math.log(0.05) and det.lid_target_ is None
    assert not hasattr(det, "t0_curve_")


def test_pretrained_t0_is_the_shipped_diffusions_record_and_needs_one(subspace):
    """t0="pretrained" scores at the time scripts/lid_target.py calibrated (no grid search); a backbone
    without that record is refused with the way out named."""
    from dgmood.pretrained import REGISTRY, heldout_images

    recorded = REGISTRY["fmnist-diffusion"].metadata()["lid_calibration"]["flipd_t0"]
    det = LIDLikelihoodDetector("pretrained:fmnist-diffusion", t0="pretrained", n_probes=1, batch_size=8,
                                ode_params={"steps": 2}, random_state=0).fit(heldout_images("fmnist-diffusion", 8))
    assert det.t0_ == recorded and det.lid_estimator_.t0s == (recorded,) and not hasattr(det, "t0_curve_")
    module, _, X_id, _ = subspace
    with pytest.raises(ValueError, match=r"t0='pretrained' needs a shipped diffusion.*t0='auto'"):
        LIDLikelihoodDetector(module, max_epochs=0, data_range="real", t0="pretrained").fit(X_id[:50])


def test_a_method_of_the_other_backbone_kind_is_refused(subspace):
    module, _, X_id, _ = subspace
    with pytest.raises(ValueError, match=r"needs a flow backbone.*valid lid_method values for it: \['auto', 'flipd', 'normal_bundle'\]"):
        LIDLikelihoodDetector("diffusion", lid_method="fast").fit(X_id[:20])
    with pytest.raises(ValueError, match=r"needs a diffusion backbone.*\['auto', 'exact', 'fast'\]"):
        LIDLikelihoodDetector("flow", lid_method="flipd").fit(X_id[:20])
    with pytest.raises(ValueError, match=r"needs a flow backbone"):
        LIDLikelihoodDetector(module, max_epochs=0, lid_method="exact").fit(X_id[:20])
    with pytest.raises(ValueError, match=r"ode_params keys \['step'\] are unknown"):
        LIDLikelihoodDetector(module, max_epochs=0, ode_params={"step": 3}).fit(X_id[:20])
    with pytest.raises(ValueError, match=r"solver must be one of .*; n_probes must be an integer >= 1, got 0"):
        LIDLikelihoodDetector("diffusion", ode_params={"solver": "rk4", "n_probes": 0}).fit(X_id[:20])


def test_a_users_estimator_is_not_changed_by_fit(subspace):
    from dgmood.lid.flipd import FLIPDLID

    module, _, X_id, _ = subspace
    mine = FLIPDLID(n_probes=2)
    det = LIDLikelihoodDetector(module, max_epochs=0, data_range="real", lid_method=mine, lid_target=2.0,
                                n_calibration=16, ode_params={"steps": 2}, random_state=0).fit(X_id[:40])
    assert mine.t0s == T0_GRID and det.lid_estimator_ is not mine and det.lid_estimator_.t0s == (det.t0_,)


def test_diffusion_trained_from_scratch_on_images_scores_and_predicts():
    from sklearn.datasets import load_digits

    X = (load_digits().data[:, :64] * 255 / 16).round().astype(np.uint8)
    det = LIDLikelihoodDetector("diffusion", input_shape=(1, 8, 8), backbone_params={"channels": 8, "t_dim": 16},
                                max_epochs=1, batch_size=32, lid_target=10.0, n_calibration=16,
                                ode_params={"steps": 2, "n_probes": 1}, n_probes=2, random_state=0)
    with pytest.warns(UserWarning, match="No t0 of the grid brings the mean FLIPD"):  # one epoch: far from 10
        det.fit(X[:200])
    assert det.lid_method_ == "flipd" and len(det.history_) == 1
    labels = det.predict(X[200:232])
    assert set(labels) <= {-1, 1}
    comps = det.score_components(X[200:232])
    assert np.isfinite(comps["log_prob"]).all() and np.isfinite(comps["lid"]).all()


def test_normal_bundle_detector_counts_the_plane(subspace):
    module, _, X_id, X_ood = subspace
    det = LIDLikelihoodDetector(module, max_epochs=0, data_range="real", lid_method="normal_bundle", lid_target=2.0,
                                n_calibration=32, ode_params={"steps": 4}, batch_size=16,
                                random_state=0).fit(X_id[:64])
    comps = det.score_components(np.r_[X_id[100:110], X_ood[:10]])
    np.testing.assert_array_equal(comps["lid"][:10], 2.0)
    assert math.exp(det.log_tau_) < 1  # between the tangent values (near 0) and the normal ones (near 1)
    gap = LIDLikelihoodDetector(module, max_epochs=0, data_range="real", lid_method="normal_bundle", log_tau=None,
                                ode_params={"steps": 2}, batch_size=16, random_state=0).fit(X_id[:32])
    assert gap.log_tau_ is None and np.isfinite(gap.score_components(X_id[100:104])["lid"]).all()
    with pytest.raises(ValueError, match="log_tau=None .* is for lid_method='normal_bundle'"):
        LIDLikelihoodDetector(module, max_epochs=0, lid_method="flipd", log_tau=None).fit(X_id[:20])


def test_a_small_trained_mlp_finds_the_dimension_and_ranks_the_density():
    """A ScoreMLP trained for seconds on a noisy plane in R^6: FLIPD near 2 at its calibrated t0 and the
    ODE's log p ordered as the true (Gaussian) log-density of the data."""
    from scipy.stats import multivariate_normal, spearmanr

    from dgmood.datasets import make_manifold

    X = make_manifold("subspace", n_samples=3000, intrinsic_dim=2, ambient_dim=6, noise=0.01, random_state=0)
    det = LIDLikelihoodDetector("diffusion", backbone_params={"hidden": 64, "n_layers": 2}, max_epochs=30,
                                lr=3e-3, batch_size=128, lid_target=2.0, n_calibration=128,
                                ode_params={"solver": "rk45", "trace": "exact"}, random_state=0)
    det.fit(X[:2600])
    comps = det.score_components(X[2600:2800])
    assert abs(comps["lid"].mean() - 2.0) < 1.0, (det.t0_, comps["lid"].mean())
    # the ODE gives the density of the t_eps = 0.01 marginal psi x + sigma e of the data, a Gaussian of rank 2
    # plus isotropic noise (covariance estimated from the 2600 training rows)
    from dgmood.backbones.diffusion import VPSDE

    psi, sigma = float(VPSDE().psi(0.01)), float(VPSDE().sigma(0.01))
    cov = psi**2 * np.cov(X[:2600].T) + sigma**2 * np.eye(6)
    true = multivariate_normal(np.zeros(6), cov).logpdf(X[2600:2800].astype(np.float32))
    assert spearmanr(comps["log_prob"], true).statistic >= 0.9


@pytest.mark.parametrize("params, match", [
    ({"t0": 0.0}, "t0"),
    ({"t0": 1.0}, "t0"),
    ({"n_probes": 0}, "n_probes"),
    ({"ode_params": {"t_eps": 1.5}}, "t_eps"),
    ({"ode_params": {"t_eps": 0.0}}, "t_eps"),
    ({"ode_params": {"solver": "dopri"}}, "solver"),
])
def test_bad_diffusion_settings_are_refused_at_fit(subspace, params, match):
    module, _, X_id, _ = subspace
    with pytest.raises(ValueError, match=match):
        LIDLikelihoodDetector(module, max_epochs=0, data_range="real", **params).fit(X_id[:20])


def test_a_diffusion_of_another_shape_or_without_sigma_score_is_refused(subspace):
    _, _, X_id, _ = subspace

    class NoScore(nn.Module):
        input_shape = (5,)

        def log_prob(self, x, generator=None, shared_noise=False):
            return x.sum(1)

    with pytest.raises(ValueError, match=r"lid_method='flipd' needs a diffusion backbone, but backbone=NoScore\(\) is a flow"):
        LIDLikelihoodDetector(NoScore(), max_epochs=0, data_range="real", lid_method="flipd").fit(X_id[:20])
    with pytest.raises(ValueError, match=r"input_shape=\(1, 28, 28\) has 784 values but X has 5 features"):
        LIDLikelihoodDetector("pretrained:fmnist-diffusion").fit(X_id[:20])
