"""Train a shipped backbone of ``dgmood.pretrained.REGISTRY`` and write its weights + metadata.

Usage (what produced the shipped weights is recorded in each weights' JSON)::

    python scripts/train_pretrained.py fmnist-flow --out dgmood/weights --time-budget 420
    python scripts/train_pretrained.py fmnist-flow-background --out dgmood/weights --max-epochs 3 --mutation-rate 0.3
    python scripts/train_pretrained.py fmnist-hvae --out dgmood/weights --time-budget 2700 --free-bits-hold
    python scripts/train_pretrained.py fmnist-diffusion --out dgmood/weights --time-budget 3000 \
        --samples-png docs/_static/fmnist-diffusion-samples.png

Tiny local smoke run: ``--n-train 512 --max-epochs 1 --eval-n 64 --iwae-samples 4``.
Writes ``<out>/<name>.pt`` (CPU state_dict) and ``<out>/<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dgmood.backbones.schedules import hvae_schedules  # noqa: E402
from dgmood.backbones.training import resolve_device, train_module  # noqa: E402
from dgmood.datasets import load_fashion_mnist, load_mnist  # noqa: E402
from dgmood.pretrained import REGISTRY, build_module, sha256  # noqa: E402


def _batches(X: np.ndarray, batch_size: int, device, shape):
    for i in range(0, len(X), batch_size):
        yield torch.as_tensor(np.array(X[i : i + batch_size]), dtype=torch.float32, device=device).reshape(-1, *shape) / 255.0


def _flow_schedules(lr):
    # linear warm-up over the first 2 % of training, then cosine decay to 0 at the end
    return {"lr": lambda p: lr * min(1.0, p / 0.02) * 0.5 * (1.0 + math.cos(math.pi * p))}


def _rescaled(fn, factor: float):
    return lambda p: fn(min(1.0, p * factor))


def _hvae_schedules(max_epochs: int, schedule_epochs: int | None, hold: bool = False):
    """KL warm-up and free bits of ``hvae_schedules`` over the whole run, or, with
    ``schedule_epochs=N``, over a nominal N-epoch run of which this one is the start
    (hvae-oodd: N = 1000, beta reaching 1 at epoch 200, free bits gone by 400)."""
    schedules = hvae_schedules(2.0, hold=hold)
    if schedule_epochs:
        factor = max_epochs / schedule_epochs
        schedules = {k: _rescaled(fn, factor) for k, fn in schedules.items()}
    return schedules


@torch.no_grad()
def _flow_log_prob(module, X, device, shape, batch_size=500) -> torch.Tensor:
    """log p of each image of ``X`` (dequantization noise seeded 0), float64 on the CPU."""
    g = torch.Generator(device=device).manual_seed(0)
    return torch.cat([module.log_prob(xb, generator=g).double().cpu() for xb in _batches(X, batch_size, device, shape)])


def evaluate_flow(module, X_id, X_ood, device, shape):
    from dgmood.backbones.flows import bits_per_dim
    from sklearn.metrics import roc_auc_score

    out = {}
    lps = {}
    for name, X in (("fashion_mnist_test", X_id), ("mnist_test", X_ood)):
        lp = _flow_log_prob(module, X, device, shape)
        lps[name] = lp.numpy()
        out[f"{name}_bits_per_dim"] = float(bits_per_dim(lp, module.n_dims).mean())
        out[f"{name}_n"] = int(len(X))
    y = np.r_[np.zeros(len(X_id)), np.ones(len(X_ood))]
    out["likelihood_auroc_mnist_positive"] = float(roc_auc_score(y, -np.r_[lps["fashion_mnist_test"], lps["mnist_test"]]))
    return out


def evaluate_diffusion(module, X_id, X_ood, device, shape, n_bpd=500, batch_size=100):
    """Test bits/dim by RK45 from t_eps = 1e-5 (one Hutchinson probe, as score_sde) on ``n_bpd`` FashionMNIST images,
    and on every evaluation image at the detector's ODE defaults: mean bits/dim, likelihood AUROC and
    mean FLIPD at a few t0 (the LID scale calibration picks from)."""
    from dgmood.backbones.flows import bits_per_dim
    from dgmood.backbones.diffusion import ODE_DEFAULTS
    from dgmood.lid.flipd import flipd_curve
    from dgmood.backbones.diffusion import rademacher
    from sklearn.metrics import roc_auc_score

    t0s = (0.01, 0.05, 0.1, 0.2)
    out = {"ode_defaults": dict(ODE_DEFAULTS), "flipd_t0s": list(t0s)}
    lps = {}
    for name, X in (("fashion_mnist_test", X_id), ("mnist_test", X_ood)):
        g = torch.Generator(device=device).manual_seed(0)
        if name == "fashion_mnist_test":  # RK45 from 1e-5 is stiff, on MNIST far more: the test set's only
            with torch.no_grad():
                lp = torch.cat([module.log_prob(xb, g, solver="rk45", t_eps=1e-5, n_probes=1).double().cpu()
                                for xb in _batches(X[:n_bpd], batch_size, device, shape)])
            out[f"{name}_bits_per_dim_rk45_teps1e-5"] = float(bits_per_dim(lp, module.n_dims).mean())
            out[f"{name}_bits_per_dim_rk45_n"] = int(len(lp))
            print(f"{name}: rk45 bits/dim {out[f'{name}_bits_per_dim_rk45_teps1e-5']:.3f} on {len(lp)} images",
                  flush=True)
        lp, lid = [], []
        for xb in _batches(X, batch_size, device, shape):
            with torch.no_grad():
                lp.append(module.log_prob(xb, g, shared_noise=True, **ODE_DEFAULTS).double().cpu())
            y0 = module.to_model_space(xb, g, shared_noise=True)
            probes = rademacher(8, y0.shape[1:], g, y0.device, y0.dtype)
            lid.append(flipd_curve(module, y0, t0s, probes).cpu())  # flipd builds no graph
        lps[name] = torch.cat(lp).numpy()
        out[f"{name}_bits_per_dim"] = float(bits_per_dim(torch.cat(lp), module.n_dims).mean())
        out[f"{name}_mean_flipd"] = [round(float(v), 2) for v in torch.cat(lid).mean(0)]
        out[f"{name}_n"] = int(len(X))
    y = np.r_[np.zeros(len(X_id)), np.ones(len(X_ood))]
    out["likelihood_auroc_mnist_positive"] = float(roc_auc_score(y, -np.r_[lps["fashion_mnist_test"], lps["mnist_test"]]))
    return out


def save_samples(module, path: Path, n: int = 64, steps: int = 500, seed: int = 0) -> None:
    """An 8 x 8 grid of reverse-SDE samples, written as a PNG (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = module.sample(n, steps=steps, generator=torch.Generator(device=next(module.parameters()).device).manual_seed(seed))
    side = int(math.ceil(math.sqrt(n)))
    c, h, w = module.input_shape
    grid = np.ones((side * (h + 1), side * (w + 1)))
    for i, img in enumerate(x.cpu().numpy()[:, 0]):
        r, q = divmod(i, side)
        grid[r * (h + 1): r * (h + 1) + h, q * (w + 1): q * (w + 1) + w] = img
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, grid, cmap="gray", vmin=0, vmax=1)


@torch.no_grad()
def evaluate_hvae(module, X_id, X_ood, device, shape, iwae_samples, batch_size=250):
    from dgmood.backbones.hvae import binarize
    from sklearn.metrics import roc_auc_score

    out = {}
    llrs = {}
    for name, X in (("fashion_mnist_test", X_id), ("mnist_test", X_ood)):
        g = torch.Generator(device=device).manual_seed(0)
        elbo, iw, llr = [], [], []
        for xb in _batches(X, batch_size, device, shape):
            xb = binarize(xb, generator=g)
            elbo.append(module.elbo(xb, generator=g).double().cpu())
            iw.append(module.iwae(xb, iwae_samples, generator=g).double().cpu())
            llr.append(module.llr_scores(xb, n_samples=16, generator=g, n_skip_samples=8)["llr"].double().cpu())
        out[f"{name}_elbo"] = float(torch.cat(elbo).mean())
        out[f"{name}_iwae{iwae_samples}"] = float(torch.cat(iw).mean())
        out[f"{name}_n"] = int(len(X))
        llrs[name] = torch.cat(llr).numpy()
    y = np.r_[np.zeros(len(X_id)), np.ones(len(X_ood))]
    for k in range(llrs["mnist_test"].shape[1]):
        s = np.r_[llrs["fashion_mnist_test"][:, k], llrs["mnist_test"][:, k]]
        out[f"llr_k{k}_auroc_S16_m8"] = float(roc_auc_score(y, s))  # m = 8 skip draws, the detector default
    return out


def _parse_set(item: str) -> tuple[str, object]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(REGISTRY))
    p.add_argument("--out", default="dgmood/weights")
    p.add_argument("--device", default="auto")
    p.add_argument("--time-budget", type=float, default=None, help="seconds of training")
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--n-train", type=int, default=None, help="first N training images (smoke runs)")
    p.add_argument("--eval-n", type=int, default=2000, help="test images of each set for evaluation")
    p.add_argument("--bpd-n", type=int, default=500,
                   help="diffusion: test images of each set for the RK45 bits/dim (t_eps = 1e-5)")
    p.add_argument("--eval-only", action="store_true",
                   help="skip training: evaluate <out>/<name>.pt and update the metrics in <out>/<name>.json")
    p.add_argument("--iwae-samples", type=int, default=250)
    p.add_argument("--heldout", type=int, default=5000, help="training images never shown to the backbone")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--verbose", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--schedule-epochs", type=int, default=None,
                   help="HVAE: KL warm-up / free bits of a nominal run of this many epochs (default: this run)")
    p.add_argument("--free-bits-hold", action="store_true",
                   help="HVAE: free bits constant for the whole run (no decay)")
    p.add_argument("--samples-png", default=None, help="diffusion: write a grid of 64 samples here")
    p.add_argument("--mutation-rate", type=float, default=None,
                   help="train on images with this share of pixels mutated (Ren et al.'s background model; "
                        "default: the registry entry's, if any)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="architecture override, e.g. --set inference=top_down (a JSON value or a string)")
    args = p.parse_args(argv)

    spec = REGISTRY[args.name]
    if args.eval_only:
        return _evaluate_only(args, spec)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    X_all, _ = load_fashion_mnist("train")
    # Hold out HELDOUT training images the backbone never sees: detectors calibrate on them.
    perm = np.random.RandomState(args.seed).permutation(len(X_all))
    heldout = np.sort(perm[: args.heldout])
    train_idx = np.sort(perm[args.heldout :])
    if args.n_train:
        train_idx = train_idx[: args.n_train]
    X = X_all[train_idx]
    train = dict(spec.train)
    if args.max_epochs:
        train["max_epochs"] = args.max_epochs
    overrides = dict(_parse_set(item) for item in args.set)
    registered_rate = train.pop("mutation_rate", None)
    rate = args.mutation_rate if args.mutation_rate is not None else registered_rate
    if rate is not None and not 0.0 < rate < 1.0:
        raise SystemExit(f"--mutation-rate must lie in (0, 1), got {rate}")
    torch.manual_seed(args.seed)
    module = build_module(args.name, **overrides)
    n_params = sum(p.numel() for p in module.parameters())
    if rate is not None:
        from dgmood.backbones.mutation import MutatedInput

        module = MutatedInput(module, rate)  # mutates in training mode only; unwrapped below
    print(f"{args.name}: {n_params} parameters, {len(X)} training images, device {device}", flush=True)
    t0 = time.time()
    module, history = train_module(
        module,
        X.astype(np.float32) / 255.0,
        input_shape=spec.input_shape,
        max_epochs=train["max_epochs"],
        lr=train["lr"],
        batch_size=train["batch_size"],
        device=device,
        validation_fraction=0.1,
        patience=None,
        checkpoint_dir=args.checkpoint_dir,
        time_budget=args.time_budget,
        schedules=(_hvae_schedules(train["max_epochs"], args.schedule_epochs, args.free_bits_hold)
                   if spec.kind == "hvae"
                   else _flow_schedules(train["lr"])),
        ema_decay=train.get("ema_decay"),
        verbose=args.verbose,
        random_state=args.seed,
    )
    train_s = time.time() - t0
    if rate is not None:
        module = module.module
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{args.name}.pt"
    # weights first: an evaluation failure must not lose the training
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, weights)
    meta = {
        "name": args.name,
        "sha256": sha256(weights),
        "architecture": {k: list(v) if isinstance(v, tuple) else v for k, v in {**spec.kwargs, **overrides}.items()},
        "n_parameters": n_params,
        "command": "python scripts/train_pretrained.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "epochs": len(history),
        "train_seconds": round(train_s, 1),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "train_images": int(len(X)),
        "validation_fraction": 0.1,
        "heldout_train_indices": heldout.tolist(),
        "hyperparameters": train,
        **({"mutation_rate": rate} if rate is not None else {}),
        "history": [
            {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in row.items()
             if k in ("epoch", "train_loss", "valid_loss", "dur")}
            for row in history
        ],
    }
    meta_path = out / f"{args.name}.json"
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    print(f"trained {len(history)} epochs in {train_s:.0f} s", flush=True)
    _evaluate(args, spec, module, device, meta, meta_path, rate)
    print(f"wrote {weights} ({weights.stat().st_size / 1e6:.1f} MB)", flush=True)


def _evaluate_only(args, spec) -> None:
    """Evaluate weights already written to ``--out`` (e.g. after a run whose evaluation was stopped)."""
    out = Path(args.out)
    weights, meta_path = out / f"{args.name}.pt", out / f"{args.name}.json"
    meta = json.loads(meta_path.read_text())
    if meta.get("sha256") != sha256(weights):
        raise SystemExit(f"{weights} does not match the checksum in {meta_path}")
    device = resolve_device(args.device)
    module = build_module(args.name, **{k: tuple(v) if isinstance(v, list) else v
                                        for k, v in meta["architecture"].items()})
    module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    module = module.to(device).eval()
    meta["eval_command"] = "python scripts/train_pretrained.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    _evaluate(args, spec, module, device, meta, meta_path, meta.get("mutation_rate"))


def _evaluate(args, spec, module, device, meta, meta_path, rate) -> None:
    X_id = load_fashion_mnist("test")[0][: args.eval_n]
    X_ood = load_mnist("test")[0][: args.eval_n]
    t1 = time.time()
    if spec.kind == "flow":
        metrics = evaluate_flow(module, X_id, X_ood, device, spec.input_shape)
        if rate is not None:  # the background model on what it was trained on: mutated test images
            from dgmood.backbones.flows import bits_per_dim
            from dgmood.backbones.mutation import mutate_pixels

            g = torch.Generator().manual_seed(args.seed)
            X_mut = mutate_pixels(torch.as_tensor(X_id.astype(np.float32)), rate, g).numpy().astype(np.uint8)
            lp = _flow_log_prob(module, X_mut, device, spec.input_shape)
            metrics["fashion_mnist_test_mutated_bits_per_dim"] = float(bits_per_dim(lp, module.n_dims).mean())
    elif spec.kind == "diffusion":
        metrics = evaluate_diffusion(module, X_id, X_ood, device, spec.input_shape, n_bpd=args.bpd_n)
        if args.samples_png:
            save_samples(module, Path(args.samples_png))
            meta["samples_png"] = args.samples_png
    else:
        metrics = evaluate_hvae(module, X_id, X_ood, device, spec.input_shape, args.iwae_samples)
    print(json.dumps(metrics, indent=1), flush=True)
    meta["eval_seconds"] = round(time.time() - t1, 1)
    meta["test_metrics"] = metrics
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
