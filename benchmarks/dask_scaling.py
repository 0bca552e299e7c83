"""Speed-up of 2 dask worker processes over 1 when scoring with a fitted detector, in one run.

The likelihood detector on the shipped FashionMNIST flow scores the same
``--n`` FashionMNIST training images (default 20 000) with
:func:`dgmood.scoring.score_dask` on a ``LocalCluster`` of 1, then 2 worker
processes, one thread each (torch set to one thread per worker). Both runs
must give identical scores. Prints (``--json``) and writes
``benchmarks/results/dask_scaling.json`` with ``speedup`` = time(1) / time(2)::

    python benchmarks/dask_scaling.py [--n 20000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def _one_thread():
    import torch

    torch.set_num_threads(1)


def main() -> None:
    import dask.array as da
    from distributed import Client, LocalCluster

    from dgmood import LikelihoodDetector
    from dgmood.datasets import load_fashion_mnist
    from dgmood.pretrained import heldout_images
    from dgmood.scoring import score_dask

    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--chunk", type=int, default=1024, help="rows per dask chunk (16 scoring batches)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    det = LikelihoodDetector("pretrained:fmnist-flow", batch_size=64, random_state=0)
    det.fit(heldout_images("fmnist-flow", 256, random_state=0))
    X = load_fashion_mnist("train")[0][: args.n]
    seconds, scores = {}, {}
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            client.run(_one_thread)
            lazy = score_dask(det, da.from_array(X, chunks=(args.chunk, X.shape[1])))
            t0 = time.time()
            scores[workers] = lazy.compute()
            seconds[workers] = time.time() - t0
    if not np.array_equal(scores[1], scores[2]):
        raise SystemExit("1-worker and 2-worker scores differ")
    result = {
        "n": args.n, "chunk": args.chunk, "seconds_1_worker": round(seconds[1], 1),
        "seconds_2_workers": round(seconds[2], 1), "speedup": round(seconds[1] / seconds[2], 3),
        "identical_scores": True, "cpu_count": os.cpu_count(),
        "command": "python benchmarks/dask_scaling.py " + " ".join(sys.argv[1:]),
    }
    out = Path(__file__).resolve().parent / "results" / "dask_scaling.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result) if args.json else f"speed-up of 2 workers over 1: {result['speedup']}")


if __name__ == "__main__":
    main()
