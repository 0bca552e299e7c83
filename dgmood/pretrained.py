"""Registry of backbones shipped in ``dgmood/weights/``.

``backbone="pretrained:<name>"`` in a detector loads one of these: the
architecture is rebuilt from ``build`` and the weights (a CPU ``state_dict``
saved with ``torch.save``) are checked against their SHA-256 before loading.
Each entry records how the weights were produced (``metadata`` JSON beside
the weights: command, epochs, wall time, device, test metrics).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["PretrainedSpec", "REGISTRY", "build_module", "load_pretrained", "heldout_images", "sha256", "register",
           "as_registered", "trained_rows"]

_WEIGHTS = Path(__file__).parent / "weights"


def _image_flow(**kw):
    from .backbones.flows import ImageFlow

    return ImageFlow(**kw)


def _hvae(**kw):
    from .backbones.hvae import HierarchicalVAE

    return HierarchicalVAE(**kw)


def _diffusion(**kw):
    from .backbones.diffusion import ScoreDiffusion

    return ScoreDiffusion(**kw)


@dataclass(frozen=True)
class PretrainedSpec:
    """What a shipped backbone is: its kind, architecture and the data it saw."""

    name: str
    kind: str  # "flow" | "hvae" | "diffusion": which protocol it follows (see dgmood.backbones.protocols)
    builder: Callable[..., torch.nn.Module]
    kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = "fashion_mnist"
    input_shape: tuple[int, ...] = (1, 28, 28)
    train: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # a registered backbone's .pt (None: shipped in dgmood/weights/)

    @property
    def weights_path(self) -> Path:
        return self.path if self.path is not None else _WEIGHTS / f"{self.name}.pt"

    @property
    def metadata_path(self) -> Path:
        return self.weights_path.with_suffix(".json")

    def metadata(self) -> dict:
        if not self.metadata_path.is_file():
            return {}
        return json.loads(self.metadata_path.read_text())


REGISTRY: dict[str, PretrainedSpec] = {
    "fmnist-flow": PretrainedSpec(
        name="fmnist-flow",
        kind="flow",
        builder=_image_flow,
        kwargs=dict(input_shape=(1, 28, 28), n_levels=2, steps_per_level=8, hidden=128, alpha=0.05),
        train=dict(lr=1e-3, batch_size=64, max_epochs=40),
    ),
    # Ren et al.'s background model of fmnist-flow: same architecture and held-out images, trained on
    # training images with 30 % of their pixels mutated (dgmood.backbones.mutation)
    "fmnist-flow-background": PretrainedSpec(
        name="fmnist-flow-background",
        kind="flow",
        builder=_image_flow,
        kwargs=dict(input_shape=(1, 28, 28), n_levels=2, steps_per_level=8, hidden=128, alpha=0.05),
        train=dict(lr=1e-3, batch_size=64, max_epochs=3, mutation_rate=0.3),
    ),
    "fmnist-hvae": PretrainedSpec(
        name="fmnist-hvae",
        kind="hvae",
        builder=_hvae,
        kwargs=dict(input_shape=(1, 28, 28), channels=64, free_bits=2.0, inference="top_down",
                    free_bits_per="layer", analytic_kl=True),
        train=dict(lr=3e-4, batch_size=128, max_epochs=60),
    ),
    "fmnist-diffusion": PretrainedSpec(
        name="fmnist-diffusion",
        kind="diffusion",
        builder=_diffusion,
        kwargs=dict(input_shape=(1, 28, 28), channels=32, mults=(1, 2, 2), blocks=1, t_dim=128),
        train=dict(lr=1e-3, batch_size=128, max_epochs=7, ema_decay=0.995),
    ),
}


def build_module(name: str, **overrides) -> torch.nn.Module:
    """A freshly initialised module with the architecture of ``REGISTRY[name]`` (``overrides`` replace its arguments)."""
    spec = _spec(name)
    return spec.builder(**{**spec.kwargs, **overrides})


def _spec(name: str) -> PretrainedSpec:
    if name not in REGISTRY:
        raise ValueError(f"Unknown pretrained backbone {name!r}; expected one of {sorted(REGISTRY)}.")
    return REGISTRY[name]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_pretrained(name: str) -> tuple[torch.nn.Module, PretrainedSpec]:
    """Rebuild ``name``'s architecture and load its shipped weights (CPU, eval mode).

    Raises
    ------
    FileNotFoundError if the weights are not in the package; ValueError if
    their checksum differs from the one recorded beside them.
    """
    spec = _spec(name)
    if not spec.weights_path.is_file():
        raise FileNotFoundError(
            f"Weights for {name!r} are missing ({spec.weights_path}); reinstall dgmood "
            f"or train them with: python scripts/train_pretrained.py {name}"
        )
    expected = spec.metadata().get("sha256")
    actual = sha256(spec.weights_path)
    if expected is not None and expected != actual:
        raise ValueError(
            f"Checksum mismatch for {spec.weights_path}: expected {expected}, got {actual}. "
            "The file is corrupt or was replaced; reinstall dgmood."
        )
    module = build_module(name)
    state = torch.load(spec.weights_path, map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    module.eval()
    return module, spec


def heldout_images(name: str, n: int | None = None, random_state: int | None = 0) -> np.ndarray:
    """In-distribution images that the shipped backbone ``name`` never saw in training.

    Each shipped backbone holds out part of its training set
    (``heldout_train_indices`` in its metadata): the right data to calibrate a
    detector on, since a threshold set on images the model was trained on is
    biased. Returns ``min(n, available)`` of them (all when ``n`` is None),
    drawn without replacement by ``numpy.random.default_rng(random_state)``, in
    index order, as a uint8 array of shape ``(n, prod(input_shape))``.
    """
    from .datasets import load_dataset

    spec = _spec(name)
    if not spec.dataset:
        raise ValueError(f"{name!r} was registered without a dataset: its held-out indices "
                         "(metadata 'heldout_train_indices') are rows of your own training file.")
    idx = np.asarray(spec.metadata().get("heldout_train_indices", []), dtype=int)
    if len(idx) == 0:
        raise ValueError(f"{spec.metadata_path} records no held-out training images (heldout_train_indices).")
    if n is not None:
        if int(n) < 1:
            raise ValueError(f"n must be a positive number of images, got {n}.")
        rng = np.random.default_rng(random_state)
        idx = np.sort(rng.choice(idx, min(int(n), len(idx)), replace=False))
    X_train, _ = load_dataset(spec.dataset, "train")
    return X_train[idx]


def register(name: str, path: str | Path, dataset: str | None = None) -> PretrainedSpec:
    """Make a stored backbone (:mod:`dgmood.backbones.store`) loadable as ``"pretrained:<name>"``.

    ``path`` is its ``.pt`` (the ``.json`` beside it says its kind and
    architecture). ``dataset``: the :func:`~dgmood.datasets.load_dataset` name
    of its training data, when :func:`heldout_images` should serve it (else
    the held-out indices refer to the user's own training file). Shipped
    names cannot be replaced. Lasts for the session: call it where the
    detector is built (a pickled detector keeps its fitted module).
    """
    from .backbones.store import read_metadata, rebuild_spec

    if name in REGISTRY and REGISTRY[name].path is None:
        raise ValueError(f"{name!r} is a shipped backbone; register yours under another name.")
    meta = read_metadata(path)
    build, kwargs, shape = rebuild_spec(meta)
    spec = PretrainedSpec(name=name, kind=meta["kind"], builder=build, kwargs=kwargs, dataset=dataset or "",
                          input_shape=shape, path=Path(path).with_suffix(".pt").resolve())
    REGISTRY[name] = spec
    return spec


def as_registered(backbone):
    """``backbone`` with a stored backbone's path (a ``.pt`` string or ``os.PathLike``) replaced by
    ``"pretrained:<path>"``, registering it under its resolved path; anything else unchanged."""
    import os

    if isinstance(backbone, os.PathLike) or (isinstance(backbone, str) and backbone.endswith(".pt")
                                              and not backbone.startswith("pretrained:")):
        path = Path(backbone).resolve()
        key = str(path)
        if key not in REGISTRY:
            register(key, path)
        return f"pretrained:{key}"
    return backbone


def _row_hashes(X: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """A 64-bit hash per uint8 row (a fixed random linear form, wrapping): equal rows, equal hashes.

    Computed ``chunk`` rows at a time: the uint64 products of a whole training set would take 8 bytes a pixel.
    """
    weights = np.random.default_rng(12345).integers(1, 2**63 - 1, X.shape[1], dtype=np.uint64) | np.uint64(1)
    out = np.empty(len(X), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for start in range(0, len(X), chunk):
            block = X[start : start + chunk].astype(np.uint64)
            out[start : start + chunk] = (block * weights).sum(axis=1, dtype=np.uint64)
    return out


_TRAINED_HASHES: dict[str, np.ndarray] = {}


def trained_rows(name: str, X: np.ndarray) -> np.ndarray:
    """Mask of the rows of ``X`` (uint8, flattened) that are images the shipped backbone ``name`` trained on.

    Its training set minus its held-out rows; an empty mask when the backbone
    records no dataset or the dataset is not installed here.
    """
    spec = _spec(name)
    if not spec.dataset or X.shape[1] != int(np.prod(spec.input_shape)):
        return np.zeros(len(X), dtype=bool)
    if name not in _TRAINED_HASHES:
        from .datasets import load_dataset

        try:
            X_train, _ = load_dataset(spec.dataset, "train")
        except FileNotFoundError:
            return np.zeros(len(X), dtype=bool)
        keep = np.ones(len(X_train), dtype=bool)
        keep[np.asarray(spec.metadata().get("heldout_train_indices", []), dtype=int)] = False
        _TRAINED_HASHES[name] = np.unique(_row_hashes(X_train[keep]))
    return np.isin(_row_hashes(np.asarray(X, dtype=np.uint8)), _TRAINED_HASHES[name])
