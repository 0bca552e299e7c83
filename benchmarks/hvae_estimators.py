r"""Estimators of the HVAE likelihood ratio side by side, from one table of shared-draw log-weights.

Usage::

    python benchmarks/hvae_estimators.py --json [--weights W.pt | --pretrained fmnist-hvae] \
        [--n 1000] [--n-cal 500] [--samples 16] [--independent]

For a hierarchical VAE (the shipped one, or weights written by
``scripts/train_pretrained.py``, whose JSON beside them gives the
architecture), on the first ``n`` FashionMNIST test (ID) and MNIST test (OOD)
images, each binarized once with its own seeded draw (as the detector), it
computes the log-weights :math:`w_k(s)`, k = 0 .. L-1, of S shared posterior
draws (:func:`dgmood.backbones.hvae_bounds.shared_weights`) and the prior-mean
bound :math:`\mathcal L^{>L}`, once (and the analytic KL of each latent layer
at one posterior draw, averaged). From that one table it derives, for S' in
{1, 4, S} (the first S' draws):

* ``lme``: :math:`LME_{s} w_0 - LME_{s} w_k` (the reference run's estimator);
* ``hybrid``: :math:`LME_{s} w_0 - \mathrm{mean}_{s} w_k`;
* ``hybrid_m1``: :math:`LME_{s} w_0 - w_k(1)` (one skip draw: S' + L passes);

and, with ``--independent``, the estimator that dgmood shipped first (IWAE
over S fresh draws minus the mean of 8 independent skip draws). Per estimator
and S' it reports the AUROC (MNIST positive) of each :math:`LLR^{>k}` and of
``k="auto"`` (Fisher's combination of k = 1 .. L-1 with medians and scales
from ``n_cal`` held-out FashionMNIST training images the model never saw), and
the network passes per image. Output: ``benchmarks/results/hvae_estimators_<name>_n<n>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.special import logsumexp
from tqdm.auto import tqdm

from dgmood.backbones import hvae_bounds
from dgmood.backbones.hvae import HierarchicalVAE, binarize, row_generators
from dgmood.datasets import load_fashion_mnist, load_mnist
from dgmood.detectors.hvae_llr import auto_ks, fisher_llr_score
from dgmood.metrics import auroc
from dgmood.thresholds import robust_location_scale

RESULTS = Path(__file__).resolve().parent / "results"


def load_model(weights: str | None, pretrained: str | None) -> tuple[HierarchicalVAE, str, list[int]]:
    """The model, a name for the output file and the held-out training indices it never saw."""
    if pretrained:
        from dgmood.pretrained import load_pretrained

        model, spec = load_pretrained(pretrained)
        return model, pretrained, spec.metadata()["heldout_train_indices"]
    meta = json.loads(Path(weights).with_suffix(".json").read_text())
    arch = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["architecture"].items()}
    model = HierarchicalVAE(**arch)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval(), Path(weights).stem + "-" + arch.get("inference", "bottom_up"), meta["heldout_train_indices"]


@torch.no_grad()
def weight_table(model, X: np.ndarray, S: int, batch: int, seed: int = 0, independent: bool = False) -> dict:
    """w (S, n, L) float64, top (n,), and optionally the independent estimator's llr (n, L+1)."""
    L = model.n_latent_layers
    ws, tops, indep, kls = [], [], [], []
    t0 = time.perf_counter()
    for i in tqdm(range(0, len(X), batch), desc=f"S={S}", leave=False):
        xb = torch.as_tensor(X[i : i + batch], dtype=torch.float32).view(-1, *model.input_shape) / 255.0
        x = binarize(xb, row_generators(xb.numpy(), seed))
        g = row_generators(xb.numpy(), seed + 7919)
        feats = model.features(x)
        rows = []
        for _ in range(S):
            eps = model.draw_noise(len(x), generator=g, dtype=x.dtype)
            rows.append(torch.stack(hvae_bounds.shared_weights(model, x, feats, eps, range(L)), 1).double())
        ws.append(torch.stack(rows))
        tops.append(model.skip_elbo(x, L).double())
        _, kl = model._terms(x, 0, generator=row_generators(xb.numpy(), seed + 3 * 7919), analytic_kl=True)
        kls.append(torch.stack([t.flatten(1).sum(1) for t in kl], 1).double())
        if independent:
            out = model.llr_scores(x, 16, row_generators(xb.numpy(), seed + 2 * 7919), False, 8,
                                   estimator="independent")
            indep.append(out["llr"].double())
    seconds = time.perf_counter() - t0
    out = {"w": torch.cat(ws, 1).numpy(), "top": torch.cat(tops).numpy(), "seconds": seconds,
           "kl": torch.cat(kls).numpy()}
    if independent:
        out["independent"] = torch.cat(indep).numpy()
    return out


def _lme(a: np.ndarray) -> np.ndarray:
    """Log-mean-exp over the draws (axis 0)."""
    return logsumexp(a, axis=0) - np.log(a.shape[0])


def derive(table: dict, S: int, estimator: str) -> np.ndarray:
    """LLR (n, L+1) for the first S draws of the table."""
    w, top = table["w"][:S], table["top"]
    bound = _lme(w[:, :, 0])
    if estimator == "lme":
        skip = _lme(w)
    elif estimator == "hybrid":
        skip = w.mean(0)
    else:  # hybrid_m1
        skip = w[0]
    skip = np.concatenate([skip, top[:, None]], 1)
    return bound[:, None] - skip


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="a .pt written by scripts/train_pretrained.py (its .json beside it)")
    src.add_argument("--pretrained", help="a shipped backbone, e.g. fmnist-hvae")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--n-cal", type=int, default=500)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--independent", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, name, heldout = load_model(args.weights, args.pretrained)
    L = model.n_latent_layers
    X_train = load_fashion_mnist("train")[0]
    X_cal = X_train[np.asarray(heldout)[np.random.RandomState(0).permutation(len(heldout))[: args.n_cal]]]
    X_id, X_ood = load_fashion_mnist("test")[0][: args.n], load_mnist("test")[0][: args.n]
    tables = {k: weight_table(model, X, args.samples, args.batch, independent=args.independent)
              for k, X in (("cal", X_cal), ("id", X_id), ("ood", X_ood))}
    ks = auto_ks(L)
    rows = []

    def evaluate(name_, S, m, llrs, passes):
        cal, lid, lood = llrs
        center, scale = robust_location_scale(cal)
        row = {"estimator": name_, "S": S, "m": m, "passes_per_image": passes}
        for k in range(L + 1):
            row[f"auroc_k{k}"] = round(auroc(-lid[:, k], -lood[:, k]), 4)
        row["auroc_auto"] = round(auroc(fisher_llr_score(lid[:, ks], center[ks], scale[ks]),
                                        fisher_llr_score(lood[:, ks], center[ks], scale[ks])), 4)
        rows.append(row)

    for S in sorted({S_ for S_ in (1, 4, args.samples) if S_ <= args.samples}):  # no row claims more draws than ran
        for est in ("lme", "hybrid", "hybrid_m1"):
            if S == 1 and est != "hybrid":
                continue  # at S = 1 the three are the same
            m = 1 if est == "hybrid_m1" else S
            evaluate(est, S, m, [derive(tables[t], S, est) for t in ("cal", "id", "ood")], S + m * (L - 1) + 1)
    if args.independent:
        indep = [tables[t]["independent"] for t in ("cal", "id", "ood")]
        evaluate("independent", 16, 8, indep, 16 + 8 * L + 1)
    result = {
        "model": name,
        "inference": getattr(model, "inference", "bottom_up"),
        "n_id": len(X_id), "n_ood": len(X_ood), "n_cal": len(X_cal),
        "table_seconds_id": round(tables["id"]["seconds"], 1),
        "mean_elbo_id": round(float(tables["id"]["w"][0, :, 0].mean()), 2),
        "mean_elbo_ood": round(float(tables["ood"]["w"][0, :, 0].mean()), 2),
        "kl_per_layer_id": [round(float(v), 2) for v in tables["id"]["kl"].mean(0)],
        "kl_per_layer_ood": [round(float(v), 2) for v in tables["ood"]["kl"].mean(0)],
        "likelihood_auroc_elbo": round(auroc(tables["id"]["w"][0, :, 0], tables["ood"]["w"][0, :, 0]), 4),
        "rows": rows,
        "command": "python benchmarks/hvae_estimators.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    out = Path(args.out) if args.out else RESULTS / f"hvae_estimators_{name}_n{args.n}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for r in rows:
            print(r)
    return result


if __name__ == "__main__":
    main()
