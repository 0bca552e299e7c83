"""A sample's score does not depend on its batch: alone, in batches of 7 or 64, shuffled: same bits.

Every detector runs its network on fixed-shape batches of ``batch_size`` rows
(the last one padded) with noise shared by the batch, and reduces per-sample
quantities in a fixed order. These tests call the public methods with
different slices of the same data and compare bits (``assert_array_equal``,
no tolerance): before fixed-shape batches, float32 kernels rounded a row
differently when scored alone than in a batch (a GEMV for one row).
"""

import numpy as np
import pytest

from dgmood import HVAELikelihoodRatioDetector, LIDLikelihoodDetector, LikelihoodDetector, TypicalityDetector
from dgmood.datasets import load_dataset
from dgmood.pretrained import heldout_images

from .conftest import tiny_flow_params

N = 20


def _scored_every_way(method, X):
    """``method`` on all of X, row by row, in batches of 7, in batches of 64 and shuffled."""
    full = method(X)
    alone = np.concatenate([method(X[i : i + 1]) for i in range(len(X))])
    by7 = np.concatenate([method(X[i : i + 7]) for i in range(0, len(X), 7)])
    by64 = np.concatenate([method(X[i : i + 64]) for i in range(0, len(X), 64)])
    perm = np.random.default_rng(1).permutation(len(X))
    shuffled = np.empty_like(full)
    shuffled[perm] = method(X[perm])
    return full, {"alone": alone, "batches of 7": by7, "batches of 64": by64, "shuffled": shuffled}


def _assert_identical_bits(det, X, methods=("score_samples", "decision_function", "predict")):
    for name in methods:
        full, others = _scored_every_way(getattr(det, name), X)
        for how, values in others.items():
            np.testing.assert_array_equal(values, full, err_msg=f"{type(det).__name__}.{name}: {how}")


@pytest.fixture(scope="module")
def tabular():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 4))
    return X[:240], X[240 : 240 + N]


@pytest.mark.parametrize(
    "make",
    [
        lambda: LikelihoodDetector(backbone_params=tiny_flow_params(), max_epochs=2, batch_size=16, random_state=0),
        lambda: TypicalityDetector(backbone_params=tiny_flow_params(), max_epochs=2, batch_size=16, random_state=0),
        lambda: LIDLikelihoodDetector(backbone_params=tiny_flow_params(), max_epochs=2, batch_size=7,
                                      lid_method="fast", n_probes=2, n_steps=3, lid_target=2.0, random_state=0),
        lambda: LIDLikelihoodDetector(backbone_params=tiny_flow_params(), max_epochs=2, batch_size=16,
                                      lid_method="exact", lid_target=2.0, random_state=0),
        lambda: HVAELikelihoodRatioDetector(backbone_params={"channels": 8, "latent_dims": (2, 2)}, max_epochs=2,
                                            batch_size=16, n_samples=2, n_skip_samples=2, random_state=0),
        lambda: LIDLikelihoodDetector("diffusion", backbone_params={"hidden": 16, "n_layers": 2}, max_epochs=2,
                                      batch_size=16, t0=0.05, ode_params={"steps": 3}, n_probes=2,
                                      random_state=0),
    ],
    ids=["likelihood", "typicality", "lid-fast", "lid-exact", "hvae", "lid-flipd"],
)
def test_tabular_scores_do_not_depend_on_the_batch(make, tabular):
    X_fit, X = tabular
    _assert_identical_bits(make().fit(X_fit), X)


@pytest.fixture(scope="module")
def images():
    return load_dataset("fashion_mnist", "test", n=N // 2, random_state=0)[0], load_dataset(
        "mnist", "test", n=N // 2, random_state=0
    )[0]


def test_shipped_flow_scores_do_not_depend_on_the_batch(images):
    X = np.concatenate(images)
    det = LikelihoodDetector("pretrained:fmnist-flow", batch_size=8, random_state=0).fit(heldout_images("fmnist-flow", 40))
    _assert_identical_bits(det, X, methods=("score_samples",))


def test_shipped_flow_fast_lid_does_not_depend_on_the_batch(images):
    X = np.concatenate([images[0][:2], images[1][:2]])
    det = LIDLikelihoodDetector("pretrained:fmnist-flow", lid_method="fast", n_steps=4, lid_target="pretrained",
                                batch_size=3, random_state=0).fit(heldout_images("fmnist-flow", 6))
    full, others = _scored_every_way(det.score_samples, X)
    for how in ("alone", "shuffled"):
        np.testing.assert_array_equal(others[how], full, err_msg=how)


def test_shipped_hvae_scores_do_not_depend_on_the_batch(images):
    X = np.concatenate([images[0][:4], images[1][:4]])
    det = HVAELikelihoodRatioDetector("pretrained:fmnist-hvae", n_samples=2, n_skip_samples=1, batch_size=4,
                                      random_state=0).fit(heldout_images("fmnist-hvae", 16))
    full, others = _scored_every_way(det.score_samples, X)
    for how in ("alone", "batches of 7", "shuffled"):
        np.testing.assert_array_equal(others[how], full, err_msg=how)
