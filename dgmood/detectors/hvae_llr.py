r"""Hierarchical-VAE likelihood ratio :math:`LLR^{>k}` (Havtorn et al., ICML 2021).

Havtorn, Frellsen, Hauberg and Maaløe, "Hierarchical VAEs Know What They
Don't Know" (ICML 2021; reference code hvae-oodd). With latents
:math:`z_1` (lowest) ... :math:`z_L` (top),

.. math:: LLR^{>k}(x) = \mathcal{L}_S(x) - \mathcal{L}^{>k}(x),

:math:`\mathcal{L}_S` the importance-weighted bound with S samples and
:math:`\mathcal{L}^{>k}` the bound with the k lowest latents taken from the
conditional prior means (:meth:`~dgmood.backbones.hvae.HierarchicalVAE.skip_elbo`).
A high ratio means the input is explained by low-level statistics only: OOD.
``score_samples = -LLR^{>k}`` for a fixed k, or, with ``k="auto"``, a Fisher
combination of per-k tail p-values fitted on held-out in-distribution data
(:func:`fisher_llr_score`).
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
from scipy.stats import norm
from sklearn.utils._param_validation import Interval, StrOptions

from ..backbones.hvae_bounds import ESTIMATORS, passes_per_image
from ..backbones.protocols import SkipBoundModel
from ..backbones.schedules import hvae_schedules
from ..base import BaseDetector
from ..metrics import auprc, auroc, fpr_at_tpr
from ..thresholds import robust_location_scale

__all__ = ["HVAELikelihoodRatioDetector", "fisher_llr_score", "robust_location_scale"]

#: Robust z-scores are clipped here so that ``logsf(z)`` stays finite (it is ~ -z^2/2).
_Z_CLIP = 1e100


# ----------------------------------------------------------- k = "auto" rule
def fisher_llr_score(llr: np.ndarray, center: np.ndarray, scale: np.ndarray, two_sided: bool = False) -> np.ndarray:
    r"""Fisher combination of per-k tail p-values of :math:`LLR^{>k}` (higher = more ID).

    Each ratio is standardized by held-out in-distribution statistics (robust
    z-score, see :func:`robust_location_scale`) and mapped to the upper-tail
    p-value of a standard normal; Fisher's method (Fisher 1925) combines them:

    .. math::

        z_k(x) = \frac{LLR^{>k}(x) - c_k}{\sigma_k},\qquad
        p_k(x) = 1 - \Phi(z_k(x)),\qquad
        T(x) = -2 \sum_k \log p_k(x),\qquad s(x) = -T(x) = 2 \sum_k \log p_k(x).

    :math:`\log p_k` is ``scipy.stats.norm.logsf``, exact in log space, so the
    score does not saturate: a point far beyond every held-out ratio still
    scores below one just beyond them (:math:`\log p_k \approx -z_k^2/2`),
    unlike an empirical p-value that bottoms out at :math:`1/(n+1)`.
    :math:`s` is strictly decreasing in every :math:`LLR^{>k}` (``logsf`` is
    decreasing and :math:`\sigma_k > 0`). Under the null (ID data) with
    Gaussian, independent ratios :math:`T \sim \chi^2_{2K}`; neither holds
    exactly, so ``offset_`` is set on held-out scores rather than from
    :math:`\chi^2` quantiles. With ``two_sided`` the p-values are
    :math:`p_k = 2(1 - \Phi(|z_k|))`: a ratio unusually *low* is as
    suspicious as one unusually high (then :math:`s` falls with :math:`|z_k|`).

    Parameters
    ----------
    llr : ndarray of shape (n, K)
        :math:`LLR^{>k}` for the K selected k (nats).
    center, scale : ndarrays of shape (K,)
        Held-out :math:`c_k` and :math:`\sigma_k > 0`.

    Returns
    -------
    ndarray of shape (n,), float64; always finite.
    """
    z = (np.asarray(llr, dtype=np.float64) - center) / scale
    z = np.clip(z, -_Z_CLIP, _Z_CLIP)
    if two_sided:
        return 2.0 * (np.log(2.0) + norm.logsf(np.abs(z))).sum(axis=1)
    return 2.0 * norm.logsf(z).sum(axis=1)


def auto_ks(n_latent_layers: int) -> np.ndarray:
    """The k that ``k="auto"`` combines: 1 .. L-1.

    k = 0 is left out: :math:`LLR^{>0} = \\mathcal{L}_S - \\mathcal{L}^{>0}` is only
    the importance-weighting gain of the bound (how far one posterior sample is
    from S), a measure of posterior mismatch rather than of semantic content.
    k = L is left out: :math:`\\mathcal{L}^{>L} = \\log p(x | z = \\text{prior means})`
    scores ``x`` against one fixed decoded template, so :math:`LLR^{>L}` still
    carries the raw likelihood and its paradox direction (simpler inputs such
    as MNIST under a FashionMNIST model look *more* in-distribution).
    """
    return np.arange(1, int(n_latent_layers), dtype=int)


class HVAELikelihoodRatioDetector(BaseDetector):
    r"""OOD detection by a hierarchical VAE's likelihood ratio :math:`LLR^{>k}` (Havtorn et al., 2021).

    Components per sample (:meth:`score_components`), in nats:
    ``"elbo_bound"`` (n,) :math:`\mathcal{L}_S` (``n_samples`` importance samples),
    ``"skip"`` (n, L + 1) :math:`\mathcal{L}^{>k}` and ``"llr"`` (n, L + 1)
    :math:`LLR^{>k} = \mathcal{L}_S - \mathcal{L}^{>k}`, column k for k = 0 .. L.

    ``score_samples`` (higher = more in-distribution):

    * ``k`` an int: :math:`-LLR^{>k}(x)` (two-sided tail: :math:`-|z_k(x)|`, the robust z-score);
    * ``k="auto"``: :math:`2 \sum_{k=1}^{L-1} \log p_k(x)`, Fisher's
      combination of Gaussian upper-tail p-values of robust z-scores of each
      :math:`LLR^{>k}`, the medians and scales fitted on held-out
      in-distribution data only (:func:`fisher_llr_score`; why k = 0 and k = L
      are left out: :func:`auto_ks`).

    Every draw (binarization of the inputs, importance samples, posterior
    samples) of a row comes from generators seeded by ``random_state`` and a
    hash of the row's bytes (:func:`~dgmood.backbones.hvae.row_generators`), so
    a sample's score does not depend on its batch, and two rows never share a
    draw. (Noise shared by a whole evaluation set correlates every score
    through one draw, so the AUROC moves with the seed: see the docs' HVAE section.)

    Parameters
    ----------
    backbone : "hvae", "pretrained:fmnist-hvae" or an ``nn.Module``
        ``"hvae"`` trains a :class:`~dgmood.backbones.hvae.HierarchicalVAE`
        (conv for ``input_shape`` (C, H, W), dense for tabular rows); a module
        follows :class:`~dgmood.backbones.protocols.SkipBoundModel`
        (``n_latent_layers``, ``elbo``, ``iwae``, ``llr_scores``), checked in ``fit``.
    backbone_params : dict, optional
        Arguments of :class:`~dgmood.backbones.hvae.HierarchicalVAE` (e.g.
        ``{"channels": 16, "latent_dims": (4, 2)}``). ``likelihood`` defaults
        to ``"gaussian"`` for real-valued data (``data_range="real"``, the
        default for tabular floats) and ``"bernoulli"`` otherwise.
    k : "auto" or int in 0 .. L
        Number of lowest latents taken from the prior (see above).
    tail : {"auto", "upper", "both"}, default="auto"
        Which ratios count as OOD. "upper": high :math:`LLR^{>k}`, the
        paper's direction, for images whose low-level statistics the lower
        latents explain too well. "both": also unusually *low* ratios. A
        tabular input far from the data drives the encoder out of its range:
        the posterior's KL terms, which the full bound pays and the skip
        bound partly does not, make :math:`LLR^{>k}` strongly negative, and
        an upper-tail score ranks such inputs as the most in-distribution of
        all. "auto": "both" for real-valued data (``data_range="real"``,
        Gaussian likelihood by default), "upper" for pixels.
    n_samples : int, default=4
        Posterior draws S: importance samples of the bound (and, shared, of the
        skip bounds). With m = S it costs S L + 1 passes; the AUROC per S of the
        shipped model is in ``benchmarks/results/hvae_estimators_*.json``.
    n_skip_samples : "auto" or int, default="auto"
        Draws m in each skip bound :math:`\mathcal{L}^{>k}`, k < L. "auto": all
        S draws with a shared-draw estimator (the bound and the skip bounds then
        average the same draws; one skip draw against an S-draw bound leaves the
        skip bound's noise in the ratio), 8 for "independent". With a
        shared-draw ``estimator`` they are the first m of the bound's S draws
        (m <= S): S + m (L - 1) + 1 passes per image; "independent": m fresh
        draws per k, S + m L + 1 passes. The AUROC per S and m of the shipped
        model: ``benchmarks/results/hvae_estimators_*.json``.
    estimator : {"hybrid", "lme", "independent"}, default="hybrid"
        How the bound and the skip bounds are estimated
        (:func:`dgmood.backbones.hvae_bounds.llr_scores`, formulas there).
        "hybrid": on the same S posterior draws shared by all k, the
        importance-weighted bound :math:`\log \frac1S \sum_s e^{w_0(s)}`
        minus the plain mean of the skip log-weights of the first m draws.
        Both terms are (estimates of) lower bounds of the same kind as the
        paper's: the first the IWAE bound, the second an unbiased estimate of
        the skip ELBO. On a top-down model (the shipped one) the upper latents
        and their KL terms are the same in both passes and cancel, which is
        why shared draws pay; the skip passes also reuse the full pass above k.
        "lme": log-mean-exp on both sides (the reference run's estimator).
        "independent": IWAE over S draws minus m fresh skip draws per k (the
        first shipped estimator). A row's draws come from its own generators
        (see below) and every batch is padded to ``batch_size`` rows, so a
        sample's score does not depend on its batch mates, batch size or order.
    input_shape : tuple, optional
        Shape of one image, e.g. (1, 28, 28); X stays flattened.
    data_range : {"auto", "uint8", "unit", "real"}
        Pixels (uint8 0..255 or floats in [0, 1]) are binarized once,
        :math:`b \sim \mathrm{Bernoulli}(x)` with a seeded draw, for the
        Bernoulli likelihood; real values need ``likelihood="gaussian"``.
    Other parameters as :class:`~dgmood.LikelihoodDetector` (training with
    Adam at ``lr``; KL warm-up and free-bits decay as :func:`hvae_schedules`).

    Attributes
    ----------
    backbone_ : the fitted :class:`~dgmood.backbones.hvae.HierarchicalVAE` (CPU)
        In float64 for tabular rows (small models; scores then do not depend on
        the batch even at float32 round-off), float32 for images.
    n_latent_layers_ : int
        L.
    n_skip_samples_ : int
        m (``n_skip_samples`` resolved).
    llr_center_, llr_scale_ : ndarrays of shape (L + 1,)
        Held-out median and robust scale of :math:`LLR^{>k}`, k = 0 .. L.
    tail_ : {"upper", "both"}
        The tail used (``tail`` resolved).
    auto_ks_ : ndarray of int
        The k combined by ``k="auto"`` (1 .. L-1; empty for an int ``k``).
    offset_, history_, calibration_scores_ : as :class:`~dgmood.LikelihoodDetector`.
    """

    _backbone_names = ("hvae",)
    _pretrained_kinds = frozenset({"hvae"})
    _backbone_protocol = SkipBoundModel
    _generator_streams = 0  # every row seeds its own generators (row_generators) in _batch_components

    _parameter_constraints = {
        **BaseDetector._parameter_constraints,
        "k": [StrOptions({"auto"}), Interval(Integral, 0, None, closed="left")],
        "tail": [StrOptions({"auto", "upper", "both"})],
        "n_samples": [Interval(Integral, 1, None, closed="left")],
        "n_skip_samples": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "estimator": [StrOptions(set(ESTIMATORS))],
    }

    def __init__(
        self,
        backbone="hvae",
        *,
        backbone_params=None,
        k="auto",
        tail="auto",
        n_samples=4,
        n_skip_samples="auto",
        estimator="hybrid",
        input_shape=None,
        data_range="auto",
        contamination="auto",
        validation_fraction=0.1,
        device="auto",
        batch_size=128,
        max_epochs="auto",
        lr=3e-4,
        memory=None,
        random_state=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.backbone_params = backbone_params
        self.k = k
        self.tail = tail
        self.n_samples = n_samples
        self.n_skip_samples = n_skip_samples
        self.estimator = estimator
        self.input_shape = input_shape
        self.data_range = data_range
        self.contamination = contamination
        self.validation_fraction = validation_fraction
        self.device = device
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.lr = lr
        self.memory = memory
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------- backbone
    def _backbone_params(self) -> dict:
        params = dict(self.backbone_params or {})
        params.setdefault("likelihood", "gaussian" if self.data_range_ == "real" else "bernoulli")
        if self.backbone == "hvae":  # a named family trained here (not a shipped, stored or given module)
            self._check_likelihood(params["likelihood"])  # fail before training
            if params.get("latent_dims") is not None:
                self._check_k(len(params["latent_dims"]))
        return params

    def _extra_train_kwargs(self) -> dict:
        """KL warm-up and free bits for a user's module (a named "hvae" brings its own)."""
        if isinstance(self.backbone, torch.nn.Module):
            return {"schedules": hvae_schedules(float(getattr(self.backbone, "free_bits", 2.0)))}
        return {}

    def _check_likelihood(self, likelihood: str) -> None:
        if likelihood == "bernoulli" and self.data_range_ == "real":
            raise ValueError(
                "A Bernoulli HVAE needs inputs in [0, 1] (uint8 pixels or data_range='unit'), but X is "
                "real-valued (data_range='real'); use backbone_params={'likelihood': 'gaussian'} "
                "or rescale X."
            )

    def _check_k(self, n_latent_layers: int) -> None:
        if self.k == "auto":
            if n_latent_layers < 2:
                raise ValueError(
                    f"k='auto' combines LLR^{{>k}} for k = 1 .. L-1 and needs L >= 2 latent layers; the "
                    f"backbone has L = {n_latent_layers}. Pass an int k in 0..{n_latent_layers}."
                )
        elif not 0 <= self.k <= n_latent_layers:
            raise ValueError(
                f"k must be 'auto' or an int in 0..{n_latent_layers} (the backbone's number of latent "
                f"layers L = {n_latent_layers}), got k={self.k}."
            )

    def _check_settings(self) -> None:
        if self.estimator != "independent" and self.n_skip_samples != "auto" and self.n_skip_samples > self.n_samples:
            raise ValueError(
                f"estimator={self.estimator!r} draws the skip bounds from the bound's own n_samples draws: "
                f"n_skip_samples ({self.n_skip_samples}) must not exceed n_samples ({self.n_samples})."
            )

    def _resolve_skip_samples(self) -> int:
        """``n_skip_samples="auto"``: every one of the S draws with a shared-draw estimator, 8 for "independent"."""
        if self.n_skip_samples != "auto":
            return int(self.n_skip_samples)
        return 8 if self.estimator == "independent" else int(self.n_samples)

    def _prepare(self, X_train: np.ndarray, X_cal: np.ndarray) -> None:
        module = self.backbone_
        self.n_skip_samples_ = self._resolve_skip_samples()
        self._check_likelihood(getattr(module, "likelihood", "bernoulli"))
        self.n_latent_layers_ = int(module.n_latent_layers)
        self._check_k(self.n_latent_layers_)
        if len(self.input_shape_) == 1:
            # tabular models are small: score in float64 so that a row's score does not move with
            # the float32 round-off of the batch it is in (sklearn's subset-invariance checks)
            self.backbone_ = module.double()

    # -------------------------------------------------------------- scoring
    def _batch_components(self, module, xb, generators, n_valid):
        from ..backbones.hvae import binarize, row_generators

        param = next(module.parameters(), None)
        if param is not None:
            xb = xb.to(param.dtype)
        # every row draws from generators seeded by random_state and its own bytes: its score does not
        # depend on the batch, and different rows get independent noise (no draw shared by all scores)
        rows = xb.detach().cpu().numpy()
        if getattr(module, "likelihood", "bernoulli") == "bernoulli":
            xb = binarize(xb, row_generators(rows, self.seed_))
        out = module.llr_scores(xb, n_samples=int(self.n_samples), generator=row_generators(rows, self.seed_ + 7919),
                                n_skip_samples=self.n_skip_samples_, estimator=self.estimator)
        return {"elbo_bound": out["elbo_bound"], "skip": out["skip"], "llr": out["llr"]}

    def _calibrate(self, components):
        L = self.n_latent_layers_
        self.llr_center_, self.llr_scale_ = robust_location_scale(np.asarray(components["llr"], dtype=np.float64))
        self.auto_ks_ = auto_ks(L) if self.k == "auto" else np.array([], dtype=int)
        # real-valued rows (a Gaussian likelihood by default): both tails; pixels: the paper's upper tail
        self.tail_ = ("both" if self.data_range_ == "real" else "upper") if self.tail == "auto" else self.tail

    def _score_from_components(self, components):
        llr = np.asarray(components["llr"], dtype=np.float64)
        both = self.tail_ == "both"
        if self.k != "auto":
            k = int(self.k)
            return -np.abs((llr[:, k] - self.llr_center_[k]) / self.llr_scale_[k]) if both else -llr[:, k]
        ks = self.auto_ks_
        return fisher_llr_score(llr[:, ks], self.llr_center_[ks], self.llr_scale_[ks], two_sided=both)

    def benchmark_fields(self, components_id, components_ood):
        """Per-k AUROC / AUPRC / FPR80 of :math:`-LLR^{>k}` and of the detector's own score,
        the AUROC of the bound :math:`\\mathcal L_S` alone, S and m."""
        def row(a, b):
            return {"auroc": auroc(a, b), "auprc": auprc(a, b), "fpr80": fpr_at_tpr(a, b, 0.8)}

        llr_id, llr_ood = np.asarray(components_id["llr"]), np.asarray(components_ood["llr"])
        per_k = {str(k): row(-llr_id[:, k], -llr_ood[:, k]) for k in range(llr_id.shape[1])}
        name = f"auto{list(map(int, self.auto_ks_))}" if self.k == "auto" else f"k={self.k}"
        per_k[name] = row(self.score_from_components(components_id), self.score_from_components(components_ood))
        return {
            "per_k": per_k,
            "likelihood_auroc": auroc(components_id["elbo_bound"], components_ood["elbo_bound"]),
            "n_samples": self.n_samples,
            "n_skip_samples": self.n_skip_samples_,
            "llr_estimator": self.estimator,
            "passes_per_image": passes_per_image(self.estimator, self.n_samples, self.n_skip_samples_,
                                                 self.n_latent_layers_),
        }
