"""The code of docs/developer.rst, run: a backbone and an LID estimator of one's own.

Every block of the guide appears here (same names, same calls; the last test
checks that the guide's classes are these, character for character), checked
against closed forms: the exact Gaussian log-density (scipy), the Gaussian's
entropy, and the singular values of the affine flow's Jacobian, diag(sigma).
"""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.func import jvp

from dgmood import LIDLikelihoodDetector, LikelihoodDetector, TypicalityDetector
from dgmood.backbones.fitting import BACKBONES, BackboneKind
from dgmood.backbones.protocols import LatentFlow
from dgmood.lid.base import LIDEstimator, rowwise_sum
from dgmood.lid.jacobian import JacobianLID
from dgmood.model_selection import IDTrainKFold, make_ood_scorer


# ------------------------------------------------- guide, part 1: a backbone
class Gaussian(nn.Module):
    """Exact log N(x; mu, diag(sigma^2)) in nats: a DensityModel."""

    def __init__(self, mu, sigma):
        super().__init__()
        self.mu = nn.Parameter(torch.as_tensor(mu, dtype=torch.float64))
        self.log_sigma = nn.Parameter(torch.as_tensor(sigma, dtype=torch.float64).log())
        self.input_shape = (len(mu),)

    def log_prob(self, x, generator=None, shared_noise=False):
        z = (x.to(self.mu.dtype) - self.mu) / self.log_sigma.exp()
        D = z.shape[1]
        return -0.5 * (z**2).sum(1) - self.log_sigma.sum() - 0.5 * D * math.log(2 * math.pi)

    def forward(self, x):  # the per-sample training loss, used only when max_epochs > 0
        return -self.log_prob(x)


class GaussianFlow(Gaussian):
    """The same density as the affine flow x = mu + sigma * z, z ~ N(0, I): a LatentFlow."""

    def encode_with_logdet(self, x):
        z = (x.reshape(len(x), -1).to(self.mu.dtype) - self.mu) / self.log_sigma.exp()
        return z, (-self.log_sigma.sum()).expand(len(x))

    def encode_with_log_prob(self, x, generator=None, shared_noise=False):
        z, logdet = self.encode_with_logdet(x)
        return z, -0.5 * (z**2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi) + logdet

    def log_prob(self, x, generator=None, shared_noise=False):
        return self.encode_with_log_prob(x, generator, shared_noise)[1]  # the same bits

    def encode_with_local_decoder(self, x, generator=None, shared_noise=False):
        z, log_p = self.encode_with_log_prob(x, generator, shared_noise)
        return z, log_p, lambda index: self.decode  # an affine decode is stable everywhere

    def decode(self, z):
        return self.mu + self.log_sigma.exp() * z


class Encoder(nn.Module):
    """Has an input_shape but no log_prob: not a DensityModel."""

    def __init__(self):
        super().__init__()
        self.input_shape = (3,)


# ---------------------------------------------- guide, part 2: an estimator
class DiagonalLID(LIDEstimator):
    """LID of a decoder acting coordinate-wise, whose Jacobian is diagonal."""

    protocol = LatentFlow  # checked in fit; the detector then passes the latent z
    n_generators = 0  # no random draws
    per_point = True  # each point on its own: the padding rows of a batch are skipped

    def raw(self, model, x, generators, z=None, local_decoder=None):
        # J @ 1 is the diagonal of a diagonal J; its absolute values are J's singular values
        _, diag = jvp(model.decode, (z,), (torch.ones_like(z),))
        return {"sv": diag.abs().double()}

    def count(self, raw, log_tau):
        above = np.asarray(raw["sv"]) > math.exp(log_tau)
        return rowwise_sum(above)  # fixed-order sum: a point's count ignores its batch mates


# ------------------------------------------------------------------ data
MU, SIGMA = np.array([1.0, -2.0, 0.5]), np.array([0.5, 2.0, 1.0])
# part 2: k = 3 singular values well above tau = e^-1, D - k = 2 well below
SIGMA5 = np.array([3.0, 2.0, 1.5, 0.01, 0.02])
K = 3


@pytest.fixture(scope="module")
def gauss_data():
    rng = np.random.default_rng(0)
    return rng.normal(MU, SIGMA, size=(400, 3)), rng.normal(MU, 3 * SIGMA, size=(150, 3))


@pytest.fixture(scope="module")
def X5():
    return np.random.default_rng(1).normal(0.0, SIGMA5, size=(200, 5))


def labelled_blobs(d):
    """ID: a standard normal blob; OOD: the same blob shifted by 6 in every coordinate."""
    rng = np.random.default_rng(2)
    X = np.vstack([rng.normal(size=(300, d)), rng.normal(6.0, 1.0, size=(100, d))])
    y = np.r_[np.ones(300, int), -np.ones(100, int)]
    cv = IDTrainKFold(3, random_state=0)  # training folds: ID rows only; test folds: both classes
    return X, y, cv


# ----------------------------------------------------------- part 1 tests
def test_likelihood_is_the_exact_gaussian_logpdf(gauss_data):
    X, X_new = gauss_data
    gauss = Gaussian(MU, SIGMA)
    det = LikelihoodDetector(backbone=gauss, max_epochs=0).fit(X)
    scores = det.score_samples(X_new)
    # the detector hands the module float32 rows; the module then computes in float64
    expected = multivariate_normal(MU, np.diag(SIGMA**2)).logpdf(X_new.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(scores, expected, rtol=1e-12, atol=1e-10)
    assert len(det.calibration_scores_) == len(X) and det.history_ == []  # nothing trained
    assert det.backbone_ is not gauss  # the detector works on a copy


def test_flow_scores_the_same_density(gauss_data):
    X, X_new = gauss_data
    det = LikelihoodDetector(backbone=GaussianFlow(MU, SIGMA), max_epochs=0).fit(X)
    expected = multivariate_normal(MU, np.diag(SIGMA**2)).logpdf(X_new.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(det.score_samples(X_new), expected, rtol=1e-12, atol=1e-10)


def test_scores_are_batch_independent(gauss_data):
    X, X_new = gauss_data
    det = LikelihoodDetector(backbone=Gaussian(MU, SIGMA), max_epochs=0, batch_size=32).fit(X)
    full = det.score_samples(X_new)
    perm = np.random.default_rng(0).permutation(len(X_new))
    np.testing.assert_array_equal(det.score_samples(X_new[perm]), full[perm])
    np.testing.assert_array_equal(det.score_samples(X_new[7:8]), full[7:8])


def test_typicality_entropy_is_the_mean_nll(gauss_data):
    X, _ = gauss_data
    det = TypicalityDetector(backbone=Gaussian(MU, SIGMA), max_epochs=0).fit(X)
    nll = -multivariate_normal(MU, np.diag(SIGMA**2)).logpdf(X.astype(np.float32).astype(np.float64))
    assert det.entropy_ == pytest.approx(nll.mean(), rel=1e-12)
    # and, up to sampling error, the Gaussian's differential entropy (nll has sd sqrt(D/2))
    H = 0.5 * len(MU) * (1 + math.log(2 * math.pi)) + np.log(SIGMA).sum()
    assert det.entropy_ == pytest.approx(H, abs=4 * math.sqrt(len(MU) / 2 / len(X)))


def test_missing_log_prob_is_named_at_fit(gauss_data):
    X, _ = gauss_data
    with pytest.raises(ValueError, match=r"DensityModel.*Encoder lacks: log_prob"):
        LikelihoodDetector(backbone=Encoder(), max_epochs=0).fit(X)
    # a DensityModel is not enough for the Jacobian LID: the flow members are named
    with pytest.raises(ValueError, match="lacks: encode_with_logdet, encode_with_log_prob, encode_with_local_decoder, decode"):
        LIDLikelihoodDetector(backbone=Gaussian(MU, SIGMA), max_epochs=0, log_tau=0.0).fit(X)


def test_pipeline_and_grid_search_with_ood_scorer():
    X, y, cv = labelled_blobs(3)
    pipe = Pipeline([
        ("scale", StandardScaler()),
        ("det", LikelihoodDetector(backbone=Gaussian(np.zeros(3), np.ones(3)), max_epochs=0)),
    ])
    search = GridSearchCV(
        pipe,
        {"det__contamination": [0.01, 0.2]},
        scoring={"auroc": make_ood_scorer("auroc"), "bacc": make_ood_scorer("balanced_accuracy")},
        refit="bacc",  # contamination moves offset_ only: the thresholded metric picks it
        cv=cv,
    )
    search.fit(X, y, det__sample_weight=(y == 1))
    assert search.best_params_ == {"det__contamination": 0.01}
    auroc = search.cv_results_["mean_test_auroc"]
    assert auroc[0] == auroc[1] and auroc[0] > 0.95  # a ranking metric ignores the threshold
    bacc = search.cv_results_["mean_test_bacc"]
    assert bacc[0] > bacc[1]
    assert make_ood_scorer("auroc")(search.best_estimator_, X, y) > 0.95


def test_named_family(monkeypatch):
    # registering "gauss" as a named architecture, the way dgmood's own families are
    monkeypatch.setitem(BACKBONES, "gauss", BackboneKind(
        "gauss", lambda shape, params: (Gaussian, dict(mu=np.zeros(shape[0]), sigma=np.ones(shape[0])))))

    class GaussLikelihoodDetector(LikelihoodDetector):
        _backbone_names = ("flow", "gauss")

    X_train = np.random.default_rng(3).normal(MU, SIGMA, size=(500, 3))
    det = GaussLikelihoodDetector(backbone="gauss", max_epochs=40, lr=0.1, random_state=0).fit(X_train)
    assert len(det.history_) > 0 and isinstance(det.backbone_, Gaussian)
    # trained from mu = 0, sigma = 1 by maximum likelihood: near the sample mean and sd
    np.testing.assert_allclose(det.backbone_.mu.detach().numpy(), X_train.mean(0), atol=0.15)
    np.testing.assert_allclose(det.backbone_.log_sigma.exp().detach().numpy(), X_train.std(0), rtol=0.1)
    with pytest.raises(ValueError, match="unknown backbone .gauss."):
        LikelihoodDetector(backbone="gauss", max_epochs=1).fit(X_train)  # not among its names


# ----------------------------------------------------------- part 2 tests
def test_diagonal_lid_counts_k(X5):
    det = LIDLikelihoodDetector(backbone=GaussianFlow(np.zeros(5), SIGMA5), max_epochs=0,
                                lid_method=DiagonalLID(), log_tau=-1.0)
    lid = det.fit(X5).score_components(X5)["lid"]
    assert lid.dtype == np.float64
    np.testing.assert_array_equal(lid, K)
    # log p is the flow's exact log-density
    expected = multivariate_normal(np.zeros(5), np.diag(SIGMA5**2)).logpdf(
        X5.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(det.score_components(X5)["log_prob"], expected, rtol=1e-12)


def test_auto_log_tau_lands_between_the_groups(X5):
    det = LIDLikelihoodDetector(backbone=GaussianFlow(np.zeros(5), SIGMA5), max_epochs=0,
                                lid_method=DiagonalLID(), log_tau="auto", lid_target=K)
    det.fit(X5)
    log_sigma = np.log(SIGMA5)
    assert log_sigma[K:].max() <= det.log_tau_ < log_sigma[:K].min()
    np.testing.assert_array_equal(det.score_components(X5[:10])["lid"], K)


def test_diagonal_lid_agrees_with_exact(X5):
    flow = GaussianFlow(np.zeros(5), SIGMA5)
    for log_tau in (-5.0, -4.2, -3.0, 0.5, 0.9, 2.0):  # 5, 4, 3, 2, 1, 0 values above tau
        counts = {
            method: LIDLikelihoodDetector(backbone=flow, max_epochs=0, lid_method=method, log_tau=log_tau)
            .fit(X5[:100]).score_components(X5[100:130])["lid"]
            for method in ("exact", DiagonalLID())
        }
        exact, toy = counts.values()
        np.testing.assert_array_equal(toy, exact)
        np.testing.assert_array_equal(toy, (SIGMA5 > math.exp(log_tau)).sum())
    # the raw quantities agree too: |diag| sorted = the singular values of diag(sigma)
    x = torch.as_tensor(X5[:4], dtype=torch.float32)
    z, _ = flow.encode_with_log_prob(x)
    with torch.no_grad():  # as the detector calls raw
        toy_sv = DiagonalLID().raw(flow, x, [], z=z)["sv"].numpy()
        exact_sv = JacobianLID("exact").raw(flow, x, [], z=z)["sv"].numpy()
    np.testing.assert_allclose(-np.sort(-toy_sv, axis=1), exact_sv, rtol=1e-12)
    np.testing.assert_allclose(toy_sv, np.broadcast_to(SIGMA5, toy_sv.shape), rtol=1e-12)


def test_diagonal_lid_in_pipeline_and_grid_search():
    X, y, cv = labelled_blobs(5)
    pipe = Pipeline([
        ("scale", StandardScaler()),
        ("det", LIDLikelihoodDetector(backbone=GaussianFlow(np.zeros(5), SIGMA5), max_epochs=0,
                                      lid_method=DiagonalLID(), log_tau=-1.0)),
    ])
    search = GridSearchCV(pipe, {"det__log_tau": [-1.0, 5.0]}, scoring=make_ood_scorer("auroc"), cv=cv)
    search.fit(X, y, det__sample_weight=(y == 1))
    assert search.best_params_["det__log_tau"] in (-1.0, 5.0)
    assert np.all(search.cv_results_["mean_test_score"] > 0.95)
    best = search.best_estimator_  # Pipeline does not forward score_components: call the last step
    lid = best[-1].score_components(best[:-1].transform(X[:5]))
    np.testing.assert_array_equal(lid["lid"], (SIGMA5 > math.exp(search.best_params_["det__log_tau"])).sum())


# ------------------------------------------------------- the guide's text
def test_guide_shows_this_files_code():
    """The classes of docs/developer.rst are those tested here, character for character."""
    import inspect
    import pathlib
    import re
    import textwrap

    rst = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "developer.rst").read_text()
    blocks = [textwrap.dedent(b) for b in re.findall(r"\.\. code-block:: python\n\n((?:(?:   .*)?\n)+)", rst)]
    for cls in (Gaussian, GaussianFlow, Encoder, DiagonalLID):
        assert any(inspect.getsource(cls) in block for block in blocks), cls.__name__
    for call in ('refit="bacc"', 'lid_method=DiagonalLID(), log_tau="auto", lid_target=3',
                 'cv = IDTrainKFold(3, random_state=0)', 'search.fit(X, y, det__sample_weight=(y == 1))',
                 '{"det__log_tau": [-1.0, 5.0]}', 'max_epochs=40, lr=0.1, random_state=0'):
        assert any(call in block for block in blocks), call
