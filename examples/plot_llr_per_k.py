r"""
Which latents know? The hierarchical-VAE likelihood ratio, one k at a time
==========================================================================

A hierarchical VAE with latents :math:`z_1` (lowest) ... :math:`z_L` (top)
gives each image a lower bound :math:`\mathcal{L}_S(x)` on its log-likelihood,
and, for each k, a bound :math:`\mathcal{L}^{>k}(x)` in which the k lowest
latents are not inferred from :math:`x` but taken from the prior. Havtorn et
al. ("Hierarchical VAEs Know What They Don't Know", ICML 2021) score
out-of-distribution (OOD) inputs by the ratio

.. math:: LLR^{>k}(x) = \mathcal{L}_S(x) - \mathcal{L}^{>k}(x),

large when the image is explained by its low-level latents only: the
upper latents, which carry what the training images are *about*, do not fit.

This example takes the HVAE shipped in dgmood
(``backbone="pretrained:fmnist-hvae"``, trained on FashionMNIST), looks at
:math:`LLR^{>k}` for every k on FashionMNIST (in-distribution) and MNIST (OOD)
test images, and draws a few images from the model. Nothing is trained:
``fit`` only calibrates, on FashionMNIST training images the model never saw.
"""

# %%
# Data
# ----
# 200 random test images of each set, ``uint8`` arrays of shape ``(200, 784)``.

import numpy as np

from dgmood.datasets import load_dataset

X_fmnist, _ = load_dataset("fashion_mnist", "test", n=200, random_state=0)
X_mnist, _ = load_dataset("mnist", "test", n=200, random_state=0)

# %%
# Calibration images the HVAE never saw
# -------------------------------------
# The backbone's metadata lists the FashionMNIST *training* images held out
# from its training; 300 of them calibrate the detector.

from dgmood.pretrained import heldout_images

X_cal = heldout_images("fmnist-hvae", 300, random_state=0)

# %%
# Fit the detector
# ----------------
# ``fit`` loads the shipped weights (checking their SHA-256), scores the
# calibration images and keeps, for each k, the median and a robust scale of
# their :math:`LLR^{>k}`. The default ``k="auto"`` combines the ratios for
# k = 1 .. L-1 (``auto_ks_``) by Fisher's method on those held-out statistics.
# ``n_samples`` is S, the importance samples of :math:`\mathcal{L}_S` (16 by
# default); ``random_state`` seeds every draw, so scores are reproducible.

from dgmood import HVAELikelihoodRatioDetector

det = HVAELikelihoodRatioDetector(backbone="pretrained:fmnist-hvae", random_state=0)
det.fit(X_cal)
L = det.n_latent_layers_
print(
    f"L = {L} latent layers, S = {det.n_samples}, k='auto' combines k = {det.auto_ks_}"
)

# %%
# Score both test sets
# --------------------
# ``score_components`` returns, in nats per image, ``elbo_bound``
# (:math:`\mathcal{L}_S`), ``skip_k`` (:math:`\mathcal{L}^{>k}`) and
# ``llr_k`` (:math:`LLR^{>k}`) for k = 0 .. L, from one pass over the data.

comp_fmnist = det.score_components(X_fmnist)
comp_mnist = det.score_components(X_mnist)
print(sorted(comp_fmnist))

# %%
# The ``k="auto"`` score, higher = more in-distribution, follows from the same
# components: :func:`~dgmood.detectors.hvae_llr.fisher_llr_score` with the
# held-out medians and scales. It is what ``score_samples`` returns.

from dgmood.detectors.hvae_llr import fisher_llr_score


def auto_score(comp):
    ks = det.auto_ks_
    return fisher_llr_score(comp["llr"][:, ks], det.llr_center_[ks], det.llr_scale_[ks])


s_fmnist, s_mnist = auto_score(comp_fmnist), auto_score(comp_mnist)
print(
    "equals score_samples:",
    np.allclose(s_fmnist[:10], det.score_samples(X_fmnist[:10])),
)

# %%
# AUROC, MNIST as the positive class (1 = perfect, 0.5 = chance, below 0.5 the
# OOD images look *more* in-distribution), for the likelihood bound alone, for
# each single k (score :math:`-LLR^{>k}`) and for ``k="auto"``:

from dgmood.metrics import auroc

print(
    f"bound L_S alone : {auroc(comp_fmnist['elbo_bound'], comp_mnist['elbo_bound']):.3f}"
)
for k in range(L + 1):
    print(
        f"-LLR^>{k}        : {auroc(-comp_fmnist['llr'][:, k], -comp_mnist['llr'][:, k]):.3f}"
    )
print(f"k='auto'        : {auroc(s_fmnist, s_mnist):.3f}")

# %%
# :math:`LLR^{>k}` for every k
# ----------------------------
# One panel per k, the AUROC of :math:`-LLR^{>k}` in its title. What to look
# for:
#
# * k = 0: :math:`\mathcal{L}^{>0}` is a single-sample ELBO, so
#   :math:`LLR^{>0}` only compares the bound with S importance samples to one
#   with a single sample (a noisy difference, sometimes negative); it says
#   little about the content of the image.
# * k = 1 .. L-1: the lowest latents come from the prior, the upper ones
#   from the image. FashionMNIST images keep their bound; MNIST digits lose
#   more of it: their ratio is larger.
# * k = L: every latent comes from the prior, :math:`\mathcal{L}^{>L}` scores
#   the image against one fixed decoded template, and the ratio still carries
#   the raw likelihood, paradox included (Nalisnick et al., ICLR 2019): MNIST
#   digits get the *smaller* ratios, an AUROC below 0.5.

from dgmood.plotting import plot_llr_per_k

fig = plot_llr_per_k(
    comp_fmnist, comp_mnist, labels=("FashionMNIST test (ID)", "MNIST test (OOD)")
)

# %%
# What the model has learned
# --------------------------
# Ancestral samples: :math:`z_L \sim N(0, I)`, then each lower latent from its
# conditional prior, and the mean of :math:`p(x | z)` (Bernoulli pixel
# probabilities) of the decoder. ``backbone_`` is the fitted
# :class:`~dgmood.backbones.hvae.HierarchicalVAE`.

import matplotlib.pyplot as plt
import torch

with torch.no_grad():
    images = det.backbone_.sample(16, generator=torch.Generator().manual_seed(0))
fig, axes = plt.subplots(4, 4, figsize=(4.8, 4.8))
for ax, image in zip(axes.ravel(), images[:, 0].numpy()):
    ax.imshow(image, cmap="gray_r", vmin=0, vmax=1)
    ax.axis("off")
fig.suptitle("16 samples of the shipped fmnist-hvae")
fig.tight_layout()

# %%
# What next
# ---------
# ``python benchmarks/hvae_samples.py`` measures how S trades speed for the
# bound and for each AUROC on 2000 + 2000 test images; ``dgmood benchmark
# --detector hvae-llr`` gives the detector's full metrics. See :ref:`paradox`
# for why the likelihood alone fails and what else fixes it.
