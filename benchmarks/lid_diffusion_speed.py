"""FLIPD vs the normal bundle on the shipped FashionMNIST diffusion, in one run.

Usage::

    python benchmarks/lid_diffusion_speed.py --json [--n 32] [--n-probes 1 8 32] [--exact]

Scores ``n`` FashionMNIST test + ``n`` MNIST test images with both LID
estimators on the same model, the same dequantized inputs and the same
threads, alternating batch by batch (any load on the machine slows both
alike). The normal bundle takes K = 4D noised copies at t0 = 0.01 and counts
singular values below its tau, calibrated on the ID images of this run to the
mean LID that FLIPD gives them (so both read the same scale; without a tau
the largest gap is reported too). FLIPD runs at ``--t0`` (default: the t0 a
detector calibrates with ``lid_target="pretrained"``), once per ``--n-probes``
value and, with ``--exact``, with the exact trace (D JVPs). Per setting:
``flipd_s``, ``ratio`` (FLIPD / normal bundle time), ``spearman`` (FLIPD vs
normal-bundle LID over all images), ``spearman_id_only``, ``auroc_flipd``,
``auroc_nb`` (LID alone, MNIST positive: low LID = OOD), network evaluations
per point. Also the probability-flow ODE's seconds per image at the detector
defaults, and the end-to-end detector (``--fit-n`` held-out images to fit,
``--score-n`` to score). The JSON goes to
``benchmarks/results/lid_diffusion_speed.json``.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from dgmood.backbones.diffusion import rademacher
from dgmood.datasets import load_dataset
from dgmood.backbones.diffusion import ODE_DEFAULTS
from dgmood.lid.flipd import flipd
from dgmood.lid.normal_bundle import NormalBundleLID, gap_lid, normal_bundle_singular_values
from dgmood.metrics import auroc
from dgmood.pretrained import heldout_images, load_pretrained
from _common import run_info, write_result

NAME = "fmnist-diffusion"


def _detector(args) -> dict:
    """Fit the shipped-weights FLIPD detector on held-out training images; time scoring ``score_n`` images."""
    from dgmood import LIDLikelihoodDetector

    X_fit = heldout_images(NAME, args.fit_n, random_state=0)
    X_score, _ = load_dataset("fashion_mnist", "test", n=args.score_n, random_state=1)
    det = LIDLikelihoodDetector(f"pretrained:{NAME}", lid_target="pretrained", random_state=0)
    t0 = time.perf_counter()
    det.fit(X_fit)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = det.score_samples(X_score) if args.score_n else np.zeros(0)
    score_s = time.perf_counter() - t0
    assert np.all(np.isfinite(scores))
    return {"detector_fit_images": len(X_fit), "detector_fit_s": round(fit_s, 1), "detector_t0": det.t0_,
            "detector_images": int(args.score_n), "detector_score_s": round(score_s, 1),
            "detector_batch_size": det.batch_size}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=32, help="images per set")
    p.add_argument("--t0", type=float, default=None, help="FLIPD's time (default: the detector's calibrated t0)")
    p.add_argument("--n-probes", type=int, nargs="+", default=[8])
    p.add_argument("--exact", action="store_true", help="also FLIPD with the exact trace (D JVPs per point)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--fit-n", type=int, default=128)
    p.add_argument("--score-n", type=int, default=256, help="images for the end-to-end timing (0: fit only)")
    p.add_argument("--ode-n", type=int, default=16, help="images for the ODE likelihood timing")
    p.add_argument("--out", default="benchmarks/results/lid_diffusion_speed.json")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    timing = _detector(args)
    t0 = args.t0 if args.t0 is not None else timing["detector_t0"]
    model, spec = load_pretrained(NAME)
    X_id, _ = load_dataset("fashion_mnist", "test", n=args.n, random_state=0)
    X_ood, _ = load_dataset("mnist", "test", n=args.n, random_state=0)
    x = torch.as_tensor(np.r_[X_id, X_ood], dtype=torch.float32).reshape(-1, *spec.input_shape) / 255.0
    g = torch.Generator().manual_seed(0)
    y0 = model.to_model_space(x, g, shared_noise=True)
    D = model.n_dims
    eps = torch.randn(4 * D, *y0.shape[1:], generator=g)
    settings = [("hutchinson", k) for k in args.n_probes] + ([("exact", D)] if args.exact else [])
    probes = {k: rademacher(k, y0.shape[1:], torch.Generator().manual_seed(1)) for _, k in settings if _ == "hutchinson"}

    nb_s, flipd_s = 0.0, dict.fromkeys(settings, 0.0)
    sv, lids = [], {s: [] for s in settings}
    with torch.no_grad():
        for i in range(0, len(y0), args.batch_size):
            yb = y0[i : i + args.batch_size]
            t1 = time.perf_counter()
            sv.append(normal_bundle_singular_values(model, yb, eps, 0.01))
            nb_s += time.perf_counter() - t1
            for s in settings:
                t1 = time.perf_counter()
                lids[s].append(flipd(model, yb, t0, probes.get(s[1]) if s[0] == "hutchinson" else None))
                flipd_s[s] += time.perf_counter() - t1
    sv = torch.cat(sv).numpy()
    n = args.n
    ref = np.concatenate([v.numpy() for v in lids[settings[0]]])
    nb = NormalBundleLID(t0=0.01)
    log_tau = nb.calibrate({"sv": sv[:n]}, float(ref[:n].mean()))
    lid_nb = nb.count({"sv": sv}, log_tau)
    lid_gap = gap_lid(sv)
    rows = []
    for s in settings:
        lid = np.concatenate([v.numpy() for v in lids[s]])
        rows.append({
            "trace": s[0], "n_probes": s[1] if s[0] == "hutchinson" else None,
            "evaluations_per_point": 1 + s[1],
            "flipd_s": round(flipd_s[s], 2), "ratio": round(flipd_s[s] / nb_s, 5),
            "spearman": float(spearmanr(lid, lid_nb).statistic),
            "spearman_id_only": float(spearmanr(lid[:n], lid_nb[:n]).statistic),
            "auroc_flipd": auroc(lid[:n], lid[n:]),
            "mean_flipd_id": float(lid[:n].mean()), "mean_flipd_ood": float(lid[n:].mean()),
        })
    X_ode = x[: args.ode_n]
    t1 = time.perf_counter()
    with torch.no_grad():
        lp = model.log_prob(X_ode, torch.Generator().manual_seed(0), shared_noise=True, **ODE_DEFAULTS)
    ode_s = (time.perf_counter() - t1) / len(X_ode)
    assert torch.isfinite(lp).all()
    first = rows[0]
    result = {
        "n_id": n, "n_ood": n, "t0": t0, "nb_t0": 0.01, "nb_draws": 4 * D, "nb_log_tau": log_tau,
        "nb_s": round(nb_s, 2), "flipd_s": first["flipd_s"], "ratio": first["ratio"],
        "spearman": first["spearman"], "spearman_id_only": first["spearman_id_only"],
        "auroc_flipd": first["auroc_flipd"], "auroc_nb": auroc(lid_nb[:n], lid_nb[n:]),
        "auroc_nb_gap": auroc(lid_gap[:n], lid_gap[n:]),
        "nb_evaluations_per_point": 4 * D, "flipd_evaluations_per_point": first["evaluations_per_point"],
        "settings": rows, "ode": dict(ODE_DEFAULTS), "ode_s_per_image": round(ode_s, 3), **timing,
        "backbone_sha256": spec.metadata().get("sha256"), **run_info("lid_diffusion_speed.py", argv),
    }
    assert all(math.isfinite(v) for row in [result, *rows] for v in row.values() if isinstance(v, float))
    write_result(result, args.out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
