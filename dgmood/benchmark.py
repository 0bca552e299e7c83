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

import json
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["DETECTORS", "make_detector", "run_benchmark", "results_table"]

#: Benchmark names: (estimator class name in :mod:`dgmood`, backbone, default parameters).
DETECTORS: dict[str, tuple[str, str, dict]] = {
    "likelihood": ("LikelihoodDetector", "pretrained:fmnist-flow", {}),
    "typicality": ("TypicalityDetector", "pretrained:fmnist-flow", {}),
    "lid-flow": ("LIDLikelihoodDetector", "pretrained:fmnist-flow", {}),  # the defaults: fast LID, shipped target
    "hvae-llr": ("HVAELikelihoodRatioDetector", "pretrained:fmnist-hvae", {"k": "auto"}),
    "input-complexity": ("InputComplexityDetector", "pretrained:fmnist-flow", {}),  # PNG, as Serra et al.
}


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
) -> tuple[dict, dict]:
    """Fit benchmark ``detector`` on ``n_cal`` held-out ID training images, score ``n`` ID and ``n`` OOD
    test images.

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

    det = make_detector(detector, device=device, random_state=random_state, verbose=verbose, params=params)
    name = _pretrained_name(det)
    if REGISTRY[name].dataset != id_name:
        raise ValueError(f"{det.backbone} was trained on {REGISTRY[name].dataset}, not {id_name}.")
    X_cal = heldout_images(name, n_cal, random_state)
    t0 = time.time()
    det.fit(X_cal)
    X_id, _ = load_dataset(id_name, "test", n=n, random_state=random_state)
    X_ood, _ = load_dataset(ood_name, "test", n=n, random_state=random_state)
    comp_id, comp_ood = det.score_components(X_id), det.score_components(X_ood)
    s_id, s_ood = det.score_from_components(comp_id), det.score_from_components(comp_ood)
    seconds = time.time() - t0
    m = ood_metrics(s_id, s_ood)
    result = {
        "detector": detector,
        "estimator": repr(det),
        "id": id_name,
        "ood": ood_name,
        "n_id": int(len(X_id)),
        "n_ood": int(len(X_ood)),
        "n_calibration": int(len(X_cal)),
        "auroc": m["auroc"],
        "auroc_ci": list(bootstrap_ci("auroc", s_id, s_ood, n_boot=n_boot, random_state=random_state)),
        "auprc": m["auprc_out"],
        "auprc_in": m["auprc_in"],
        "fpr95": m["fpr95"],
        "fpr80": m["fpr80"],
        **det.benchmark_fields(comp_id, comp_ood),
        "seconds": round(seconds, 1),
        "backbone": det.backbone,
        "backbone_sha256": det.backbone_metadata_.get("sha256"),
        "random_state": random_state,
        "command": "dgmood " + " ".join(sys.argv[1:]) if sys.argv and "dgmood" in sys.argv[0] else None,
    }
    raw = {"id": comp_id, "ood": comp_ood, "score_id": np.asarray(s_id), "score_ood": np.asarray(s_ood),
           "detector": det}
    return result, raw


def results_table(results_dir: str | Path = "benchmarks/results") -> str:
    """An reStructuredText table of every ``run_benchmark`` JSON in ``results_dir``.

    One row per ``<detector>_<id>_vs_<ood>_n<N>.json`` (sorted by name): the
    estimator's registry name, the data pair, the sample counts, AUROC with
    its bootstrap 95 % interval, AUPRC, FPR at 95 % TPR, wall seconds, the
    command that wrote it and the estimator's full configuration. ``docs/results_table.rst`` is this table; a test
    keeps it equal to the JSONs, so rerunning a benchmark updates the docs.
    """
    rows = []
    for path in sorted(Path(results_dir).glob("*_vs_*.json")):
        r = json.loads(path.read_text())
        lo, hi = r["auroc_ci"]
        rows.append([
            f"``{r['detector']}``", f"{r['id']} -> {r['ood']}", f"{r['n_id']} + {r['n_ood']} ({r['n_calibration']})",
            f"{r['auroc']:.3f} [{lo:.3f}, {hi:.3f}]", f"{r['auprc']:.3f}", f"{r['fpr95']:.3f}",
            f"{r['seconds']:.0f}", f"``{r['command']}``" if r.get("command") else "",
            f"``{r['estimator']}``", f"``{path.name}``",
        ])
    head = ["detector", "ID -> OOD", "n ID + n OOD (calibration)", "AUROC [95 % CI]", "AUPRC", "FPR95", "seconds",
            "command", "estimator", "file"]
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [head, *rows]:
        lines += [f"   * - {row[0]}", *[f"     - {cell}" for cell in row[1:]]]
    return "\n".join(lines) + "\n"
