"""BaseDetector: the scikit-learn outlier-detector contract shared by every dgmood detector.

Conventions (as :class:`sklearn.ensemble.IsolationForest`):

* ``score_samples(X)``: higher = more in-distribution;
* ``decision_function(X) = score_samples(X) - offset_``; negative = outlier;
* ``predict(X)``: +1 in-distribution, -1 out-of-distribution;
* ``ood_score(X) = -score_samples(X)`` (higher = more anomalous, as PyOD).

``fit`` holds out ``validation_fraction`` of the data (never seen by the deep
backbone) to calibrate the detector and set ``offset_``; with a pretrained
backbone (``"pretrained:<name>"``, or a module with ``max_epochs=0``) nothing
is trained and all of ``X`` calibrates, so pass data the backbone never saw:
``offset_`` is :func:`~dgmood.thresholds.threshold_at_rate` of the held-out
scores at ``contamination`` (at most that share of them falls below it), so
about that share of *new* in-distribution data is flagged. ``contamination="auto"``
is the documented fixed rate :data:`AUTO_CONTAMINATION` (1 %).

Every random draw at scoring time (dequantization noise, binarization,
importance samples, probes) comes from generators seeded by ``random_state``
and is shared by all samples (common random numbers), and the network always
runs on batches of exactly ``batch_size`` rows (the last one padded): a
sample's score, bit for bit, does not depend on how many rows it is scored
with, which ones, or their order. ``batch_size`` itself is part of the
computation: changing it may change the last bits (float32 round-off).
"""

from __future__ import annotations

import copy
import os
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from tqdm.auto import tqdm

from .backbones.device import resolve_device
from .backbones.fitting import check_backbone_name, fit_backbone
from .backbones.protocols import check_backbone
from .pretrained import as_registered
from .thresholds import threshold_at_rate
from .validation import (
    check_input_shape,
    flatten_images,
    image_shape,
    refuse_labelled_ood,
    repeat_by_weight,
    resolve_data_range,
    to_model_range,
    warn_if_calibrating_on_training_images,
    warn_if_memory_cannot_hit,
)

__all__ = ["BaseDetector", "AUTO_CONTAMINATION"]

#: Share of held-out in-distribution data flagged when ``contamination="auto"``.
AUTO_CONTAMINATION = 0.01


def _seed_from(random_state) -> int:
    if isinstance(random_state, Integral):
        return int(random_state) % (2**31)
    return int(check_random_state(random_state).randint(2**31 - 1))


class BaseDetector(OutlierMixin, BaseEstimator):
    """Shared validation, backbone fitting, fixed-shape batching, calibration and thresholds.

    Subclasses define ``__init__`` (storing parameters untouched), the class
    attributes ``_backbone_names`` (names ``backbone=`` trains, see
    :data:`~dgmood.backbones.fitting.BACKBONES`), ``_pretrained_kinds`` (shipped
    kinds accepted) and ``_backbone_protocol`` (checked once in ``fit``), and:

    * ``_batch_components(module, xb, generators, n_valid)`` -> dict of per-sample
      tensors (first axis the batch) for one fixed-shape batch whose first
      ``n_valid`` rows are real (the rest padding; a per-point computation may skip them);
    * optionally ``_fit_raw(raw)``: a fit-time step on the held-out raw
      quantities (e.g. calibrating LID's threshold), before they are finished;
    * optionally ``_finish_components(raw)`` turning raw quantities into components;
    * ``score_from_components(components)`` -> float64 scores (higher = ID);
    * optionally ``_calibrate(components)`` on the held-out fit data.
    """

    _parameter_constraints: dict = {
        "backbone": [str, os.PathLike, torch.nn.Module],
        "backbone_params": [dict, None],
        "input_shape": [tuple, list, None],
        "data_range": [StrOptions({"auto", "uint8", "unit", "real"})],
        "contamination": [StrOptions({"auto"}), Interval(Real, 0, 0.5, closed="right")],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "device": [str, torch.device],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [StrOptions({"auto"}), Interval(Integral, 0, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "memory": [None, str, HasMethods(["cache"])],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    _backbone_names: tuple[str, ...] = ()
    _pretrained_kinds: frozenset[str] = frozenset()
    _backbone_protocol: type | None = None
    _generator_streams = 1

    # ------------------------------------------------------------------ input
    def _validate_X(self, X, reset: bool) -> np.ndarray:
        """Validated float32 array in the backbone's input range (2-D, finite)."""
        import scipy.sparse

        if scipy.sparse.issparse(X):
            raise ValueError(f"X is a sparse {type(X).__name__}; dgmood detectors need a dense array "
                             "(X.toarray()): a deep backbone scores every pixel or feature.")
        shape = image_shape(self.backbone, self.input_shape) if reset else self.input_shape_
        X = flatten_images(X, shape)
        X = validate_data(
            self,
            X,
            reset=reset,
            dtype="numeric",
            accept_sparse=False,
            ensure_all_finite=True,
            ensure_min_samples=2 if reset else 1,
        )
        if X.dtype.kind not in "uifb":
            raise ValueError(f"X must hold numbers (uint8 pixels or floats), got dtype {X.dtype}.")
        if reset:
            self.input_shape_ = check_input_shape(shape, X.shape[1])
            self.data_range_ = resolve_data_range(self.data_range, X, self.input_shape_)
        return to_model_range(X, self.data_range_)

    # ------------------------------------------------------------- backbone
    def _backbone_params(self) -> dict:
        """Architecture arguments of a named backbone (hook: a detector may fill in defaults)."""
        return dict(self.backbone_params or {})

    def _fit_backbone(self, X_train: np.ndarray) -> None:
        fitted = fit_backbone(
            self.backbone,
            X_train,
            input_shape=self.input_shape_,
            params=self._backbone_params(),
            train_kwargs=self._train_kwargs(),
            names=self._backbone_names,
            pretrained_kinds=self._pretrained_kinds,
            memory=self.memory,
            who=type(self).__name__,
        )
        self.backbone_, self.history_ = fitted.module, fitted.history
        # a refit on another backbone must not keep a shipped one's metadata
        self.backbone_metadata_ = fitted.metadata
        if self._backbone_protocol is not None:
            check_backbone(self.backbone_, self._backbone_protocol, type(self).__name__)

    def _max_epochs(self) -> int:
        """``max_epochs``; "auto": 200 for tabular rows, 20 for images (early stopping on a 10 % validation
        split ends training sooner once the validation loss stops improving)."""
        if self.max_epochs != "auto":
            return int(self.max_epochs)
        return 200 if len(self.input_shape_) == 1 else 20

    def _train_kwargs(self) -> dict:
        return dict(
            input_shape=self.input_shape_,
            max_epochs=self._max_epochs(),
            lr=self.lr,
            batch_size=self.batch_size,
            device=resolve_device(self.device),
            validation_fraction=0.1,
            patience=5,
            verbose=int(self.verbose),
            random_state=self.seed_,
            **self._extra_train_kwargs(),
        )

    def _check_settings(self) -> None:
        """Hook: refuse combinations of parameters before any training (each parameter alone is
        checked by ``_parameter_constraints``)."""

    def _extra_train_kwargs(self) -> dict:
        """Hook: extra training arguments for a user's module (a named family brings its own)."""
        return {}

    def _scoring_module(self, attr: str = "backbone_") -> tuple[torch.nn.Module, torch.device]:
        """The fitted module ``attr`` (default the backbone) on the scoring device (a cached copy off the CPU).

        A detector fitted on a GPU and loaded on a CPU-only machine scores on the CPU.
        """
        device = resolve_device(self.device, fallback=True)
        module = getattr(self, attr)
        if device.type == "cpu":
            return module, device
        cache = self.__dict__.setdefault("_module_cache", {})
        hit = cache.get(attr)
        if hit is None or hit[0] != device or hit[2] is not module:
            hit = cache[attr] = (device, copy.deepcopy(module).to(device).eval(), module)
        return hit[1], device

    # ------------------------------------------------------------- fitting
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, sample_weight=None):
        """Train (or load) the backbone on part of ``X``; calibrate on the held-out rest.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            In-distribution data: uint8 pixels 0..255, floats in [0, 1]
            (``data_range="unit"``), or real-valued features (``"real"``).
        y : None or array-like of shape (n_samples,), default=None
            Not used for training, as for scikit-learn's outlier detectors; but
            rows that a +1/-1 ``y`` labels -1 (OOD) must be left out with
            ``sample_weight`` (else a ``ValueError``), so that a search cannot
            train on its OOD rows.
        sample_weight : array-like of shape (n_samples,) of whole numbers, default=None
            0 excludes a row from training and calibration (a known OOD row),
            k counts it k times (as k copies of the row). Model selection routes
            it: ``GridSearchCV(...).fit(X, y, sample_weight=(y == 1))`` trains
            and calibrates every fit, the refit included, on in-distribution
            rows only (see :class:`~dgmood.model_selection.IDTrainKFold`).
            Fractional weights are refused: deep backbones are not trained with
            weighted losses.

        Returns
        -------
        self
        """
        check_backbone_name(self.backbone, self._backbone_names, self._pretrained_kinds, type(self).__name__)
        self._check_settings()
        resolve_device(self.device)  # an unavailable device is an error in fit, trained or shipped alike
        Xf = self._validate_X(X, reset=True)
        refuse_labelled_ood(y, sample_weight, len(Xf))
        if sample_weight is not None:
            Xf = repeat_by_weight(sample_weight, Xf)
        if self._trains_backbone():
            warn_if_memory_cannot_hit(self.memory, self.random_state)
        self.seed_ = _seed_from(self.random_state)  # one seed per fit: scoring reuses it
        if self._trains_backbone():
            n = len(Xf)
            n_cal = min(max(int(round(self.validation_fraction * n)), 1), n - 1)
            perm = check_random_state(self.seed_).permutation(n)
            X_train, X_cal = Xf[perm[n_cal:]], Xf[perm[:n_cal]]
        else:  # a pretrained backbone is not trained here: all of X calibrates
            X_train, X_cal = Xf[:0], Xf
            warn_if_calibrating_on_training_images(as_registered(self.backbone), Xf, self.data_range_)
        self._fit_backbone(X_train)
        self._prepare(X_train, X_cal)
        raw = self._raw_components(X_cal)
        self._fit_raw(raw)
        components = self._checked(self._finish_components(raw))
        self._calibrate(components)
        scores = self._heldout_scores(components)
        self.calibration_scores_ = scores
        rate = AUTO_CONTAMINATION if self.contamination == "auto" else float(self.contamination)
        self.offset_ = threshold_at_rate(scores, rate)
        return self

    def _trains_backbone(self) -> bool:
        """Whether ``fit`` trains the backbone (then a held-out slice calibrates)."""
        backbone = as_registered(self.backbone)
        if isinstance(backbone, str):
            return not backbone.startswith("pretrained:")
        return self.max_epochs == "auto" or self.max_epochs > 0

    def _prepare(self, X_train: np.ndarray, X_cal: np.ndarray) -> None:
        """Hook: fit detector settings that scoring needs, before the held-out slice is scored."""

    def _fit_raw(self, raw: dict[str, np.ndarray]) -> None:
        """Hook: fit-time step on the held-out raw quantities (e.g. a threshold), before finishing."""

    def _heldout_scores(self, components: dict[str, np.ndarray]) -> np.ndarray:
        """Hook: scores of the held-out points that set ``offset_``. Default: scored as any
        new point; a rule fitted on these very points overrides it (leave-one-out)."""
        return self.score_from_components(components)

    def _calibrate(self, components: dict[str, np.ndarray]) -> None:
        """Hook: fit detector-level statistics on held-out in-distribution components."""

    # ------------------------------------------------------------- scoring
    def _n_generators(self) -> int:
        """Hook: how many seeded random streams one batch draws from."""
        return self._generator_streams

    def _generators(self, device: torch.device) -> list[torch.Generator]:
        seed = self.seed_
        return [torch.Generator(device=device).manual_seed(seed + 7919 * i) for i in range(self._n_generators())]

    @torch.no_grad()
    def _raw_components(self, Xf: np.ndarray) -> dict[str, np.ndarray]:
        """Per-sample raw quantities of ``Xf``, computed on fixed-shape batches.

        Every batch the network sees has exactly ``batch_size`` rows: the last
        one is padded with copies of its last row, whose outputs are dropped.
        Kernels round differently for different batch shapes (a GEMV for one
        row, another blocking for 7), so a fixed shape, fresh generators per
        batch seeded by ``random_state`` and noise shared by the batch make a
        sample's bits independent of how many rows it came with, which rows
        those were and their order. Scoring fewer than ``batch_size`` rows still
        costs one full batch.
        """
        module, device = self._scoring_module()
        shape, size = self.input_shape_, int(self.batch_size)
        out: dict[str, list[np.ndarray]] = {}
        starts = range(0, len(Xf), size)
        for start in tqdm(starts, disable=not self.verbose, desc=f"{type(self).__name__} scoring", leave=False):
            chunk = Xf[start : start + size]
            n = len(chunk)
            if n < size:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - n, axis=0)])
            xb = torch.as_tensor(chunk, device=device).reshape(-1, *shape)
            parts = self._batch_components(module, xb, self._generators(device), n)
            for key, value in parts.items():
                out.setdefault(key, []).append(value[:n].detach().to("cpu", torch.float64).numpy())
        return {k: np.concatenate(v) for k, v in out.items()}

    def _components(self, Xf: np.ndarray) -> dict[str, np.ndarray]:
        return self._checked(self._finish_components(self._raw_components(Xf)))

    @staticmethod
    def _checked(components: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for key, value in components.items():
            if not np.all(np.isfinite(value)):
                raise FloatingPointError(
                    f"The backbone returned non-finite {key} for {int((~np.isfinite(value)).sum())} samples; "
                    "the model is numerically unstable on these inputs."
                )
        return components

    def _batch_components(self, module, xb, generators, n_valid) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _finish_components(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Hook: turn the concatenated batch outputs into the components. Default: unchanged."""
        return raw

    def score_from_components(self, components: dict[str, np.ndarray]) -> np.ndarray:
        """Scores (higher = more in-distribution) from :meth:`score_components`' output.

        ``score_samples(X) == score_from_components(score_components(X))``: score
        once, then combine components again without touching the backbone.
        """
        check_is_fitted(self)
        return np.asarray(self._score_from_components(components), dtype=np.float64)

    def _score_from_components(self, components: dict[str, np.ndarray]) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def benchmark_fields(self, components_id: dict, components_ood: dict) -> dict:
        """Diagnostics for a benchmark report: e.g. the AUROC of each component alone.

        Takes :meth:`score_components` of in-distribution and OOD data; returns a
        JSON-ready dict. Default: nothing.
        """
        return {}

    def score_components(self, X) -> dict[str, np.ndarray]:
        """Per-sample components of the score (e.g. ``log_prob``, ``lid``), float64 arrays
        whose first axis is the sample."""
        check_is_fitted(self)
        return self._components(self._validate_X(X, reset=False))

    def score_samples(self, X) -> np.ndarray:
        """Score of each sample: higher = more in-distribution.

        Returns
        -------
        scores : ndarray of shape (n_samples,), float64
        """
        return self.score_from_components(self.score_components(X))

    def decision_function(self, X) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for predicted out-of-distribution samples."""
        return self.score_samples(X) - self.offset_

    def predict(self, X) -> np.ndarray:
        """+1 for in-distribution, -1 for out-of-distribution samples (int array)."""
        return self._labels(self.score_samples(X))

    def _labels(self, scores: np.ndarray) -> np.ndarray:
        return np.where(scores - self.offset_ < 0, -1, 1).astype(int)

    def ood_score(self, X) -> np.ndarray:
        """``-score_samples(X)``: higher = more out-of-distribution (PyOD / pytorch-ood convention)."""
        return -self.score_samples(X)

    def score_and_predict(self, X) -> tuple[np.ndarray, np.ndarray]:
        """``(score_samples(X), predict(X))`` from one pass of the backbone (``predict`` alone recomputes
        the scores)."""
        scores = self.score_samples(X)
        return scores, self._labels(scores)

    def set_threshold(self, X, contamination="auto") -> "BaseDetector":
        """Re-set ``offset_`` from fresh in-distribution data, without touching the backbone or the rule.

        ``offset_`` becomes :func:`~dgmood.thresholds.threshold_at_rate` of
        ``score_samples(X)`` at ``contamination`` (the target false-positive rate on
        in-distribution data, as in ``fit``); the scores replace ``calibration_scores_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), at least 2 in-distribution rows
        contamination : "auto" or float in (0, 0.5], default="auto"

        Returns
        -------
        self
        """
        rate = AUTO_CONTAMINATION if contamination == "auto" else float(contamination)
        if not 0 < rate <= 0.5:
            raise ValueError(f"contamination must be 'auto' or in (0, 0.5], got {contamination!r}.")
        scores = self.score_samples(X)
        if len(scores) < 2:
            raise ValueError(f"set_threshold needs at least 2 in-distribution rows, got {len(scores)}.")
        self.calibration_scores_, self.offset_ = scores, threshold_at_rate(scores, rate)
        return self

    # ------------------------------------------------------------- pickling
    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state.pop("_module_cache", None)
        for key, value in state.items():
            if key.endswith("_") and isinstance(value, torch.nn.Module):
                state[key] = value.cpu()
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        tags.non_deterministic = False
        return tags
