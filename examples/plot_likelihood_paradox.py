"""
The likelihood paradox: a flow trained on FashionMNIST prefers MNIST
====================================================================

A normalizing flow trained on FashionMNIST gives MNIST digits, which it has
never seen, a *higher* log-likelihood than FashionMNIST test images
(Nalisnick et al., ICLR 2019). Thresholding the likelihood, the obvious
out-of-distribution (OOD) detector, then fails: the OOD images look *more*
in-distribution than the in-distribution ones.

This example shows the paradox with the flow shipped in dgmood
(``backbone="pretrained:fmnist-flow"``). Nothing is trained: ``fit`` only
sets the detector's threshold, on FashionMNIST training images that the flow
never saw. See :ref:`paradox` for why it happens and what fixes it.
"""

# %%
# Data
# ----
# 1000 random test images of each set, as ``uint8`` arrays of shape
# ``(1000, 784)`` (28 x 28 pixels, flattened).

import numpy as np

from dgmood.datasets import load_dataset

X_fmnist, _ = load_dataset("fashion_mnist", "test", n=1000, random_state=0)
X_mnist, _ = load_dataset("mnist", "test", n=1000, random_state=0)

# %%
# Calibration images the flow never saw
# -------------------------------------
# The flow's metadata lists the FashionMNIST *training* images held out from
# its training. The detector calibrates on some of them, which keeps the test
# images free for evaluation.

from dgmood.pretrained import heldout_images

X_cal = heldout_images("fmnist-flow", 1000, random_state=0)

# %%
# Fit the detector
# ----------------
# ``fit`` loads the shipped weights (checking their SHA-256) and sets
# ``offset_`` from the scores of the held-out share of ``X_cal``
# (``validation_fraction``, 10 %): with ``contamination="auto"``, about 1 % of
# new FashionMNIST images will be flagged. ``random_state`` seeds the
# dequantization noise, so scores are reproducible.

from dgmood import LikelihoodDetector

det = LikelihoodDetector(backbone="pretrained:fmnist-flow", random_state=0)
det.fit(X_cal)
print(f"threshold offset_ = {det.offset_:.1f} nats")

# %%
# Score both test sets
# --------------------
# ``score_components`` returns what the score is made of; for the likelihood
# detector that is ``log_prob``, :math:`\log p(x)` in nats, and
# ``score_samples`` returns the same numbers (higher = more in-distribution).
# A sample's score does not depend on the batch it is scored in.

log_p_fmnist = det.score_components(X_fmnist)["log_prob"]
log_p_mnist = det.score_components(X_mnist)["log_prob"]
print("score_samples == log_prob:", np.allclose(det.score_samples(X_mnist[:10]), log_p_mnist[:10]))

# %%
# In bits per dimension, the usual unit for image likelihoods (lower = more
# likely): :math:`-\log p(x) / (D \ln 2) + 8` for :math:`D = 784` dequantized
# 8-bit pixels. "Flagged" is the share that ``predict`` calls OOD (-1), i.e.
# with a score below ``offset_``.

from dgmood.backbones.flows import bits_per_dim

D = det.backbone_.n_dims
for name, log_p in (("FashionMNIST (ID) ", log_p_fmnist), ("MNIST (OOD)       ", log_p_mnist)):
    bpd = bits_per_dim(log_p, D)
    print(f"{name} median bits/dim {np.median(bpd):.3f}, flagged as OOD: {np.mean(log_p < det.offset_):.1%}")

# %%
# Detection metrics
# -----------------
# :func:`~dgmood.metrics.ood_metrics` treats OOD as the positive class. An
# AUROC of 1 would be a perfect detector, 0.5 chance; *below* 0.5 the OOD set
# gets higher scores than the in-distribution set: the paradox.

from dgmood.metrics import ood_metrics

for metric, value in ood_metrics(log_p_fmnist, log_p_mnist).items():
    print(f"{metric:>9}: {value:.3f}")

# %%
# Histograms
# ----------
# The dashed line is the detector's threshold: everything to its left is
# called OOD. Further right means more likely under the flow; compare where
# the MNIST digits lie with the images the flow was trained to model.

from dgmood.plotting import plot_score_histograms

fig = plot_score_histograms(
    log_p_fmnist,
    log_p_mnist,
    labels=("FashionMNIST test (ID)", "MNIST test (OOD)"),
    xlabel="log p(x) [nats]",
    title="Flow trained on FashionMNIST",
    threshold=det.offset_,
)

# %%
# What next
# ---------
# The fixes: pair the likelihood with the local intrinsic dimension of the
# flow (Kamkari et al., ICML 2024), or compare hierarchical-VAE bounds that
# ignore the lowest latents (Havtorn et al., ICML 2021); see :ref:`paradox`.
# :class:`~dgmood.TypicalityDetector` is a drop-in replacement for
# ``LikelihoodDetector`` here that also flags inputs that are *too* likely.
