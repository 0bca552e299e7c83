"""A user's own backbones on disk: train one on their data, save it, load it by path or register a name.

A stored backbone is two files in one directory, as the shipped ones in
``dgmood/weights/``: ``<name>.pt`` (a CPU ``state_dict``) and ``<name>.json``
(its metadata: ``kind`` and ``architecture`` to rebuild it, ``input_shape``,
``sha256`` of the weights, ``heldout_train_indices`` (rows of the training
file it never trained on: calibrate detectors there), the command, history
and held-out metrics). A detector takes ``backbone=<path to the .pt>``, or a
name after :func:`dgmood.pretrained.register` (``"pretrained:<name>"``).

:func:`train_backbone` is what ``dgmood train {flow,hvae} --data ... --out DIR``
runs: progress bars, a checkpoint every epoch in ``<out>/checkpoints/`` and
resume from it. It never writes into the installed package.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from .fitting import BACKBONES
from .training import train_module

__all__ = ["save_backbone", "load_backbone", "read_metadata", "rebuild_spec", "train_backbone",
           "load_training_data"]


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".pt")
    if path.suffix != ".pt":
        raise ValueError(f"A stored backbone is a .pt file with its .json beside it, got {str(path)!r}.")
    return path, path.with_suffix(".json")


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata JSON beside a stored backbone's ``.pt``."""
    weights, meta = _paths(path)
    if not weights.is_file() or not meta.is_file():
        raise FileNotFoundError(f"No stored backbone at {str(weights)!r} (needs {weights.name} and {meta.name}).")
    return json.loads(meta.read_text())


def rebuild_spec(metadata: dict) -> tuple[type, dict, tuple[int, ...]]:
    """``(class, kwargs, input_shape)`` that rebuild a stored backbone from its metadata."""
    arch = dict(metadata["architecture"])
    shape = tuple(int(s) for s in arch.pop("input_shape"))
    build, kwargs = BACKBONES[metadata["kind"]].spec(shape, arch)
    return build, kwargs, shape


def save_backbone(module: torch.nn.Module, path: str | os.PathLike, *, kind: str, architecture: dict,
                  metadata: dict | None = None) -> Path:
    """Write ``module``'s CPU weights to ``path`` (.pt) and its metadata beside it (.json); returns the .pt."""
    from ..pretrained import sha256

    if kind not in BACKBONES:
        raise ValueError(f"kind must be one of {sorted(BACKBONES)}, got {kind!r}.")
    weights, meta = _paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, weights)
    record = {**(metadata or {}), "kind": kind, "architecture": architecture,
              "input_shape": list(architecture["input_shape"]), "sha256": sha256(weights)}
    meta.write_text(json.dumps(record, indent=1) + "\n")
    return weights


def load_backbone(path: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """Rebuild and load a stored backbone (CPU, eval mode); its checksum must match. ``(module, metadata)``."""
    from ..pretrained import sha256

    weights, _ = _paths(path)
    meta = read_metadata(weights)
    if meta.get("sha256") not in (None, sha256(weights)):
        raise ValueError(f"Checksum mismatch for {str(weights)!r}: the file is corrupt or was replaced.")
    build, kwargs, _ = rebuild_spec(meta)
    module = build(**kwargs)
    module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return module.eval(), meta


def load_training_data(data: str | os.PathLike, input_shape: tuple[int, ...] | None = None):
    """``(X uint8 (n, prod(shape)), input_shape)`` from an ``.npz`` (array ``X``, else its only array),
    an ``.npy`` or a folder of images (:func:`dgmood.datasets.load_images`)."""
    from ..datasets import load_images

    data = Path(data)
    if data.is_dir():
        X, shape = load_images(data)
        if input_shape is not None and tuple(input_shape) != shape:
            raise ValueError(f"--input-shape {tuple(input_shape)} does not match the images in {data}: {shape}.")
        return X, shape
    if data.suffix == ".npz":
        with np.load(data) as arrays:
            keys = list(arrays.keys())
            if "X" not in keys and len(keys) != 1:
                raise ValueError(f"{data} holds arrays {keys}: name the data array 'X'.")
            X = arrays["X" if "X" in keys else keys[0]]
    elif data.suffix == ".npy":
        X = np.load(data)
    else:
        raise ValueError(f"--data must be a .npz, a .npy or a folder of images, got {str(data)!r}.")
    if X.ndim > 2:
        shape = tuple(int(s) for s in X.shape[1:]) if X.ndim == 4 else (1, *map(int, X.shape[1:]))
        X = X.reshape(len(X), -1)
    else:
        shape = None
    shape = tuple(input_shape) if input_shape is not None else shape
    if shape is None:
        raise ValueError(f"{data} holds a 2-D array: pass --input-shape C H W.")
    if int(np.prod(shape)) != X.shape[1]:
        raise ValueError(f"input shape {shape} has {int(np.prod(shape))} values but the rows have {X.shape[1]}.")
    if X.dtype != np.uint8:
        if X.min() < 0 or X.max() > 255 or not np.all(X == np.round(X)):
            raise ValueError(f"{data} must hold 8-bit pixels (integers 0..255), got [{X.min()}, {X.max()}].")
        X = X.astype(np.uint8)
    return X, shape


def train_backbone(kind: str, X: np.ndarray, input_shape: tuple[int, ...], out: str | os.PathLike, *,
                   name: str | None = None, architecture: dict | None = None, max_epochs: int = 20,
                   lr: float = 1e-3, batch_size: int = 64, heldout_fraction: float = 0.1, device: str = "auto",
                   random_state: int = 0, verbose: int = 1, command: str | None = None) -> Path:
    """Train a ``kind`` backbone ("flow" or "hvae") on 8-bit images ``X`` and store it in ``out``.

    ``heldout_fraction`` of the rows (at least one) are never trained on; their
    indices go into the metadata (``heldout_train_indices``) with their mean
    loss (``heldout_loss``: -log p in nats for a flow, the negative ELBO for an
    HVAE). Training checkpoints every epoch in ``<out>/checkpoints/<name>`` and
    resumes from there when run again. Returns the ``.pt`` path.
    """
    from ..pretrained import _WEIGHTS

    out = Path(out).resolve()
    if out == _WEIGHTS.resolve() or _WEIGHTS.resolve() in out.parents:
        raise ValueError(f"--out {out} is inside the installed package; pass a directory of your own.")
    if kind not in BACKBONES:
        raise ValueError(f"kind must be one of {sorted(BACKBONES)}, got {kind!r}.")
    name = name or f"{kind}-{'x'.join(map(str, input_shape))}"
    arch = {"input_shape": list(input_shape), **(architecture or {})}
    params = {k: v for k, v in arch.items() if k != "input_shape"}
    build, kwargs, _ = rebuild_spec({"kind": kind, "architecture": arch})
    n = len(X)
    rng = np.random.default_rng(random_state)
    held = np.sort(rng.choice(n, max(int(round(heldout_fraction * n)), 1), replace=False))
    train_rows = np.setdiff1d(np.arange(n), held)
    Xf = X.astype(np.float32) / 255.0
    if kind == "hvae":
        from .hvae import binarize

        Xf = binarize(torch.from_numpy(Xf), torch.Generator().manual_seed(random_state)).numpy()
    t0 = time.time()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_state)
        module = build(**kwargs)
        module, history = train_module(
            module, Xf[train_rows], input_shape=tuple(input_shape), max_epochs=max_epochs, lr=lr,
            batch_size=batch_size, device=device, checkpoint_dir=out / "checkpoints" / name, verbose=verbose,
            random_state=random_state, **BACKBONES[kind].train_kwargs(params),
        )
        module = module.cpu().eval()
        with torch.no_grad():  # its draws (dequantization, latents) stay inside the forked RNG too
            losses = torch.cat([module(torch.from_numpy(Xf[held[i:i + 256]]).reshape(-1, *input_shape))
                                for i in range(0, len(held), 256)])
    metadata = {
        "name": name, "command": command, "n_train": int(len(train_rows)), "epochs": len(history),
        "wall_seconds": round(time.time() - t0, 1), "device": str(device), "torch": torch.__version__,
        "machine": platform.machine(), "history": history, "heldout_train_indices": held.tolist(),
        "heldout_loss": float(losses.double().mean()),
    }
    return save_backbone(module, out / f"{name}.pt", kind=kind, architecture=arch, metadata=metadata)
