"""Run a detector on an (in-distribution, OOD) pair of datasets and report metrics.

Public and free of private reads: the detector is fitted on held-out
in-distribution images its backbone never saw
(:func:`dgmood.pretrained.heldout_images`), both test sets are scored once
(:meth:`~dgmood.base.BaseDetector.score_components`), the scores come from
:meth:`~dgmood.base.BaseDetector.score_from_components` and the per-component
diagnostics from :meth:`~dgmood.base.BaseDetector.benchmark_fields`. A detector
registered in :data:`DETECTORS` is benchmarked without edits here.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["DETECTORS", "ALL_N", "make_detector", "run_benchmark", "load_user_data", "save_scores"]

#: Benchmark names: (estimator class name in :mod:`dgmood`, backbone, default parameters).
DETECTORS: dict[str, tuple[str, str, dict]] = {
    "likelihood": ("LikelihoodDetector", "pretrained:fmnist-flow", {}),
    "typicality": ("TypicalityDetector", "pretrained:fmnist-flow", {}),
    "lid-flow": ("LIDLikelihoodDetector", "pretrained:fmnist-flow", {}),  # the defaults: fast LID, shipped target
    "lid-diffusion": ("LIDLikelihoodDetector", "pretrained:fmnist-diffusion", {}),  # FLIPD, t0 auto, ODE defaults
    "hvae-llr": ("HVAELikelihoodRatioDetector", "pretrained:fmnist-hvae", {"k": "auto"}),
    "input-complexity": ("InputComplexityDetector", "pretrained:fmnist-flow", {}),  # PNG, as Serra et al.
    # background "auto" = the shipped fmnist-flow-background (mutation rate 0.3)
    "likelihood-ratio": ("LikelihoodRatioDetector", "pretrained:fmnist-flow", {}),
}


#: ``benchmark --all``: test images per set for detectors too slow for the full ``--n`` on 2 CPU cores
#: (their rows say so: ``n_id``); calibration images are capped alike.
ALL_N: dict[str, int] = {"lid-flow": 500, "lid-diffusion": 500}


def make_detector(name: str, *, device: str = "auto", random_state: int = 0, verbose: int = 0,
                  params: dict | None = None):
    """The unfitted detector that benchmark ``name`` runs, with ``params`` overriding its defaults."""
    import dgmood

    if name not in DETECTORS:
        raise ValueError(f"Unknown detector {name!r}; choose from {sorted(DETECTORS)}.")
    cls_name, backbone, defaults = DETECTORS[name]
    kwargs = {"backbone": backbone, "device": device, "random_state": random_state, "verbose": verbose,
              **defaults, **(params or {})}
    return getattr(dgmood, cls_name)(**kwargs)


def _pretrained_name(detector) -> str:
    backbone = detector.backbone
    if not (isinstance(backbone, str) and backbone.startswith("pretrained:")):
        raise ValueError(f"The benchmark calibrates shipped backbones only ('pretrained:<name>'), got {backbone!r}.")
    return backbone.split(":", 1)[1]


def run_benchmark(
    detector: str = "likelihood",
    id_name: str = "fashion_mnist",
    ood_name: str = "mnist",
    n: int = 2000,
    n_cal: int = 2000,
    device: str = "auto",
    random_state: int = 0,
    n_boot: int = 1000,
    verbose: int = 0,
    params: dict | None = None,
    data: dict | None = None,
) -> tuple[dict, dict]:
    """Fit benchmark ``detector`` on ``n_cal`` held-out ID training images, score ``n`` ID and ``n`` OOD
    test images.

    ``data`` (see :func:`load_user_data`): the user's own ``train`` / ``id_test`` / ``ood_test`` uint8
    arrays and ``input_shape``; then the detector trains its backbone family (the kind of the shipped
    one, e.g. ``"flow"``) by ``fit`` on ``train`` (``params``, e.g. ``{"max_epochs": 5}``), which holds
    out ``validation_fraction`` of it to calibrate; ``n`` caps each test set and ``n_cal`` is unused.

    Returns
    -------
    result : dict
        JSON-ready: AUROC with a bootstrap 95 % interval, AUPRC (OOD positive
        and ID positive), FPR at 80 % and 95 % TPR, sample counts, wall time
        (``seconds``: fit and scoring), the detector's :meth:`benchmark_fields`.
    raw : dict
        ``id`` / ``ood`` components, ``score_id`` / ``score_ood`` and the fitted ``detector``.
    """
    from .datasets import load_dataset
    from .metrics import bootstrap_ci, ood_metrics
    from .pretrained import REGISTRY, heldout_images

    if data is not None:
        family = REGISTRY[_pretrained_name(make_detector(detector))].kind  # a name in BACKBONES
        user = {"backbone": family, "input_shape": tuple(data["input_shape"]), **(params or {})}
        det = make_detector(detector, device=device, random_state=random_state, verbose=verbose, params=user)
        X_cal = data["train"]
        rng = np.random.default_rng(random_state)
        X_id, X_ood = (X if len(X) <= n else X[np.sort(rng.choice(len(X), n, replace=False))]
                       for X in (data["id_test"], data["ood_test"]))
    else:
        det = make_detector(detector, device=device, random_state=random_state, verbose=verbose, params=params)
        name = _pretrained_name(det)
        if REGISTRY[name].dataset != id_name:
            raise ValueError(f"{det.backbone} was trained on {REGISTRY[name].dataset}, not {id_name}.")
        X_cal = heldout_images(name, n_cal, random_state)
        X_id, _ = load_dataset(id_name, "test", n=n, random_state=random_state)
        X_ood, _ = load_dataset(ood_name, "test", n=n, random_state=random_state)
    t0 = time.time()
    det.fit(X_cal)
    t1 = time.time()
    comp_id, comp_ood = det.score_components(X_id), det.score_components(X_ood)
    s_id, s_ood = det.score_from_components(comp_id), det.score_from_components(comp_ood)
    t2 = time.time()
    seconds, score_seconds = t2 - t0, t2 - t1
    m = ood_metrics(s_id, s_ood)
    result = {
        "detector": detector,
        "estimator": repr(det),
        "id": id_name,
        "ood": ood_name,
        "n_id": int(len(X_id)),
        "n_ood": int(len(X_ood)),
        "n_calibration": int(len(det.calibration_scores_)),
        "auroc": m["auroc"],
        "auroc_ci": list(bootstrap_ci("auroc", s_id, s_ood, n_boot=n_boot, random_state=random_state)),
        "auprc": m["auprc_out"],
        "auprc_in": m["auprc_in"],
        "fpr95": m["fpr95"],
        "fpr80": m["fpr80"],
        **det.benchmark_fields(comp_id, comp_ood),
        "seconds": round(seconds, 1),
        "score_seconds": round(score_seconds, 2),
        "images_per_second": round((len(X_id) + len(X_ood)) / max(score_seconds, 1e-9), 1),
        "backbone": det.backbone if isinstance(det.backbone, str) else type(det.backbone).__name__,
        "backbone_sha256": det.backbone_metadata_.get("sha256"),
        "random_state": random_state,
        "command": "dgmood " + " ".join(sys.argv[1:]) if sys.argv and "dgmood" in sys.argv[0] else None,
    }
    raw = {"id": comp_id, "ood": comp_ood, "score_id": np.asarray(s_id), "score_ood": np.asarray(s_ood),
           "detector": det}
    return result, raw


def save_scores(raw: dict, path: str | Path) -> Path:
    """Per-sample scores of a :func:`run_benchmark` run as a compressed ``.npz``: ``score_id``,
    ``score_ood`` and every component as ``id_<name>`` / ``ood_<name>`` (float64)."""
    arrays = {"score_id": raw["score_id"], "score_ood": raw["score_ood"]}
    for side in ("id", "ood"):
        arrays.update({f"{side}_{k}": np.asarray(v, dtype=np.float64) for k, v in raw[side].items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def load_user_data(id_path: str | Path, ood_path: str | Path, input_shape) -> dict:
    """``{"train", "id_test", "ood_test", "input_shape"}`` from two ``.npz`` files: ``id_path`` with uint8
    arrays ``train`` and ``test``, ``ood_path`` with ``test``; each of shape (n, C*H*W) or (n, C, H, W).

    A ``ValueError`` names the file and the key of a missing key, a non-uint8 array, or a size that
    does not match ``input_shape``.
    """
    if input_shape is None:
        raise ValueError("--id-path needs --input-shape C H W (the shape of one image).")
    shape = tuple(int(s) for s in input_shape)
    d = int(np.prod(shape))
    out = {"input_shape": shape}
    for path, key, name in ((id_path, "train", "train"), (id_path, "test", "id_test"), (ood_path, "test", "ood_test")):
        with np.load(path, allow_pickle=False) as f:
            if key not in f.files:
                raise ValueError(f"{path}: no array {key!r} (found {sorted(f.files)}); expected uint8 arrays "
                                 f"{'train and test' if name != 'ood_test' else 'test'}.")
            X = f[key]
        if X.dtype != np.uint8:
            raise ValueError(f"{path}[{key!r}]: expected uint8 pixels 0..255, got dtype {X.dtype}.")
        if X.ndim < 2 or int(np.prod(X.shape[1:])) != d:
            raise ValueError(f"{path}[{key!r}]: shape {X.shape} does not hold images of --input-shape "
                             f"{shape} ({d} values each).")
        out[name] = X.reshape(len(X), d)
    return out
