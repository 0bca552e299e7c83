"""What the probability-flow ODE's settings cost and change, on the shipped FashionMNIST diffusion.

Usage::

    python benchmarks/ode_settings.py --json [--n 100] [--n-cal 100]

Fits ``LIDLikelihoodDetector("pretrained:fmnist-diffusion", lid_target="pretrained")``
once per ODE setting (``ode_params``) on the same ``--n-cal`` held-out images and
scores the same ``--n`` FashionMNIST + ``--n`` MNIST test images, settings
interleaved in one run on one machine. Per setting: seconds per image of the
ODE alone (``ode_s_per_image``, on the first 32 scored images), the detector's
AUROC (its min-CDF rule), the likelihood's AUROC alone, and against the first
(most expensive) setting: Spearman correlation and mean absolute difference of
log p in nats, and the AUROC difference (same images, paired). FLIPD is the
same in every setting (same t0 once calibrated, same probes), so differences
come from the ODE alone. Writes ``benchmarks/results/ode_settings.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from dgmood import LIDLikelihoodDetector
from dgmood.datasets import load_dataset
from dgmood.metrics import auroc, bootstrap_ci
from dgmood.pretrained import heldout_images, load_pretrained
from _common import run_info, write_result

NAME = "fmnist-diffusion"
#: the first is the reference (most steps and probes)
SETTINGS = [
    {"solver": "heun", "steps": 25, "n_probes": 4},
    {"solver": "heun", "steps": 12, "n_probes": 2},
    {"solver": "heun", "steps": 8, "n_probes": 1},
    {"solver": "euler", "steps": 12, "n_probes": 1},
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100, help="test images per set")
    p.add_argument("--n-cal", type=int, default=100, help="held-out images to fit on")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--out", default="benchmarks/results/ode_settings.json")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    X_cal = heldout_images(NAME, args.n_cal, random_state=0)
    X_id, _ = load_dataset("fashion_mnist", "test", n=args.n, random_state=0)
    X_ood, _ = load_dataset("mnist", "test", n=args.n, random_state=0)
    model, spec = load_pretrained(NAME)
    rows, ref, t0 = [], None, "auto"
    for setting in SETTINGS:
        det = LIDLikelihoodDetector(f"pretrained:{NAME}", lid_target="pretrained", t0=t0, ode_params=setting,
                                    batch_size=args.batch_size, random_state=0)
        det.fit(X_cal)
        t0 = det.t0_  # every later setting uses the reference's t0: only the ODE differs
        c_id, c_ood = det.score_components(X_id), det.score_components(X_ood)
        s_id, s_ood = det.score_from_components(c_id), det.score_from_components(c_ood)
        lp = np.r_[c_id["log_prob"], c_ood["log_prob"]]
        x = torch.as_tensor(X_id[:32], dtype=torch.float32).reshape(-1, *spec.input_shape) / 255.0
        t1 = time.perf_counter()
        with torch.no_grad():
            model.log_prob(x, torch.Generator().manual_seed(0), shared_noise=True, **{**det.ode_params_})
        ode_s = (time.perf_counter() - t1) / len(x)
        row = {**setting, "ode_s_per_image": round(ode_s, 3), "auroc": auroc(s_id, s_ood),
               "auroc_ci": list(bootstrap_ci("auroc", s_id, s_ood, n_boot=1000, random_state=0)),
               "likelihood_auroc": auroc(c_id["log_prob"], c_ood["log_prob"]),
               "lid_auroc": auroc(c_id["lid"], c_ood["lid"]), "t0": det.t0_}
        if ref is None:
            ref = {"log_prob": lp, "scores": (s_id, s_ood), "auroc": row["auroc"]}
        else:
            row["spearman_log_prob_vs_reference"] = float(spearmanr(lp, ref["log_prob"]).statistic)
            row["mean_abs_log_prob_diff_nats"] = float(np.mean(np.abs(lp - ref["log_prob"])))
            row["auroc_minus_reference"] = row["auroc"] - ref["auroc"]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    result = {
        "n_id": args.n, "n_ood": args.n, "n_calibration": args.n_cal, "settings": rows,
        "backbone_sha256": spec.metadata().get("sha256"), **run_info("ode_settings.py", argv),
    }
    write_result(result, args.out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
