"""Command line: ``dgmood demo | benchmark | report | score | train``.

* ``dgmood demo``: shipped weights, FashionMNIST test vs MNIST test, a metrics
  table with bootstrap intervals and PNG figures.
* ``dgmood benchmark --detector NAME --id fashion_mnist --ood mnist --n N --json``:
  one JSON object on stdout, also written under ``benchmarks/results/`` with the per-sample scores
  (``scores/<detector>_<id>_vs_<ood>.npz``); ``--all`` runs every registered detector;
  ``--id-path id.npz --ood-path ood.npz --input-shape C H W`` runs on your own images.
* ``dgmood report``: ``table.md``, ``table.json`` and the ROC figure from the stored results
  (:func:`dgmood.report.write_report`), without rerunning anything.
* ``dgmood score MODEL.joblib --input X.npy --out scores.npy``: stream a
  memory-mapped file through a fitted detector (:func:`dgmood.scoring.score_file`);
* ``dgmood train {flow,hvae} --data X.npz|DIR --out DIR``: train a backbone on your own images
  (:func:`dgmood.backbones.store.train_backbone`; checkpoints and resume in ``DIR/checkpoints``);
* ``dgmood train NAME``: retrain a shipped backbone (``scripts/train_pretrained.py``, source checkout).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .benchmark import ALL_N, DETECTORS, load_user_data, make_detector, run_benchmark, save_scores

__all__ = ["main", "run_benchmark"]


def _table(rows: list[dict]) -> str:
    head = f"{'detector':<18}{'n_id+n_ood':>12}{'AUROC':>8}{'95% CI':>17}{'AUPRC':>8}{'FPR95':>8}{'sec':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        ci = f"[{r['auroc_ci'][0]:.3f}, {r['auroc_ci'][1]:.3f}]"
        lines.append(
            f"{r['detector']:<18}{r['n_id']:>6}+{r['n_ood']:<5}{r['auroc']:>8.3f}{ci:>17}"
            f"{r['auprc']:>8.3f}{r['fpr95']:>8.3f}{r['seconds']:>7.0f}"
        )
    return "\n".join(lines)


def _even_batch_size(n: int, largest: int) -> int:
    """The batch size that splits ``n`` rows into the fewest equal batches of at most ``largest`` rows."""
    return -(-n // -(-n // largest))


def _demo(args) -> int:
    from .plotting import plot_likelihood_vs_lid, plot_llr_per_k, plot_score_histograms

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = []
    print("dgmood demo: FashionMNIST (in-distribution) vs MNIST (OOD) test images, shipped weights")
    print("AUROC with OOD as the positive class: 1 = perfect, 0.5 = chance, < 0.5 = OOD looks *more* in-distribution")
    for name in args.detectors:
        n, n_cal = {"lid-flow": (args.n_lid, args.n_cal_lid), "lid-diffusion": (args.n_lid, args.n_cal_lid),
                    "hvae-llr": (args.n_hvae, args.n_hvae)}.get(name, (args.n, args.n_cal))
        # a few hundred fit images cannot give local PCA its 1000 neighbours: use the shipped target
        params = {"lid_target": "pretrained"} if name.startswith("lid-") else {}
        if name == "lid-diffusion":  # the t0 calibrated on 256 held-out images, recorded with the weights
            params["t0"] = "pretrained"
        # scoring batches have a fixed shape (the last one padded): split n into equal batches instead
        params["batch_size"] = _even_batch_size(n, make_detector(name).batch_size)
        result, raw = run_benchmark(name, n=n, n_cal=n_cal, device=args.device, n_boot=args.n_boot, params=params)
        rows.append(result)
        if name == "likelihood":
            path = plot_score_histograms(
                raw["score_id"], raw["score_ood"], out / "likelihood_histograms.png",
                labels=("FashionMNIST test (ID)", "MNIST test (OOD)"), xlabel="log p(x) [nats]",
                title=f"Flow trained on FashionMNIST: AUROC {result['auroc']:.3f}",
            )
            print(f"wrote {path}")
        if name == "hvae-llr":
            path = plot_llr_per_k(raw["id"], raw["ood"], out / "hvae_llr_per_k.png",
                                  labels=("FashionMNIST test (ID)", "MNIST test (OOD)"))
            print(f"wrote {path}")
        if name.startswith("lid-"):
            det = raw["detector"]
            if det.rule == "min-cdf":
                psi = det.rule_.component_thresholds(det.offset_)
                drawn = dict(thresholds=(psi[0], psi[1]))
            else:
                drawn = dict(boundary=(det.rule_.score, det.offset_))
            scale = f"t0 = {det.t0_:.3g}" if det.lid_method_ == "flipd" else f"log tau = {det.log_tau_:.2f}"
            path = plot_likelihood_vs_lid(
                raw["id"], raw["ood"], out / ("likelihood_vs_lid.png" if name == "lid-flow"
                                              else f"likelihood_vs_lid_{name.split('-', 1)[1]}.png"), **drawn,
                labels=("FashionMNIST test (ID)", "MNIST test (OOD)"),
                title=f"{name}, {scale}: dual rule AUROC {result['auroc']:.3f}",
            )
            print(f"wrote {path}")
    print(_table(rows))
    print(f"total wall time {time.time() - t0:.0f} s")
    return 0


def _parse_params(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs; values parsed as JSON when they can be (numbers, true/false, null)."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--param expects KEY=VALUE, got {item!r}.")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def _benchmark(args) -> int:
    if args.all and args.detector is not None:
        raise SystemExit("dgmood benchmark: give --detector NAME or --all, not both.")
    if (args.id_path is None) != (args.ood_path is None):
        raise SystemExit("dgmood benchmark: --id-path and --ood-path go together (ID train/test and OOD test).")
    data = None
    if args.id_path is not None:
        try:
            data = load_user_data(args.id_path, args.ood_path, args.input_shape)
        except (ValueError, OSError) as err:
            raise SystemExit(f"dgmood benchmark: {err}") from None
        args.id, args.ood = Path(args.id_path).stem, Path(args.ood_path).stem
    names = sorted(DETECTORS) if args.all else [args.detector or "likelihood"]
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        n, n_cal = (min(args.n, ALL_N.get(name, args.n)), min(args.n_cal, ALL_N.get(name, args.n_cal))) \
            if args.all else (args.n, args.n_cal)
        if args.all:
            print(f"{name}: {n} + {n} test images, {n_cal} calibration", file=sys.stderr, flush=True)
        result, raw = run_benchmark(
            name, args.id, args.ood, n=n, n_cal=n_cal, device=args.device,
            random_state=args.random_state, n_boot=args.n_boot, verbose=args.verbose,
            params=_parse_params(args.param), data=data,
        )
        result["command"] = "dgmood benchmark " + " ".join(args.argv)
        path = out / f"{name}_{args.id}_vs_{args.ood}_n{n}.json"
        path.write_text(json.dumps(result, indent=1) + "\n")
        scores = save_scores(raw, out / "scores" / f"{name}_{args.id}_vs_{args.ood}.npz")
        rows.append(result)
        if args.json:
            print(json.dumps(result), flush=True)
        print(f"wrote {path} and {scores}", file=sys.stderr)
    if not args.json:
        print(_table(rows))
    return 0


def _report(args) -> int:
    from .report import write_report

    t0 = time.time()
    try:
        written = write_report(args.results_dir, args.published, docs_table=args.docs_table)
    except FileNotFoundError as err:
        raise SystemExit(f"dgmood report: {err}") from None
    for path in written.values():
        print(f"wrote {path}")
    print(f"dgmood report: {time.time() - t0:.1f} s", file=sys.stderr)
    return 0


def _score(args) -> int:
    import joblib

    from .scoring import score_file

    detector = joblib.load(args.model)
    path = score_file(detector, args.input, args.out, labels_path=args.labels, chunk_batches=args.chunk_batches,
                      progress=not args.quiet)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _train_own(rest: list[str]) -> int:
    from .backbones.store import load_training_data, train_backbone

    parser = argparse.ArgumentParser(prog="dgmood train", description="Train a backbone on your own images.")
    parser.add_argument("kind", choices=["flow", "hvae"])
    parser.add_argument("--data", required=True, help=".npz (array X), .npy or a folder of PNG/JPEG images")
    parser.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"), default=None)
    parser.add_argument("--out", required=True, help="directory for <name>.pt, <name>.json and checkpoints/")
    parser.add_argument("--name", default=None)
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="architecture argument, e.g. --param hidden=64 (repeatable)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(rest)
    X, shape = load_training_data(args.data, args.input_shape)
    path = train_backbone(
        args.kind, X, shape, args.out, name=args.name, architecture=_parse_params(args.param),
        max_epochs=args.max_epochs, lr=args.lr, batch_size=args.batch_size, device=args.device,
        random_state=args.random_state, verbose=0 if args.quiet else 1,
        command="dgmood train " + " ".join(rest),
    )
    print(f"wrote {path} (use backbone={str(path)!r})", file=sys.stderr)
    return 0


def _train(args) -> int:
    if args.rest and args.rest[0] in ("flow", "hvae"):
        return _train_own(args.rest)
    import runpy

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_pretrained.py"
    if not script.is_file():
        raise SystemExit(f"{script} not found: run from a source checkout of dgmood.")
    sys.argv = [str(script), *args.rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="dgmood", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="shipped weights: FashionMNIST vs MNIST table and figures")
    # sized to finish in under 5 minutes on 2 slow cores; `dgmood benchmark` runs the full-size rows
    demo.add_argument("--n", type=int, default=500, help="test images per set")
    demo.add_argument("--n-cal", type=int, default=500, help="held-out training images to calibrate on")
    demo.add_argument("--n-lid", type=int, default=64, help="test images per set for lid-flow and lid-diffusion")
    demo.add_argument("--n-cal-lid", type=int, default=64,
                      help="held-out images calibrating lid-flow's tau and both rules' thresholds "
                           "(lid-diffusion scores at the t0 recorded with its weights)")
    demo.add_argument("--n-hvae", type=int, default=120, help="test (and calibration) images per set for hvae-llr")
    demo.add_argument("--detectors", nargs="+", default=["likelihood", "typicality", "lid-flow", "hvae-llr"],
                      choices=sorted(DETECTORS))
    demo.add_argument("--out", default="demo_output")
    demo.add_argument("--device", default="auto")
    demo.add_argument("--n-boot", type=int, default=1000)
    bench = sub.add_parser("benchmark", help="one detector (or --all), a JSON result and scores each")
    bench.add_argument("--detector", default=None, choices=sorted(DETECTORS), help="default: likelihood")
    bench.add_argument("--all", action="store_true",
                       help=f"every registered detector; the slow ones at fewer images ({ALL_N})")
    bench.add_argument("--id-path", default=None, help="your ID images: .npz with uint8 arrays 'train' and 'test'")
    bench.add_argument("--ood-path", default=None, help="your OOD images: .npz with a uint8 array 'test'")
    bench.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"), default=None,
                       help="shape of one image of --id-path / --ood-path")
    bench.add_argument("--id", default="fashion_mnist")
    bench.add_argument("--ood", default="mnist")
    bench.add_argument("--n", type=int, default=2000)
    bench.add_argument("--n-cal", type=int, default=2000)
    bench.add_argument("--device", default="auto")
    bench.add_argument("--random-state", type=int, default=0)
    bench.add_argument("--n-boot", type=int, default=1000)
    bench.add_argument("--results-dir", default="benchmarks/results")
    bench.add_argument("--json", action="store_true")
    bench.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                       help="detector parameter, e.g. --param lid_method=exact (repeatable)")
    bench.add_argument("--verbose", type=int, default=0, help="1: progress bars")
    report = sub.add_parser("report", help="table.md, table.json and ROC figures from stored benchmark results")
    report.add_argument("--results-dir", default="benchmarks/results")
    report.add_argument("--published", default="benchmarks/published.json",
                        help="published figures with their sources (JSON)")
    report.add_argument("--docs-table", default=None,
                        help="also write the reStructuredText table here (docs/results_table.rst)")
    score = sub.add_parser("score", help="score a .npy file with a fitted detector saved by joblib")
    score.add_argument("model", help="a fitted detector, joblib.dump(detector, 'model.joblib')")
    score.add_argument("--input", required=True, help=".npy of shape (n, n_features); memory-mapped")
    score.add_argument("--out", required=True, help=".npy for the (n,) float64 scores")
    score.add_argument("--labels", default=None, help="optional .npy for the +1/-1 predict labels")
    score.add_argument("--chunk-batches", type=int, default=16, help="rows per chunk, in scoring batches")
    score.add_argument("--quiet", action="store_true", help="no progress bar")
    train = sub.add_parser("train", help="train a backbone on your images: train {flow,hvae} --data ... --out DIR "
                                         "(or retrain a shipped one from a source checkout: train NAME)")
    train.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    args.argv = argv[1:]
    commands = {"demo": _demo, "benchmark": _benchmark, "report": _report, "score": _score, "train": _train}
    return commands[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
