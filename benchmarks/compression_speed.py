"""Cost of the input-complexity term against the flow's likelihood, in one run.

Usage::

    python benchmarks/compression_speed.py --json [--n 2000] [--repeats 3]

Compresses ``n`` FashionMNIST test + ``n`` MNIST test images (28 x 28, 8 bit)
with every codec available here (:func:`dgmood.compression.compressed_bits`:
"png", "zlib", and "jpeg2000"/"webp" where ``imagecodecs`` is installed) and
computes the shipped ``fmnist-flow``'s log-likelihood of the same images, the
other term of Serra et al.'s score. Each codec is timed ``--repeats`` times,
interleaved with the flow, and the fastest pass is kept. Per codec:
``ms_per_image``, ``ratio_to_flow`` (codec time / flow time per image), mean
bits per dimension on each set. The issue's goal is PNG under 1 ms per
image. The JSON goes to ``benchmarks/results/compression_speed.json``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dgmood.compression import available_codecs, compressed_bits
from dgmood.datasets import load_dataset
from dgmood.pretrained import load_pretrained
from _common import run_info, write_result

NAME = "fmnist-flow"


def _flow_seconds(model, X: np.ndarray, shape, batch_size: int) -> float:
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(X), batch_size):
            xb = torch.as_tensor(X[i : i + batch_size], dtype=torch.float32).reshape(-1, *shape) / 255.0
            lp = model.log_prob(xb, generator=g)
            assert torch.isfinite(lp).all()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="images per set")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256, help="flow batch size")
    p.add_argument("--out", default="benchmarks/results/compression_speed.json")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    X_id, _ = load_dataset("fashion_mnist", "test", n=args.n, random_state=0)
    X_ood, _ = load_dataset("mnist", "test", n=args.n, random_state=0)
    X = np.ascontiguousarray(np.r_[X_id, X_ood])
    model, spec = load_pretrained(NAME)
    shape = tuple(spec.input_shape)
    D = int(np.prod(shape))
    codecs = available_codecs()
    best = dict.fromkeys(codecs, np.inf)
    flow_best = np.inf
    bits = {}
    for _ in range(args.repeats):
        for codec in codecs:
            t0 = time.perf_counter()
            bits[codec] = compressed_bits(X, shape, codec)
            best[codec] = min(best[codec], time.perf_counter() - t0)
        flow_best = min(flow_best, _flow_seconds(model, X, shape, args.batch_size))
    flow_ms = 1e3 * flow_best / len(X)
    n = args.n
    rows = [{
        "codec": c, "ms_per_image": round(1e3 * best[c] / len(X), 4),
        "ratio_to_flow": round(best[c] / flow_best, 4),
        "mean_bits_per_dim_fashion_mnist": float(bits[c][:n].mean() / D),
        "mean_bits_per_dim_mnist": float(bits[c][n:].mean() / D),
    } for c in codecs]
    png = rows[codecs.index("png")]
    result = {
        "n_id": n, "n_ood": n, "input_shape": list(shape), "repeats": args.repeats,
        "png_ms_per_image": png["ms_per_image"], "png_under_1ms": png["ms_per_image"] < 1.0,
        "flow_ms_per_image": round(flow_ms, 4), "flow_batch_size": args.batch_size,
        "codecs": rows, **run_info("compression_speed.py", argv),
    }
    write_result(result, args.out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
