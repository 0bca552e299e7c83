"""LikelihoodRatioDetector (Ren et al., 2019): log p(x) - log p_bg(x), checked against closed forms."""

import joblib
import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from dgmood import LikelihoodRatioDetector
from dgmood.backbones.flows import ImageFlow
from dgmood.backbones.mutation import MutatedInput, mutate_rows
from dgmood.datasets import load_dataset
from dgmood.pretrained import heldout_images

from .conftest import tiny_flow_params


class Gaussian(torch.nn.Module):
    """A closed-form density N(mean, cov) on rows: the oracle of the ratio."""

    def __init__(self, mean, cov):
        super().__init__()
        self.input_shape = (len(mean),)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64))
        self.register_buffer("cov", torch.as_tensor(cov, dtype=torch.float64))
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # a module with parameters, as a backbone has

    def log_prob(self, x, generator=None, shared_noise=False):
        dist = torch.distributions.MultivariateNormal(self.mean, covariance_matrix=self.cov)
        return dist.log_prob(x.to(torch.float64))


def _gaussians():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    return (rng.normal(size=3), a @ a.T + np.eye(3)), (rng.normal(size=3), b @ b.T + 0.5 * np.eye(3))


def test_the_score_is_the_analytic_log_ratio_of_two_gaussians():
    (m1, c1), (m2, c2) = _gaussians()
    det = LikelihoodRatioDetector(Gaussian(m1, c1), background=Gaussian(m2, c2), max_epochs=0, batch_size=16,
                                  random_state=0)
    # the detector hands the backbone float32 rows; the oracle evaluates the same rounded points
    X = (np.random.default_rng(1).normal(size=(40, 3)) * 2).astype(np.float32).astype(np.float64)
    det.fit(X)
    want = multivariate_normal(m1, c1).logpdf(X) - multivariate_normal(m2, c2).logpdf(X)
    np.testing.assert_allclose(det.score_samples(X), want, rtol=1e-6, atol=1e-9)
    comps = det.score_components(X)
    np.testing.assert_allclose(comps["log_prob_background"], multivariate_normal(m2, c2).logpdf(X), rtol=1e-9)


def test_a_background_equal_to_the_backbone_gives_exactly_zero_on_every_input():
    # both models must see the very same dequantization noise: any unshared draw makes this nonzero
    torch.manual_seed(0)
    flow = ImageFlow(input_shape=(1, 8, 8), n_levels=1, steps_per_level=2, hidden=8)
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (37, 64), dtype=np.uint8)
    det = LikelihoodRatioDetector(flow, background=flow, max_epochs=0, input_shape=(1, 8, 8), batch_size=16,
                                  random_state=3).fit(X)
    comps = det.score_components(X)
    assert np.ptp(comps["log_prob"]) > 1.0  # the two terms vary; only their difference vanishes
    np.testing.assert_array_equal(det.score_samples(X), np.zeros(len(X)))


def test_shipped_flow_against_itself_gives_exactly_zero():
    X = heldout_images("fmnist-flow", 12, random_state=0)
    det = LikelihoodRatioDetector("pretrained:fmnist-flow", background="pretrained:fmnist-flow", batch_size=8,
                                  random_state=0).fit(X)
    Xt, _ = load_dataset("mnist", "test", n=10, random_state=0)
    np.testing.assert_array_equal(det.score_samples(Xt), np.zeros(10))


def test_auto_background_trains_a_copy_of_the_backbone_on_mutated_data_and_memory_caches_both(tmp_path):
    rng = np.random.default_rng(0)
    X = (rng.random((160, 64)) < 0.3).astype(np.uint8) * 255  # sparse strokes-like 8-bit images
    kw = dict(input_shape=(1, 8, 8), backbone_params=dict(n_levels=1, steps_per_level=2, hidden=8), max_epochs=1,
              batch_size=32, random_state=0, memory=str(tmp_path))
    det = LikelihoodRatioDetector(**kw).fit(X)
    assert len(det.history_) == 1 and len(det.background_history_) == 1
    assert type(det.background_) is type(det.backbone_) and det.background_source_ == "flow"
    b, g = det.backbone_.state_dict(), det.background_.state_dict()
    assert b.keys() == g.keys() and any(not torch.equal(b[k], g[k]) for k in b)
    scores = det.score_samples(X[:20])
    assert np.all(np.isfinite(scores)) and np.any(scores != 0)
    again = LikelihoodRatioDetector(**kw).fit(X)  # both trainings come from the cache
    np.testing.assert_array_equal(again.score_samples(X[:20]), scores)
    cached = [p for p in tmp_path.rglob("output.pkl")]
    assert len(cached) == 2, cached
    # a heavier L2 penalty is another training: a third cache entry, another background
    LikelihoodRatioDetector(**kw, background_weight_decay=0.1).fit(X)
    assert len(list(tmp_path.rglob("output.pkl"))) == 3


def test_tabular_background_trains_on_rows_whose_features_are_resampled():
    X = np.random.default_rng(0).normal(size=(200, 4))
    det = LikelihoodRatioDetector(backbone_params=tiny_flow_params(), max_epochs=1, batch_size=64,
                                  random_state=0).fit(X)
    assert np.all(np.isfinite(det.score_samples(X[:10])))


def test_mutate_rows_keeps_each_column_marginal_and_changes_about_rate():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 40, generator=g, dtype=torch.float64)
    out = mutate_rows(x, 0.3, torch.Generator().manual_seed(1))
    changed = (out != x).double().mean().item()
    se = np.sqrt(0.3 * 0.7 / x.numel())
    assert abs(changed - 0.3) < 4 * se + 0.3 / 500  # a draw from another row is never the same value here
    for j in range(x.shape[1]):  # every new value is one of its column's values
        assert torch.isin(out[:, j], x[:, j]).all()
    assert torch.equal(mutate_rows(x, 0.3, torch.Generator().manual_seed(1)), out)
    wrapped = MutatedInput(torch.nn.Identity(), 0.5, kind="rows").eval()
    assert torch.equal(wrapped(x), x)
    with pytest.raises(ValueError, match="kind"):
        MutatedInput(torch.nn.Identity(), 0.5, kind="tokens")


@pytest.mark.parametrize("params, match", [
    ({"mutation_rate": 0.0}, "mutation_rate"),
    ({"mutation_rate": 1.0}, "mutation_rate"),
    ({"mutation_rate": -0.2}, "mutation_rate"),
    ({"background_weight_decay": -1e-3}, "background_weight_decay"),
])
def test_out_of_range_settings_are_refused_at_fit(params, match):
    from sklearn.utils._param_validation import InvalidParameterError

    with pytest.raises(InvalidParameterError, match=match):
        LikelihoodRatioDetector(**params).fit(np.zeros((4, 784), dtype=np.uint8))


def test_backgrounds_that_cannot_score_the_same_inputs_are_refused_naming_both():
    X = heldout_images("fmnist-flow", 4, random_state=0)
    with pytest.raises(ValueError, match=r"kind \['flow'\].*'pretrained:fmnist-hvae' is a 'hvae'"):
        LikelihoodRatioDetector("pretrained:fmnist-flow", background="pretrained:fmnist-hvae").fit(X)
    other = ImageFlow(input_shape=(1, 8, 8), n_levels=1, steps_per_level=1, hidden=4)
    with pytest.raises(ValueError, match=r"background's input_shape \(1, 8, 8\) differs from the backbone's "
                                         r"\(1, 28, 28\)"):
        LikelihoodRatioDetector("pretrained:fmnist-flow", background=other, max_epochs=0).fit(X)
    with pytest.raises(ValueError, match=r"DensityModel.*Linear lacks: input_shape, log_prob"):
        LikelihoodRatioDetector("pretrained:fmnist-flow", background=torch.nn.Linear(2, 2), max_epochs=0).fit(X)


def test_auto_background_needs_a_shipped_pair_or_training_data(tmp_path):
    from dgmood.backbones.store import save_backbone

    (m1, c1), _ = _gaussians()
    X = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match="nothing to train it on"):
        LikelihoodRatioDetector(Gaussian(m1, c1), max_epochs=0).fit(X)
    with pytest.raises(ValueError, match="background='flow' is trained on the fit data, but this detector trains"):
        LikelihoodRatioDetector("pretrained:fmnist-flow", background="flow").fit(np.zeros((4, 784), np.uint8))
    arch = dict(input_shape=(1, 8, 8), n_levels=1, steps_per_level=1, hidden=4)
    path = save_backbone(ImageFlow(**arch), tmp_path / "mine.pt", kind="flow", architecture=arch)
    with pytest.raises(ValueError, match="mine.pt-background', which does not exist"):
        LikelihoodRatioDetector(path).fit(np.zeros((4, 64), dtype=np.uint8))


def test_joblib_round_trip_scores_the_same(tmp_path):
    (m1, c1), (m2, c2) = _gaussians()
    X = np.random.default_rng(2).normal(size=(30, 3))
    det = LikelihoodRatioDetector(Gaussian(m1, c1), background=Gaussian(m2, c2), max_epochs=0, batch_size=8,
                                  random_state=0).fit(X)
    joblib.dump(det, tmp_path / "det.joblib")
    back = joblib.load(tmp_path / "det.joblib")
    np.testing.assert_array_equal(back.score_samples(X), det.score_samples(X))
    np.testing.assert_array_equal(back.predict(X), det.predict(X))


@pytest.fixture(scope="module")
def shipped_pair():
    return LikelihoodRatioDetector("pretrained:fmnist-flow", background="pretrained:fmnist-flow", batch_size=8,
                                   random_state=0).fit(heldout_images("fmnist-flow", 8, random_state=0))


@pytest.mark.parametrize("make_bad, match", [
    (lambda: np.full((2, 784), np.nan), "NaN"),
    (lambda: np.full((2, 784), np.inf), "infinity"),
    (lambda: np.zeros((2, 783), np.uint8), "783 features"),
    (lambda: np.full((2, 784), 256.0), "8-bit pixels"),
    (lambda: np.full((2, 784), 3.5), "fractions"),
    (lambda: np.zeros((0, 784), np.uint8), "0 sample"),
    (lambda: np.full((2, 784), "a"), "numeric"),
    (lambda: __import__("scipy.sparse").sparse.csr_matrix(np.ones((2, 784))), "[Ss]parse"),
])
def test_foundation_bad_inputs_are_value_errors(shipped_pair, make_bad, match):
    with pytest.raises(ValueError, match=match):
        shipped_pair.score_samples(make_bad())


def test_one_sample_fit_and_unfitted_use_are_refused():
    from sklearn.exceptions import NotFittedError

    det = LikelihoodRatioDetector("pretrained:fmnist-flow", background="pretrained:fmnist-flow")
    with pytest.raises(NotFittedError):
        det.score_samples(np.zeros((2, 784), np.uint8))
    with pytest.raises(ValueError, match="minimum of 2"):
        det.fit(np.zeros((1, 784), np.uint8))


def test_shipped_pair_moves_away_from_the_paradox_and_predict_flags_the_contamination_share():
    det = LikelihoodRatioDetector("pretrained:fmnist-flow", contamination=0.1, batch_size=100, random_state=0)
    det.fit(heldout_images("fmnist-flow", 400, random_state=2))
    assert det.background_source_ == "pretrained:fmnist-flow-background"
    X, _ = load_dataset("fashion_mnist", "test", n=600, random_state=4)
    rate = np.mean(det.predict(X) == -1)
    # the held-out quantile's binomial error (400 points) and the test sample's (600): 4 standard errors
    tol = 4 * np.sqrt(0.1 * 0.9 * (1 / 400 + 1 / 600))
    assert abs(rate - 0.1) < tol, (rate, tol)
    from dgmood.metrics import auroc

    X_ood, _ = load_dataset("mnist", "test", n=200, random_state=0)
    id_c, ood_c = det.score_components(X[:200]), det.score_components(X_ood)
    alone = auroc(id_c["log_prob"], ood_c["log_prob"])
    assert alone < 0.3  # the flow alone: the paradox
    # the shipped background cancels part of it only (see benchmarks/results/likelihood-ratio_*.json); it
    # must at least move the AUROC well away from the likelihood's
    assert auroc(det.score_from_components(id_c), det.score_from_components(ood_c)) > alone + 0.2
