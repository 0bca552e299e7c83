"""InputComplexityDetector: S(x) = bpd(x) - C(x)/D, each term checked against its own computation."""

import numpy as np
import pytest
import torch

from dgmood import InputComplexityDetector
from dgmood.backbones.flows import bits_per_dim
from dgmood.compression import compressed_bits
from dgmood.datasets import load_dataset
from dgmood.metrics import auroc
from dgmood.pretrained import heldout_images, load_pretrained


@pytest.fixture(scope="module")
def fitted():
    det = InputComplexityDetector("pretrained:fmnist-flow", batch_size=32, random_state=0)
    return det.fit(heldout_images("fmnist-flow", 64, random_state=0))


def test_components_are_the_flow_codelength_and_the_png_size(fitted):
    X, _ = load_dataset("mnist", "test", n=20, random_state=0)
    comps = fitted.score_components(X)
    np.testing.assert_array_equal(comps["complexity_bpd"], compressed_bits(X, (1, 28, 28), "png") / 784)
    flow, _ = load_pretrained("fmnist-flow")
    # the detector's first scoring stream, one batch of 32 rows padded as the detector pads
    gen = fitted._generators(torch.device("cpu"))[0]
    x = torch.as_tensor(np.r_[X, np.repeat(X[-1:], 12, 0)], dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    with torch.no_grad():
        want = bits_per_dim(flow.log_prob(x, generator=gen, shared_noise=True), 784).double().numpy()[:20]
    np.testing.assert_allclose(comps["bits_per_dim"], want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(fitted.score_samples(X), comps["complexity_bpd"] - comps["bits_per_dim"])
    assert fitted.compressor_ == ("png",)


def test_complexity_correction_undoes_the_paradox_on_a_small_sample(fitted):
    X_id, _ = load_dataset("fashion_mnist", "test", n=100, random_state=0)
    X_ood, _ = load_dataset("mnist", "test", n=100, random_state=0)
    id_c, ood_c = fitted.score_components(X_id), fitted.score_components(X_ood)
    assert auroc(-id_c["bits_per_dim"], -ood_c["bits_per_dim"]) < 0.3  # likelihood alone: the paradox
    assert auroc(fitted.score_samples(X_id), fitted.score_samples(X_ood)) > 0.8


def test_tabular_data_and_missing_codecs_are_refused_before_training():
    with pytest.raises(ValueError, match="scores images"):
        InputComplexityDetector("flow").fit(np.random.default_rng(0).normal(size=(50, 4)))
    from dgmood.compression import available_codecs

    if "webp" not in available_codecs():
        with pytest.raises(ImportError, match="imagecodecs"):
            InputComplexityDetector("pretrained:fmnist-flow", compressor="webp").fit(
                np.zeros((4, 784), dtype=np.uint8))
    with pytest.raises(ValueError, match="kind"):
        InputComplexityDetector("pretrained:fmnist-hvae").fit(np.zeros((4, 784), dtype=np.uint8))


def test_parameters_clone_and_validation():
    from sklearn.base import clone
    from sklearn.utils._param_validation import InvalidParameterError

    det = InputComplexityDetector("pretrained:fmnist-flow", compressor="zlib", batch_size=16)
    assert clone(det).get_params()["compressor"] == "zlib" and clone(det).batch_size == 16
    with pytest.raises(InvalidParameterError, match="compressor"):
        InputComplexityDetector(compressor="flif").fit(np.zeros((4, 784), dtype=np.uint8))


def test_predict_flags_the_contamination_share_of_fresh_id_images():
    det = InputComplexityDetector("pretrained:fmnist-flow", contamination=0.1, batch_size=100, random_state=0)
    det.fit(heldout_images("fmnist-flow", 400, random_state=2))
    X, _ = load_dataset("fashion_mnist", "test", n=600, random_state=4)
    rate = np.mean(det.predict(X) == -1)
    # the held-out quantile's binomial error (400 points) and the test sample's (600): 4 standard errors
    tol = 4 * np.sqrt(0.1 * 0.9 * (1 / 400 + 1 / 600))
    assert abs(rate - 0.1) < tol, (rate, tol)
