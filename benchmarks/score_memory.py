"""Peak memory of ``dgmood score`` at 10k and 70k rows: streaming keeps it flat in N.

Writes two ``.npy`` files of 8-bit 28x28 images (10 000 and 70 000 rows), saves
a fitted detector (a small untrained image flow: the model is not what is
measured, the streaming is), runs ``dgmood score`` on each in its own process
and reads that process's peak RSS (``os.wait4``). Prints and writes
``benchmarks/results/score_memory.json`` with ``ratio`` = peak(70k) / peak(10k)
(goal: within 10 %, i.e. ratio <= 1.10)::

    python benchmarks/score_memory.py [--rows 10000 70000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np


def _peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed")
    return usage.ru_maxrss / 1024.0, time.time() - t0  # Linux: KiB


def main() -> None:
    from dgmood import LikelihoodDetector
    from dgmood.backbones.flows import ImageFlow

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 70_000])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    result = {"rows": args.rows, "peak_rss_mb": [], "seconds": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        det = LikelihoodDetector(backbone=ImageFlow((1, 28, 28), n_levels=2, steps_per_level=1, hidden=8),
                                 max_epochs=0, batch_size=256, random_state=0)
        det.fit(rng.integers(0, 256, (64, 784), dtype=np.uint8))
        joblib.dump(det, tmp / "model.joblib")
        for n in args.rows:
            X = np.lib.format.open_memmap(tmp / f"X{n}.npy", mode="w+", dtype=np.uint8, shape=(n, 784))
            for start in range(0, n, 10_000):
                X[start : start + 10_000] = rng.integers(0, 256, (min(10_000, n - start), 784), dtype=np.uint8)
            X.flush()
            del X
            cmd = [sys.executable, "-m", "dgmood.cli", "score", str(tmp / "model.joblib"), "--input",
                   str(tmp / f"X{n}.npy"), "--out", str(tmp / f"s{n}.npy"), "--quiet"]
            rss, sec = _peak_rss_mb(cmd)
            result["peak_rss_mb"].append(round(rss, 1))
            result["seconds"].append(round(sec, 1))
    result["ratio"] = round(result["peak_rss_mb"][-1] / result["peak_rss_mb"][0], 3)
    result["command"] = "python benchmarks/score_memory.py " + " ".join(sys.argv[1:])
    out = Path(__file__).resolve().parent / "results" / "score_memory.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result) if args.json else f"peak RSS {result['peak_rss_mb']} MB at {args.rows} rows: "
          f"ratio {result['ratio']}")


if __name__ == "__main__":
    main()
