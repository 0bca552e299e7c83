"""Fast (SLQ) vs exact Jacobian LID on the shipped FashionMNIST flow, in one run.

Usage::

    python benchmarks/lid_speed.py --json [--n 200] [--log-tau -3] [--n-probes 1]
        [--n-steps 25 [35 ...]] [--smoothing 0.5 [1.0 ...]]

Scores ``n`` FashionMNIST test + ``n`` MNIST test images with both methods on
the same flow, the same latents and the same threads (alternating batch by
batch, so that any load on the machine slows both alike), and prints one JSON
object: ``exact_s``, ``fast_s``, ``ratio`` (fast / exact), ``spearman`` (fast vs
exact LID over all images), ``auroc_exact``, ``auroc_fast`` (LID alone, MNIST
as the positive class), ``products_per_point`` of the fast method; also the
rank correlation on the in-distribution images alone and the mean absolute
count error. Several ``--n-steps`` run the fast method once per value (each
timed on its own, interleaved with the exact batches); several ``--smoothing``
values reuse the same quadrature (no new products). Every setting gets a row in
``settings``; the top-level fields are those of the first setting.
With ``--score-n N`` (default 1000) it also times the shipped-weights
detector end to end: ``LIDLikelihoodDetector("pretrained:fmnist-flow",
lid_method="fast", lid_target="pretrained")`` with the first setting, fitted
on ``--fit-n`` held-out training images, then ``score_samples`` on N
FashionMNIST test images (likelihood, latents and fast LID): ``detector_score_s``.
``log_tau`` defaults to the value ``dgmood benchmark --detector
lid-flow`` calibrated (its largest-n JSON in ``benchmarks/results/``). The JSON is
also written to ``benchmarks/results/lid_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from dgmood.datasets import load_dataset
from dgmood.lid.jacobian import (
    count_from_quadrature,
    lid_from_singular_values,
    singular_values,
    slq_quadrature,
)
from dgmood.metrics import auroc
from dgmood.pretrained import heldout_images, load_pretrained
from _common import run_info, write_result


def _detector_timing(args, setting: dict) -> dict:
    """Fit the shipped-weights fast detector on held-out training images, time scoring ``score_n`` images."""
    from dgmood import LIDLikelihoodDetector

    torch.set_grad_enabled(True)  # as a user's session: the detector manages its own no_grad
    X_fit = heldout_images("fmnist-flow", args.fit_n, random_state=0)
    X_score, _ = load_dataset("fashion_mnist", "test", n=args.score_n, random_state=1)
    det = LIDLikelihoodDetector("pretrained:fmnist-flow", lid_method="fast", n_steps=setting["n_steps"],
                                n_probes=args.n_probes, smoothing=setting["smoothing"], lid_target="pretrained",
                                random_state=0)
    t0 = time.perf_counter()
    det.fit(X_fit)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = det.score_samples(X_score)
    score_s = time.perf_counter() - t0
    assert np.all(np.isfinite(scores))
    return {
        "detector_fit_images": int(len(X_fit)),
        "detector_fit_s": round(fit_s, 1),
        "detector_images": int(len(X_score)),
        "detector_score_s": round(score_s, 1),
        "detector_batch_size": det.batch_size,
        "detector_log_tau": det.log_tau_,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="images per set")
    p.add_argument("--log-tau", type=float, default=None, help="default: the calibrated value in lid-flow JSON, else -3")
    p.add_argument("--n-probes", type=int, default=1)
    p.add_argument("--n-steps", type=int, nargs="+", default=[35])
    p.add_argument("--smoothing", type=float, nargs="+", default=[0.5],
                   help="log-sigma smoothing of the fast hard count")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=64, help="VJPs at a time in the exact Jacobian")
    p.add_argument("--score-n", type=int, default=1000, help="images for the end-to-end detector timing (0: skip)")
    p.add_argument("--fit-n", type=int, default=128, help="held-out training images the timed detector fits on")
    p.add_argument("--out", default="benchmarks/results/lid_speed.json")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    log_tau = args.log_tau
    if log_tau is None:
        found = sorted(Path("benchmarks/results").glob("lid-flow_fashion_mnist_vs_mnist_n*.json"),
                       key=lambda f: int(f.stem.rsplit("_n", 1)[1]))
        log_tau = json.loads(found[-1].read_text())["log_tau"] if found else -3.0
    flow, spec = load_pretrained("fmnist-flow")
    X_id, _ = load_dataset("fashion_mnist", "test", n=args.n, random_state=0)
    X_ood, _ = load_dataset("mnist", "test", n=args.n, random_state=0)
    x = torch.as_tensor(np.r_[X_id, X_ood], dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    with torch.no_grad():
        z = flow.encode_with_log_prob(x, torch.Generator().manual_seed(0), shared_noise=True)[0]
    D = z.shape[1]

    torch.set_grad_enabled(False)  # torch.func transforms still differentiate inside
    exact_s, fast_s = 0.0, dict.fromkeys(args.n_steps, 0.0)
    sv, parts = [], {m: [] for m in args.n_steps}
    for i in range(0, len(z), args.batch_size):
        zb = z[i : i + args.batch_size]
        t0 = time.perf_counter()
        sv.append(torch.cat([singular_values(flow.decode, zi[None], args.chunk_size) for zi in zb]))
        exact_s += time.perf_counter() - t0
        for m in args.n_steps:
            t1 = time.perf_counter()
            g = torch.Generator().manual_seed(1)  # the same probe for every batch (common random numbers)
            parts[m].append(slq_quadrature(flow.decode, zb, args.n_probes, m, g))
            fast_s[m] += time.perf_counter() - t1
    lid_exact = lid_from_singular_values(torch.cat(sv), log_tau).numpy()

    n = args.n
    settings = []
    for m in args.n_steps:
        theta, w = (torch.cat(t) for t in zip(*parts[m]))
        for h in args.smoothing:
            lid_fast = count_from_quadrature(theta, w, D, log_tau, smoothing=h).numpy()
            settings.append({
                "n_steps": m,
                "smoothing": h,
                "products_per_point": 2 * args.n_probes * m,
                "fast_s": round(fast_s[m], 2),
                "ratio": round(fast_s[m] / exact_s, 4),
                "fast_s_per_image": round(fast_s[m] / (2 * n), 4),
                "spearman": float(spearmanr(lid_fast, lid_exact).statistic),
                "spearman_id_only": float(spearmanr(lid_fast[:n], lid_exact[:n]).statistic),
                "auroc_fast": auroc(lid_fast[:n], lid_fast[n:]),
                "auroc_gap": auroc(lid_exact[:n], lid_exact[n:]) - auroc(lid_fast[:n], lid_fast[n:]),
                "mean_abs_count_error": float(np.abs(lid_fast - lid_exact).mean()),
                "mean_abs_count_error_id_only": float(np.abs(lid_fast[:n] - lid_exact[:n]).mean()),
            })
    first = settings[0]
    timing = _detector_timing(args, first) if args.score_n else {}
    result = {
        "n_id": n,
        "n_ood": n,
        "log_tau": log_tau,
        "exact_s": round(exact_s, 2),
        "fast_s": first["fast_s"],
        "ratio": first["ratio"],
        "exact_s_per_image": round(exact_s / (2 * n), 4),
        "fast_s_per_image": first["fast_s_per_image"],
        "spearman": first["spearman"],
        "spearman_id_only": first["spearman_id_only"],
        "auroc_exact": auroc(lid_exact[:n], lid_exact[n:]),
        "auroc_fast": first["auroc_fast"],
        "mean_lid_exact_id": float(lid_exact[:n].mean()),
        "mean_lid_exact_ood": float(lid_exact[n:].mean()),
        "mean_abs_count_error": first["mean_abs_count_error"],
        "products_per_point": first["products_per_point"],
        "n_probes": args.n_probes,
        "n_steps": first["n_steps"],
        "smoothing": first["smoothing"],
        "settings": settings,
        **timing,
        "exact_products_per_point": D,
        "backbone_sha256": spec.metadata().get("sha256"),
        **run_info("lid_speed.py", argv),
    }
    assert all(math.isfinite(v) for row in [result, *settings] for v in row.values() if isinstance(v, float))
    write_result(result, args.out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
