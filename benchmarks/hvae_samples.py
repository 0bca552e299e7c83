r"""Importance samples S of the shipped HVAE: speed, AUROC per k and the IWAE bound.

Usage::

    python benchmarks/hvae_samples.py --json [--n 2000] [--n-cal 2000] \
        [--samples 1 4 16 64 250] [--n-skip-samples 8]

For each S, in one run, fits ``HVAELikelihoodRatioDetector(backbone=
"pretrained:fmnist-hvae", n_samples=S, random_state=0)`` on the held-out
FashionMNIST training images that ``dgmood benchmark`` calibrates on (the same
``n_cal`` images for every S), then scores ``n`` FashionMNIST test (ID) and
``n`` MNIST test (OOD) images with ``score_components``, once. Per S it reports
the wall seconds of that scoring (and of ``fit``, which scores the calibration
images at the same S), images per second, the AUROC with a bootstrap 95 %
interval (MNIST as the positive class) of ``k="auto"`` (computed from the same
components, as the CLI does) and of each single :math:`-LLR^{>k}`, k = 0 .. L,
and the mean importance-weighted bound :math:`\mathcal{L}_S` in nats.

With ``--json`` one JSON object is printed; otherwise a table. Either way the
JSON is written to ``benchmarks/results/hvae_samples_n{n}.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dgmood import HVAELikelihoodRatioDetector
from dgmood.backbones.device import resolve_device
from dgmood.datasets import load_dataset
from dgmood.backbones.hvae_bounds import passes_per_image
from dgmood.metrics import auroc, bootstrap_ci
from dgmood.pretrained import heldout_images

BACKBONE = "pretrained:fmnist-hvae"
ID, OOD = "fashion_mnist", "mnist"


def _auroc_with_ci(s_id, s_ood, n_boot: int, random_state: int) -> dict:
    ci = bootstrap_ci("auroc", s_id, s_ood, n_boot=n_boot, random_state=random_state)
    return {"auroc": auroc(s_id, s_ood), "ci": list(ci)}


def run_one(S: int, X_cal, X_id, X_ood, args) -> dict:
    """Fit at S samples, score both test sets once, and summarize."""
    det = HVAELikelihoodRatioDetector(
        backbone=BACKBONE,
        n_samples=S,
        n_skip_samples=args.n_skip_samples,
        estimator=args.estimator,
        device=args.device,
        random_state=args.random_state,
        verbose=args.verbose,
    )
    t0 = time.perf_counter()
    det.fit(X_cal)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    comp_id, comp_ood = det.score_components(X_id), det.score_components(X_ood)
    score_s = time.perf_counter() - t0
    # k="auto" from the same components, as dgmood.benchmark.run_benchmark (no second pass)
    s_id = det.score_from_components(comp_id)
    s_ood = det.score_from_components(comp_ood)
    boot = {"n_boot": args.n_boot, "random_state": args.random_state}
    per_k = {
        str(k): _auroc_with_ci(-comp_id["llr"][:, k], -comp_ood["llr"][:, k], **boot)
        for k in range(det.n_latent_layers_ + 1)
    }
    n_images = len(X_id) + len(X_ood)
    return {
        "n_samples": S,
        "n_skip_samples": det.n_skip_samples_,
        "passes_per_image": passes_per_image(det.estimator, S, det.n_skip_samples_, det.n_latent_layers_),
        "fit_seconds": round(fit_s, 2),
        "score_seconds": round(score_s, 2),
        "images_per_second": round(n_images / score_s, 2),
        "auto": _auroc_with_ci(s_id, s_ood, **boot),
        "per_k": per_k,
        "mean_elbo_bound_id": float(np.mean(comp_id["elbo_bound"])),
        "mean_elbo_bound_ood": float(np.mean(comp_ood["elbo_bound"])),
        "auto_ks": [int(k) for k in det.auto_ks_],
        "backbone_sha256": det.backbone_metadata_.get("sha256"),
    }


def _ci(r: dict) -> str:
    return f"{r['auroc']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"


def table(result: dict) -> str:
    rows = result["results"]
    ks = list(rows[0]["per_k"]) if rows else []
    head = (
        f"{'S':>5}{'fit s':>9}{'score s':>9}{'img/s':>8}"
        f"{'mean L_S ID':>13}  {'AUROC auto [95% CI]':<23}"
    )
    title = (
        f"{BACKBONE}: {result['n_id']} {ID} test (ID) + {result['n_ood']} {OOD} test "
        f"(OOD), {result['n_calibration']} calibration images, "
        f"k=auto combines k = {result['auto_ks']}"
    )
    lines = [title, head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['n_samples']:>5}{r['fit_seconds']:>9.1f}{r['score_seconds']:>9.1f}"
            f"{r['images_per_second']:>8.1f}{r['mean_elbo_bound_id']:>13.2f}  "
            f"{_ci(r['auto']):<23}"
        )
    head = f"{'S':>5}" + "".join(
        f"  {'AUROC -LLR^>' + k + ' [95% CI]':<23}" for k in ks
    )
    lines += ["", head, "-" * len(head)]
    for r in rows:
        cells = "".join(f"  {_ci(r['per_k'][k]):<23}" for k in ks)
        lines.append(f"{r['n_samples']:>5}{cells}")
    lines.append(f"total {result['seconds']:.0f} s, torch threads: {result['threads']}")
    return "\n".join(line.rstrip() for line in lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=2000, help="test images per set")
    p.add_argument(
        "--n-cal", type=int, default=2000, help="held-out calibration images"
    )
    p.add_argument("--samples", type=int, nargs="+", default=[1, 4, 16, 64, 250])
    defaults = HVAELikelihoodRatioDetector().get_params()
    p.add_argument("--n-skip-samples", type=lambda v: v if v == "auto" else int(v), default=defaults["n_skip_samples"],
                   help="draws m in each skip bound (default: the detector's; at most S with shared draws)")
    p.add_argument("--estimator", default=defaults["estimator"], help="default: the detector's")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--random-state", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--verbose", type=int, default=1, help="detector progress bars")
    p.add_argument(
        "--out", default=None, help="default: results/hvae_samples_n{n}.json"
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    X_cal = heldout_images(BACKBONE.split(":", 1)[1], args.n_cal, args.random_state)
    X_id, _ = load_dataset(ID, "test", n=args.n, random_state=args.random_state)
    X_ood, _ = load_dataset(OOD, "test", n=args.n, random_state=args.random_state)
    rows = [
        run_one(S, X_cal, X_id, X_ood, args)
        for S in tqdm(args.samples, desc="S", disable=not args.verbose)
    ]
    sha = {r.pop("backbone_sha256") for r in rows}
    auto_ks = {tuple(r.pop("auto_ks")) for r in rows}
    assert len(sha) == 1 and len(auto_ks) == 1
    result = {
        "id": ID,
        "ood": OOD,
        "n_id": len(X_id),
        "n_ood": len(X_ood),
        "n_calibration": len(X_cal),
        "backbone": BACKBONE,
        "backbone_sha256": sha.pop(),
        "auto_ks": list(auto_ks.pop()),
        "n_skip_samples": args.n_skip_samples,
        "estimator": args.estimator,
        "random_state": args.random_state,
        "n_boot": args.n_boot,
        "results": rows,
        "seconds": round(time.perf_counter() - t_start, 1),
        "device": str(resolve_device(args.device)),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "command": "python benchmarks/hvae_samples.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
    }
    assert all(
        math.isfinite(v)
        for r in rows
        for v in (r["auto"]["auroc"], r["mean_elbo_bound_id"], r["images_per_second"])
    )
    out = Path(args.out or f"benchmarks/results/hvae_samples_n{args.n}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        print(table(result))
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
