"""Errors a new user meets first name what was expected (issue 13's misleading messages)."""

import numpy as np
import pytest

from dgmood import HVAELikelihoodRatioDetector, LIDLikelihoodDetector, LikelihoodDetector

X_IMG = np.zeros((4, 784), np.uint8)


@pytest.mark.parametrize("backbone, match", [
    ("pretrained:fmnist_flow", r"unknown backbone 'pretrained:fmnist_flow' \(did you mean 'pretrained:fmnist-flow'\?\)"),
    ("glow", r"unknown backbone 'glow'.*valid: \['flow', 'pretrained:fmnist-flow', 'pretrained:fmnist-flow-background'\]"),
    ("pretrained:fmnist-hvae", r"needs a backbone of kind \['flow'\]; 'pretrained:fmnist-hvae' is a 'hvae'"),
    (3, r"'backbone' parameter"),
])
def test_a_wrong_backbone_is_named_before_anything_else(backbone, match):
    # before: a misspelled name was reported as a missing input_shape
    with pytest.raises(ValueError, match=match):
        LikelihoodDetector(backbone=backbone).fit(X_IMG)


def test_each_detector_lists_its_own_backbones():
    with pytest.raises(ValueError, match=r"valid: \['hvae', 'pretrained:fmnist-hvae'\]"):
        HVAELikelihoodRatioDetector(backbone="hvea").fit(X_IMG)
    with pytest.raises(ValueError, match=r"did you mean 'pretrained:fmnist-flow'"):
        LIDLikelihoodDetector(backbone="pretrained:fmnist-flw").fit(X_IMG)


def test_max_epochs_zero_with_a_named_backbone_says_nothing_would_be_trained():
    # before: "The training loss became nan ... lower the learning rate"
    X = np.random.default_rng(0).normal(size=(40, 3))
    with pytest.raises(ValueError, match=r"trained from scratch and needs max_epochs >= 1, got 0"):
        LikelihoodDetector(backbone="flow", max_epochs=0).fit(X)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_fails_in_fit_for_shipped_backbones_too():
    # before: a shipped backbone warned and ran on the CPU, a trained one raised
    with pytest.raises(ValueError, match="CUDA is not available"):
        LikelihoodDetector(backbone="pretrained:fmnist-flow", device="cuda").fit(X_IMG)
    with pytest.raises(ValueError, match="'gpu' is not a device"):
        LikelihoodDetector(backbone="pretrained:fmnist-flow", device="gpu").fit(X_IMG)


def test_image_arrays_are_flattened_when_input_shape_matches():
    X = np.random.default_rng(0).integers(0, 256, (4, 784), dtype=np.uint8)
    det = LikelihoodDetector(backbone="pretrained:fmnist-flow", batch_size=4, random_state=0).fit(X)
    flat = det.score_samples(X)
    np.testing.assert_array_equal(det.score_samples(X.reshape(4, 28, 28)), flat)
    np.testing.assert_array_equal(det.score_samples(X.reshape(4, 1, 28, 28)), flat)


@pytest.mark.parametrize("X, match", [
    (np.zeros(784, np.uint8), r"got a 1-D array of 784 values. Reshape your data: X.reshape\(1, -1\)"),
    (np.zeros((4, 3, 28, 28), np.uint8), r"got shape \(4, 3, 28, 28\). Flatten the images"),
    (np.zeros((4, 32, 32), np.uint8), r"got shape \(4, 32, 32\).*input_shape=\(channels, height, width\)"),
])
def test_wrong_array_shapes_say_how_to_flatten(X, match):
    with pytest.raises(ValueError, match=match) as info:
        LikelihoodDetector(backbone="pretrained:fmnist-flow").fit(X)
    assert len(str(info.value)) < 400  # no dump of the data


def test_calibrating_a_shipped_backbone_on_its_training_images_warns():
    import warnings

    from dgmood.datasets import load_fashion_mnist
    from dgmood.pretrained import REGISTRY, heldout_images

    held = set(REGISTRY["fmnist-flow"].metadata()["heldout_train_indices"])
    trained = [i for i in range(40) if i not in held][:8]
    X_train = load_fashion_mnist("train")[0]
    with pytest.warns(UserWarning, match=r"8 of 8 calibration rows are images 'fmnist-flow' was trained on"):
        LikelihoodDetector("pretrained:fmnist-flow", batch_size=8).fit(X_train[trained])
    with warnings.catch_warnings(record=True) as caught:  # the held-out images: no such warning
        warnings.simplefilter("always")
        LikelihoodDetector("pretrained:fmnist-flow", batch_size=8).fit(heldout_images("fmnist-flow", 8))
    assert not [w for w in caught if "calibration rows" in str(w.message)]
