"""Background models for Ren's likelihood ratio on the shipped flow: what rate, L2 and capacity do.

Usage (one variant per run; each writes ``<out-dir>/<tag>.json``)::

    python benchmarks/background_sweep.py --init bg --rate 0.3 --wd 0.1 --steps 500 --tag e3_bg_wd01
    python benchmarks/background_sweep.py --summarize     # -> <out-dir>.json (benchmarks/results/background_sweep.json)

A variant starts from ``--init``: the shipped background ("bg"), the shipped
foreground ("fg"), a fresh copy of the architecture ("scratch", optionally
narrower: ``--hidden``, ``--spl`` steps per level) or a state dict, and
trains ``--steps`` Adam steps (``--lr``, coupled L2 ``--wd``, or AdamW with
``--decoupled``; gradients clipped at 100 as ``train_module``) on batches
of ``--bs`` FashionMNIST training images (the shipped held-out 5000
excluded) with ``--rate`` of their pixels mutated
(:func:`dgmood.backbones.mutation.mutate_pixels`). It then scores 1000
held-out training images, 1000 FashionMNIST test and 1000 MNIST test images
with the shipped ``fmnist-flow`` and the variant (dequantization seeded 0).

Per set: both models' bits/dim and the Spearman correlation of each log p,
and of the ratio, with the PNG codelength. ``heldout.rho_ratio_png`` is an
ID-only criterion: the ratio is meant to remove what the likelihood owes to
image complexity, so on in-distribution images it should not track it
(|rho| small). ``auroc_ratio`` (MNIST positive) is reported beside it and is
not used to choose anything.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from dgmood.backbones.flows import bits_per_dim
from dgmood.pretrained import REGISTRY, build_module, heldout_images, load_pretrained
from dgmood.datasets import load_fashion_mnist, load_dataset
from dgmood.backbones.mutation import mutate_pixels
from dgmood.compression import compressed_bits
from dgmood.metrics import auroc

p = argparse.ArgumentParser()
p.add_argument("--init", default="bg", help="bg | fg | scratch | a state dict .pt")
p.add_argument("--rate", type=float, default=0.3)
p.add_argument("--wd", type=float, default=0.0)
p.add_argument("--decoupled", action="store_true")
p.add_argument("--lr", type=float, default=1e-4)
p.add_argument("--steps", type=int, default=0)
p.add_argument("--bs", type=int, default=64)
p.add_argument("--n", type=int, default=1000)
p.add_argument("--tag", default=None)
p.add_argument("--out-dir", default="benchmarks/results/background_sweep")
p.add_argument("--save-weights", action="store_true")
p.add_argument("--summarize", action="store_true",
               help="collect every <out-dir>/*.json into <out-dir>.json and stop")
p.add_argument("--hidden", type=int, default=None)
p.add_argument("--spl", type=int, default=None)
a = p.parse_args()
out = Path(a.out_dir)
if a.summarize:
    rows = []
    for f in sorted(out.glob("*.json")):
        r = json.loads(f.read_text())
        rows.append({**{k: r[k] for k in ("tag", "init", "rate", "wd", "decoupled", "lr", "steps", "bs", "train_s")},
                     "hidden": r.get("hidden"), "steps_per_level": r.get("spl"),
                     "heldout_rho_ratio_png": r["heldout"]["rho_ratio_png"],
                     "heldout_bg_bpd": r["heldout"]["bg_bpd"], "mnist_bg_bpd": r["mnist"]["bg_bpd"],
                     "auroc_ratio": r["auroc_ratio"], "auroc_background": r["auroc_bg"]})
    out.with_suffix(".json").write_text(json.dumps(
        {"about": __doc__.split("\n")[0], "rows": rows}, indent=1) + "\n")
    print(json.dumps(rows, indent=1))
    raise SystemExit(0)
if not a.tag:
    p.error("--tag is required")
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
fg, spec = load_pretrained("fmnist-flow")
if a.init in ("bg", "fg"):
    bg, _ = load_pretrained("fmnist-flow-background" if a.init == "bg" else "fmnist-flow")
elif a.init == "scratch":
    kw = {k: v for k, v in (("hidden", a.hidden), ("steps_per_level", a.spl)) if v is not None}
    bg = build_module("fmnist-flow-background", **kw)
    print("params", sum(p.numel() for p in bg.parameters()))
else:
    bg = build_module("fmnist-flow-background")
    bg.load_state_dict(torch.load(a.init))
shape = tuple(spec.input_shape)
held = set(REGISTRY["fmnist-flow"].metadata()["heldout_train_indices"])
Xtr = load_fashion_mnist("train")[0]
Xtr = Xtr[[i for i in range(len(Xtr)) if i not in held]]
t_train = time.time()
if a.steps:
    bg.train()
    opt = (torch.optim.AdamW if a.decoupled else torch.optim.Adam)(bg.parameters(), lr=a.lr, weight_decay=a.wd)
    rng = np.random.default_rng(0)
    for step in range(a.steps):
        idx = rng.choice(len(Xtr), a.bs, replace=False)
        x = torch.as_tensor(Xtr[idx], dtype=torch.float32).reshape(-1, *shape)
        x = mutate_pixels(x, a.rate) / 255.0
        loss = bg(x).mean()
        opt.zero_grad()
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(bg.parameters(), 100.0)
        opt.step()
        if step % 50 == 0:
            pn = sum(float(p.detach().pow(2).sum()) for p in bg.parameters()) ** 0.5
            print(step, float(loss), "grad", float(gn), "param", pn, round(time.time() - t_train), flush=True)
    if a.save_weights:
        torch.save(bg.state_dict(), out / f"{a.tag}.pt")
t_train = time.time() - t_train
bg.eval()


@torch.no_grad()
def lp(m, X):
    g = torch.Generator().manual_seed(0)
    return torch.cat([m.log_prob(torch.as_tensor(X[i:i+250], dtype=torch.float32).reshape(-1, *shape) / 255.0, generator=g).double()
                      for i in range(0, len(X), 250)]).numpy()


Xh = heldout_images("fmnist-flow", a.n, random_state=0)
Xi, _ = load_dataset("fashion_mnist", "test", n=a.n, random_state=0)
Xo, _ = load_dataset("mnist", "test", n=a.n, random_state=0)
res = {k: v for k, v in vars(a).items()}
res["train_s"] = round(t_train, 1)
D = fg.n_dims
for name, X in (("heldout", Xh), ("fmnist", Xi), ("mnist", Xo)):
    f, b = lp(fg, X), lp(bg, X)
    c = compressed_bits(X, shape, "png")
    res[name] = {"fg_bpd": float(bits_per_dim(f, D).mean()), "bg_bpd": float(bits_per_dim(b, D).mean()),
                 "rho_ratio_png": float(spearmanr(f - b, c).statistic), "rho_fg_png": float(spearmanr(f, c).statistic),
                 "rho_bg_png": float(spearmanr(b, c).statistic)}
    res[name + "_scores"] = (f, b)
fi, bi = res.pop("fmnist_scores")
fo, bo = res.pop("mnist_scores")
res.pop("heldout_scores")
res["auroc_ratio"] = auroc(fi - bi, fo - bo)
res["auroc_fg"], res["auroc_bg"] = auroc(fi, fo), auroc(bi, bo)
print(json.dumps(res, indent=1))
(out / f"{a.tag}.json").write_text(json.dumps(res, indent=1))
