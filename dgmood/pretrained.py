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

__all__ = ["PretrainedSpec", "REGISTRY", "build_module", "load_pretrained", "heldout_images", "sha256"]

_WEIGHTS = Path(__file__).parent / "weights"


def _image_flow(**kw):
    from .backbones.flows import ImageFlow

    return ImageFlow(**kw)


def _hvae(**kw):
    from .backbones.hvae import HierarchicalVAE

    return HierarchicalVAE(**kw)


@dataclass(frozen=True)
class PretrainedSpec:
    """What a shipped backbone is: its kind, architecture and the data it saw."""

    name: str
    kind: str  # "flow" | "hvae": which protocol it follows (see dgmood.backbones.protocols)
    builder: Callable[..., torch.nn.Module]
    kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = "fashion_mnist"
    input_shape: tuple[int, ...] = (1, 28, 28)
    train: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_path(self) -> Path:
        return _WEIGHTS / f"{self.name}.pt"

    @property
    def metadata_path(self) -> Path:
        return _WEIGHTS / f"{self.name}.json"

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
    "fmnist-hvae": PretrainedSpec(
        name="fmnist-hvae",
        kind="hvae",
        builder=_hvae,
        kwargs=dict(input_shape=(1, 28, 28), channels=64, free_bits=2.0),
        train=dict(lr=3e-4, batch_size=128, max_epochs=60),
    ),
}


def build_module(name: str) -> torch.nn.Module:
    """A freshly initialised module with the architecture of ``REGISTRY[name]``."""
    spec = _spec(name)
    return spec.builder(**spec.kwargs)


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
