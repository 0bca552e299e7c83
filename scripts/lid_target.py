"""Record the local-PCA LID target of a shipped flow or diffusion model in its metadata.

``LIDLikelihoodDetector(lid_target="pretrained")`` calibrates tau to this target
(or FLIPD's t0 to it, on a diffusion) instead of running local PCA on its own fit data, so a detector fitted on a
few hundred images gets the threshold a large sample gives (local PCA with k
neighbours cannot see more than k - 1 dimensions, so a small fit set caps the
target). The reference sample is the backbone's held-out training images
(never seen in training), the queries a seeded random subset of them::

    python scripts/lid_target.py fmnist-flow --n-queries 1000

On a diffusion it also records ``flipd_t0``, the time that
``LIDLikelihoodDetector(t0="auto")`` picks for that target on ``--flipd-n``
of the held-out images (the detector's own grid search, probes and
dequantization), with the grid's mean FLIPD curve; ``t0="pretrained"`` then
skips the search.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shlex
import sys
import time

import numpy as np


def main(argv=None):
    from dgmood import LIDLikelihoodDetector
    from dgmood.lid.lpca import lpca_lid
    from dgmood.pretrained import REGISTRY, heldout_images

    defaults = {k: v.default for k, v in inspect.signature(LIDLikelihoodDetector).parameters.items()}
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(k for k, s in REGISTRY.items() if s.kind in ("flow", "diffusion")))
    p.add_argument("--n-reference", type=int, default=None, help="held-out images used (default: all)")
    p.add_argument("--n-queries", type=int, default=1000)
    p.add_argument("--n-neighbors", type=int, default=defaults["lpca_neighbors"])
    p.add_argument("--alpha", type=float, default=defaults["lpca_alpha"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flipd-n", type=int, default=256, help="diffusion: held-out images for flipd_t0 (0: skip)")
    p.add_argument("--dry-run", action="store_true", help="print, do not write the metadata")
    args = p.parse_args(argv)

    spec = REGISTRY[args.name]
    meta = spec.metadata()
    rng = np.random.default_rng(args.seed)
    if args.n_reference:  # drawn with its own generator seeded by --seed, as heldout_images does
        X_ref = heldout_images(args.name, args.n_reference, random_state=rng)
    else:
        X_ref = heldout_images(args.name)
    queries = X_ref[np.sort(rng.choice(len(X_ref), min(args.n_queries, len(X_ref)), replace=False))]
    t0 = time.time()
    lid = lpca_lid(queries, X_ref, n_neighbors=args.n_neighbors, alpha=args.alpha, exclude_self=True)
    record = {
        "lpca_target": float(lid.mean()),
        "lpca_sd": float(lid.std(ddof=1)),
        "n_reference": int(len(X_ref)),
        "n_queries": int(len(queries)),
        "n_neighbors": args.n_neighbors,
        "alpha": args.alpha,
        "method": "fo",
        "reference": f"held-out {spec.dataset} training images (heldout_train_indices)",
        "seconds": round(time.time() - t0, 1),
        "command": "python scripts/lid_target.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
    }
    if spec.kind == "diffusion" and args.flipd_n:
        t1 = time.time()
        det = LIDLikelihoodDetector(f"pretrained:{args.name}", lid_target=record["lpca_target"],
                                    n_calibration=args.flipd_n, random_state=args.seed)
        det.fit(queries[: args.flipd_n])
        record.update(flipd_t0=det.t0_, flipd_n=int(min(args.flipd_n, len(queries))), flipd_n_probes=det.lid_estimator_.n_probes,
                      flipd_t0_curve=[[float(t), float(m)] for t, m in det.t0_curve_],
                      flipd_seconds=round(time.time() - t1, 1))
    print(json.dumps(record, indent=1))
    if not args.dry_run:
        meta["lid_calibration"] = record
        spec.metadata_path.write_text(json.dumps(meta, indent=1) + "\n")
        print(f"wrote lid_calibration into {spec.metadata_path}")


if __name__ == "__main__":
    main()
