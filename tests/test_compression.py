"""Lossless codelengths (Serra et al.'s complexity term): sizes, shapes, codecs and errors."""

import zlib

import numpy as np
import pytest

from dgmood.compression import CODECS, available_codecs, compressed_bits
from dgmood.datasets import load_dataset

SHAPE = (1, 28, 28)


def test_incompressible_noise_costs_at_least_its_raw_size_and_constants_almost_nothing():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (4, 784), dtype=np.uint8)
    flat = np.full((2, 784), 117, dtype=np.uint8)
    for codec in ("png", "zlib"):
        noisy, const = compressed_bits(noise, SHAPE, codec), compressed_bits(flat, SHAPE, codec)
        assert (noisy >= 8 * 784).all(), codec  # no lossless code shrinks random bytes
        assert (const < 0.2 * 8 * 784).all() and const[0] == const[1], codec
    assert compressed_bits(flat[:1], SHAPE, "zlib")[0] == 8 * len(zlib.compress(flat[0].tobytes(), 9))


def test_simpler_images_get_shorter_codes_mnist_below_fashion_mnist():
    """The premise of the input-complexity score: MNIST digits compress better than FashionMNIST items."""
    X_f, _ = load_dataset("fashion_mnist", "test", n=200, random_state=0)
    X_m, _ = load_dataset("mnist", "test", n=200, random_state=0)
    for codec in ("png", "zlib"):
        assert compressed_bits(X_m, SHAPE, codec).mean() < 0.8 * compressed_bits(X_f, SHAPE, codec).mean()


def test_ensemble_is_the_smallest_available_and_layouts_agree():
    rng = np.random.default_rng(1)
    X = (rng.random((5, 3 * 8 * 8)) < 0.3).astype(np.uint8) * 255
    sizes = {c: compressed_bits(X, (3, 8, 8), c) for c in available_codecs()}
    np.testing.assert_array_equal(compressed_bits(X, (3, 8, 8), "ensemble"), np.min(list(sizes.values()), axis=0))
    np.testing.assert_array_equal(compressed_bits(X.reshape(5, 3, 8, 8), (3, 8, 8), "png"), sizes["png"])
    assert set(available_codecs()) <= set(CODECS)


def test_bad_input_is_refused_with_what_was_expected():
    X = np.zeros((2, 784), dtype=np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        compressed_bits(X.astype(np.float32), SHAPE)
    with pytest.raises(ValueError, match="C\\*H\\*W = 784"):
        compressed_bits(X[:, :700], SHAPE)
    with pytest.raises(ValueError, match="codec must be one of"):
        compressed_bits(X, SHAPE, "flif")
    with pytest.raises(ValueError, match="C in \\(1, 3, 4\\)"):
        compressed_bits(X, (2, 14, 28))
    if "jpeg2000" not in available_codecs():
        with pytest.raises(ImportError, match="imagecodecs"):
            compressed_bits(X, SHAPE, "jpeg2000")
