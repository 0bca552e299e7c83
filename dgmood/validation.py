"""Input checks shared by every detector: array shapes, image shapes and the data range.

Each failure is a ``ValueError`` that names what was expected and how to get
there (flatten the images, pass ``input_shape``, rescale the pixels), never
scikit-learn's generic message alone nor a dump of the data.

Data ranges (``data_range``): ``"uint8"`` pixels 0..255 (divided by 255 for
the model), ``"unit"`` floats in [0, 1], ``"real"`` unbounded features;
``"auto"`` picks uint8 for uint8 arrays, unit for other images, real otherwise.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from sklearn.utils.validation import _check_sample_weight

__all__ = ["image_shape", "flatten_images", "check_input_shape", "resolve_data_range", "to_model_range",
           "repeat_by_weight", "warn_if_memory_cannot_hit",
           "warn_if_calibrating_on_training_images"]


def image_shape(backbone, input_shape) -> tuple[int, ...] | None:
    """The per-sample shape a detector expects: ``input_shape``, else a shipped backbone's or a module's own."""
    from .pretrained import as_registered

    shape = input_shape
    backbone = as_registered(backbone)
    if shape is None and isinstance(backbone, str) and backbone.startswith("pretrained:"):
        from .pretrained import REGISTRY

        spec = REGISTRY.get(backbone.split(":", 1)[1])
        shape = spec.input_shape if spec is not None else None
    if shape is None and isinstance(backbone, torch.nn.Module):
        shape = getattr(backbone, "input_shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


def flatten_images(X, shape: tuple[int, ...] | None):
    """``(n, H, W)`` or ``(n, C, H, W)`` arrays flattened to ``(n, C*H*W)`` when they match the image
    ``shape`` (``(n, H, W)`` for one channel); a clear error for 1-D input and for other shapes."""
    if not hasattr(X, "ndim"):
        return X  # lists and the like: sklearn's validation handles them
    if X.ndim == 1:
        raise ValueError(
            f"Expected 2D array (n_samples, n_features), got a 1-D array of {X.shape[0]} values. Reshape "
            "your data: X.reshape(1, -1) for one sample, X.reshape(-1, 1) for one feature."
        )
    if X.ndim <= 2:
        return X
    per_sample = tuple(int(s) for s in X.shape[1:])
    if shape is not None and len(shape) == 3 and per_sample in (shape, shape[1:] if shape[0] == 1 else None):
        return np.asarray(X).reshape(len(X), -1)
    raise ValueError(
        f"Expected 2D array (n_samples, n_features), got shape {tuple(X.shape)}. Flatten the images, "
        f"X.reshape(len(X), -1), and pass input_shape=(channels, height, width) (here "
        f"{per_sample if len(per_sample) == 3 else (1, *per_sample)}); arrays of that shape are accepted "
        f"directly when input_shape matches{f' (it is {shape})' if shape is not None else ''}."
    )


def check_input_shape(shape: tuple[int, ...] | None, n_features: int) -> tuple[int, ...]:
    """``shape`` when it has ``n_features`` values (``(n_features,)`` when None), else a ``ValueError``."""
    if shape is None:
        return (n_features,)
    if any(s < 1 for s in shape) or math.prod(shape) != n_features:
        raise ValueError(
            f"input_shape={shape} has {math.prod(shape)} values but X has {n_features} "
            f"features; images must be flattened to (n_samples, {math.prod(shape)})."
        )
    return shape


def resolve_data_range(data_range: str, X: np.ndarray, shape: tuple[int, ...]) -> str:
    """The data range ``"auto"`` stands for, checked against the shape (8-bit pixels need an image shape)."""
    if data_range != "auto":
        resolved = data_range
    elif X.dtype == np.uint8:
        resolved = "uint8"
    else:
        resolved = "unit" if len(shape) == 3 else "real"
    if resolved == "uint8" and len(shape) != 3:
        raise ValueError(
            "X holds 8-bit pixels (uint8) but no image input_shape was given: pass "
            f"input_shape=(channels, height, width) with product {X.shape[1]}, e.g. (1, 28, 28); "
            "for tabular data pass floats with data_range='real'."
        )
    return resolved


def to_model_range(X: np.ndarray, data_range: str) -> np.ndarray:
    """float32 values in the backbone's input range; a ``ValueError`` for values outside ``data_range``."""
    Xf = X.astype(np.float64, copy=False)
    if data_range == "uint8":
        integral = np.all(Xf == np.round(Xf))
        if Xf.min() < 0 or Xf.max() > 255 or not integral:
            raise ValueError(
                "Expected 8-bit pixels (integers 0..255, as at fit), got values in "
                f"[{Xf.min():.4g}, {Xf.max():.4g}]{'' if integral else ' with fractions'}."
            )
        Xf = Xf / 255.0
    elif data_range == "unit":
        if Xf.min() < 0 or Xf.max() > 1:
            raise ValueError(
                f"Expected pixel values in [0, 1] (data_range='unit'), got [{Xf.min():.4g}, {Xf.max():.4g}]; "
                "pass uint8 0..255 images or rescale to [0, 1]."
            )
    return Xf.astype(np.float32)


def repeat_by_weight(sample_weight, X: np.ndarray) -> np.ndarray:
    """The rows of ``X`` repeated by their integer ``sample_weight``: weight 0 drops a row, k keeps k copies.

    This is what an integer weight means for a model trained on rows (the
    same as duplicating them); a weight that is not a non-negative whole
    number is a ``ValueError``, as is keeping fewer than two rows.
    """
    w = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
    if not np.all(w == np.round(w)):
        bad = np.unique(w[w != np.round(w)])[:5]
        raise ValueError(
            "sample_weight must hold whole numbers: 0 excludes a row (a known OOD sample), k counts it k "
            f"times; got {bad.tolist()}. Deep backbones are not trained with fractional weights."
        )
    counts = w.astype(np.int64)
    if counts.sum() < 2:
        raise ValueError(f"sample_weight keeps {int(counts.sum())} of {len(w)} rows; fit needs at least 2.")
    return np.repeat(X, counts, axis=0)


def refuse_labelled_ood(y, sample_weight, n_rows: int) -> None:
    """Refuse to train on rows that ``y`` labels OOD (``-1``) unless ``sample_weight`` leaves them out.

    ``y`` is otherwise ignored by ``fit``, as for scikit-learn's outlier
    detectors. But a ``y`` of +1/-1 labels is what model selection passes
    (``GridSearchCV(...).fit(X, y)``), and training on its -1 rows would leak
    the OOD data into the detector: with an integer ``cv`` every fold's fit
    would, and the search would still pick a "best" point. ``y`` with other
    values (class labels, regression targets) is not looked at.
    """
    if y is None:
        return
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n_rows or y.dtype.kind not in "iuf":
        return
    values = set(np.unique(y).tolist())
    if -1 not in values or not values <= {-1, 1}:
        return
    weight = np.ones(n_rows) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).ravel()
    if weight.shape != (n_rows,):
        return  # repeat_by_weight names the shape error
    n_kept = int(np.count_nonzero(weight[y == -1]))
    if n_kept:
        raise ValueError(
            f"fit got y labelling {n_kept} row(s) -1 (OOD) and would train on them: a detector learns from "
            "in-distribution rows only. Pass sample_weight=(y == 1) to leave them out (GridSearchCV routes it "
            "to every fit and the refit), and cv=dgmood.model_selection.IDTrainKFold(k) so that every test "
            "fold holds both classes."
        )


def warn_if_memory_cannot_hit(memory, random_state) -> None:
    """``memory=`` caches trained backbones keyed by their seed; ``random_state=None`` draws a new one per fit."""
    if memory is not None and random_state is None:
        warnings.warn(
            "memory= caches trained backbones by their seed, and random_state=None draws a new seed at "
            "every fit, so nothing will be reused: pass an int random_state.", UserWarning, stacklevel=4,
        )


def warn_if_calibrating_on_training_images(backbone, X_model: np.ndarray, data_range: str) -> None:
    """Warn when rows calibrating a shipped backbone are images it was trained on (a biased threshold)."""
    if not (isinstance(backbone, str) and backbone.startswith("pretrained:")) or data_range not in ("uint8", "unit"):
        return
    from .pretrained import trained_rows

    name = backbone.split(":", 1)[1]
    pixels = np.round(np.asarray(X_model, dtype=np.float64) * 255.0).astype(np.uint8)
    seen = int(trained_rows(name, pixels).sum())
    if seen:
        warnings.warn(
            f"{seen} of {len(pixels)} calibration rows are images {name!r} was trained on: the model fits them "
            "better than new data, so the threshold will flag too few. Calibrate on images it never saw, "
            f"e.g. dgmood.pretrained.heldout_images({name!r}, n).", UserWarning, stacklevel=4,
        )
