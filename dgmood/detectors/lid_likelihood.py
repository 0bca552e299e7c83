r"""Likelihood + local intrinsic dimension (Kamkari et al., ICML 2024) on normalizing flows.

An input is in-distribution only if its log-likelihood is high **and** the
flow's manifold around it is not low-dimensional:

.. math:: \log p(x) \ge \psi_L \quad\text{and}\quad \mathrm{LID}(x) \ge \psi_{\mathrm{LID}}.

Everything that turns the two components into one score is fitted on held-out
in-distribution data only. The paper's rule, ``rule="min-cdf"``, maps each component through its
empirical CDF :math:`F_L, F_{\mathrm{LID}}` on the held-out slice and scores
:math:`\min(F_L(\log p(x)), F_{\mathrm{LID}}(\mathrm{LID}(x)))`
(:class:`~dgmood.thresholds.DualThresholdRule`): thresholding it at ``offset_``
is the dual rule above with both thresholds at the same held-out quantile.
``rule="min-cdf"`` is the default; ``rule="joint"`` scores the log of a kernel
density of the held-out (log p, LID) pairs (:class:`~dgmood.thresholds.JointDensityRule`).
LID is :math:`\#\{\sigma_i(J) > \tau\}` of the flow decoder's Jacobian at
:math:`z = f^{-1}(x)` (see :mod:`dgmood.lid.jacobian`), with :math:`\tau`
calibrated so that the mean LID of held-out points matches a model-free local
PCA estimate (the paper's procedure) or a given target.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from ..backbones.flows import dequantize, standard_normal_logpdf
from ..base import BaseDetector
from ..lid.jacobian import (
    calibrate_log_tau,
    count_from_quadrature,
    lid_from_singular_values,
    singular_values,
    slq_quadrature,
    soft_lid_from_singular_values,
)
from ..lid.lpca import lpca_lid
from ..thresholds import DualThresholdRule, JointDensityRule
from .likelihood import flow_builder

__all__ = ["LIDLikelihoodDetector"]


def encode_with_log_prob(module, xb: torch.Tensor, generator: torch.Generator):
    """``(z, log p(x))`` per sample; image flows dequantize with noise shared over the batch."""
    if hasattr(module, "log_prob_dequantized"):
        xb = dequantize(xb, generator, shared=True)
    z, logdet = module.encode_with_logdet(xb)
    return z, standard_normal_logpdf(z) + logdet


class LIDLikelihoodDetector(BaseDetector):
    r"""Dual likelihood + LID detector on a normalizing flow (Kamkari et al., ICML 2024).

    Parameters
    ----------
    backbone : "flow", "pretrained:fmnist-flow" or a flow ``nn.Module``
        (``encode_with_logdet`` and ``decode`` as :class:`~dgmood.backbones.flows.ImageFlow`).
    lid_method : {"exact", "fast"}
        "exact" (default): the full Jacobian (D vector-Jacobian products per point)
        and its singular values; "fast": stochastic Lanczos quadrature with
        ``n_probes`` probes x ``n_steps`` Golub-Kahan steps (``2 n_probes n_steps``
        products per point, independent of D), the hard count smoothed in
        :math:`\log\sigma` by ``smoothing`` (:func:`~dgmood.lid.jacobian.count_from_quadrature`).
        ``benchmarks/lid_speed.py`` measures its time and rank agreement against "exact".
    log_tau : "auto" or float
        Natural log of the singular-value threshold :math:`\tau`, in the space
        the decoder outputs ([0, 1] pixels for images). "auto": bisection so
        that the mean LID of ``n_calibration`` held-out points equals
        ``lid_target``.
    lid_target : float, "pretrained" or None
        Target mean LID for "auto". None: local PCA of the fit data
        (``lpca_neighbors`` neighbours, Fukunaga-Olsen cut at ``lpca_alpha``);
        it needs many fit samples, since k neighbours show at most k - 1
        dimensions (a warning says when fewer than ``lpca_neighbors`` were
        available). "pretrained": the local-PCA target recorded in a shipped
        backbone's metadata (``lid_calibration``, computed by
        ``scripts/lid_target.py`` on its 5000 held-out training images), for
        fits on a few hundred images. On 150 + 150 test images (fast LID) the
        deployable AUROC was 0.760 with local PCA of the 150 fit images
        (target 133, log tau -2.36) and 0.957 with the 2000-image target 215
        (log tau -3.36).
    count : {"hard", "soft"}
        :math:`\#\{\sigma_i > \tau\}` or the tie-free :math:`\sum \sigma_i^2/(\sigma_i^2+\tau^2)`.
    rule : {"min-cdf", "joint"}
        How the two components become one score, both fitted on held-out ID
        data only. "min-cdf" (default):
        :math:`\min(F_L(\log p), F_{\mathrm{LID}}(\mathrm{LID}))`, the paper's dual
        threshold rule (:class:`~dgmood.thresholds.DualThresholdRule`), which
        rejects low values of either. "joint": log of a kernel density of the
        standardized (log p, LID) pairs (:class:`~dgmood.thresholds.JointDensityRule`),
        which flags a pair unusual in any direction. On FashionMNIST the two
        components are strongly anti-correlated (Spearman -0.78 on 300 held-out
        images), so MNIST's high-likelihood, low-LID pairs lie along the ID
        cloud's own tail: there "joint" scored AUROC 0.77 against 0.91 for
        "min-cdf" (300 + 300 test images, fast LID, log tau -2.65).
    n_probes, n_steps : int
        Fast-method budget (defaults 1 and 35: 70 products per point). The
        defaults and ``smoothing`` were chosen on FashionMNIST images only
        (rank correlation and count error against the exact LID), never on
        OOD data: in ``benchmarks/results/lid_speed.json`` (200 FashionMNIST
        test images, log tau -3.44) the FashionMNIST-only Spearman correlation
        with the exact count is 0.955 / 0.983 / 0.986 at 25 / 35 / 45 steps
        (h = 0.5; 0.945 / 0.972 / 0.978 at h = 1), the mean absolute count error
        35.6 / 19.4 / 13.1, at 0.086 / 0.109 / 0.126 of the exact method's
        time (0.15 / 0.19 / 0.22 s per image on 2 CPU cores, batches of 64):
        35 steps take most of the gain of 45 at 87 % of its cost.
    smoothing : float
        Width :math:`h` of the Gaussian in :math:`\log\sigma` that smooths the
        fast hard count (0: the bare step); ignored by "exact" and ``count="soft"``.
    n_calibration : int
        Held-out points used to calibrate :math:`\tau`.
    Other parameters as :class:`~dgmood.LikelihoodDetector`.

    Attributes
    ----------
    log_tau_ : float
        The threshold used (calibrated or given).
    lid_target_ : float or None
        The mean LID the calibration aimed at.
    rule_ : DualThresholdRule or JointDensityRule
        Fitted on the held-out (log p, LID) pairs.
    heldout_components_ : ndarray of shape (n_heldout, 2)
        Those pairs.
    """

    _pretrained_kind = "flow"
    _generator_streams = 2  # dequantization, Lanczos probes

    _parameter_constraints = {
        **BaseDetector._parameter_constraints,
        "lid_method": [StrOptions({"fast", "exact"})],
        "log_tau": [StrOptions({"auto"}), Real],
        "lid_target": [Interval(Real, 0, None, closed="neither"), StrOptions({"pretrained"}), None],
        "count": [StrOptions({"hard", "soft"})],
        "rule": [StrOptions({"joint", "min-cdf"})],
        "n_probes": [Interval(Integral, 1, None, closed="left")],
        "n_steps": [Interval(Integral, 1, None, closed="left")],
        "smoothing": [Interval(Real, 0, None, closed="left")],
        "n_calibration": [Interval(Integral, 1, None, closed="left")],
        "lpca_neighbors": [Interval(Integral, 2, None, closed="left")],
        "lpca_alpha": [Interval(Real, 0, 1, closed="neither")],
    }

    def __init__(
        self,
        backbone="flow",
        *,
        lid_method="exact",
        log_tau="auto",
        lid_target=None,
        count="hard",
        rule="min-cdf",
        n_probes=1,
        n_steps=35,
        smoothing=0.5,
        n_calibration=128,
        lpca_neighbors=1000,
        lpca_alpha=0.001,
        backbone_params=None,
        input_shape=None,
        data_range="auto",
        contamination="auto",
        validation_fraction=0.1,
        device="auto",
        batch_size=64,
        max_epochs=20,
        lr=1e-3,
        memory=None,
        random_state=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.lid_method = lid_method
        self.log_tau = log_tau
        self.lid_target = lid_target
        self.count = count
        self.rule = rule
        self.n_probes = n_probes
        self.n_steps = n_steps
        self.smoothing = smoothing
        self.n_calibration = n_calibration
        self.lpca_neighbors = lpca_neighbors
        self.lpca_alpha = lpca_alpha
        self.backbone_params = backbone_params
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

    def _build_backbone(self, n_features: int):
        return flow_builder(self)

    # ------------------------------------------------------------ spectra
    def _batch_components(self, module, xb, generators):
        """log p and what the LID count needs: singular values (exact) or SLQ nodes/weights (fast).

        The count itself is taken in :meth:`_finish_components`, so the held-out
        spectra computed once in ``fit`` serve both the tau calibration and the ECDFs.
        """
        z, log_prob = encode_with_log_prob(module, xb, generators[0])
        if self.lid_method == "exact":
            return {"log_prob": log_prob, "sv": singular_values(module.decode, z)}
        theta, weight = slq_quadrature(module.decode, z, self.n_probes, self.n_steps, generators[1])
        return {"log_prob": log_prob, "theta": theta, "weight": weight}

    def _count(self, raw: dict, log_tau: float) -> torch.Tensor:
        soft = self.count == "soft"
        if self.lid_method == "exact":
            sv = torch.as_tensor(raw["sv"])
            return soft_lid_from_singular_values(sv, log_tau) if soft else lid_from_singular_values(sv, log_tau)
        theta, weight = torch.as_tensor(raw["theta"]), torch.as_tensor(raw["weight"])
        D = int(np.prod(self.input_shape_))
        return count_from_quadrature(theta, weight, D, log_tau, soft, float(self.smoothing))

    def _finish_components(self, raw, fitting):
        if fitting and self.log_tau == "auto":
            subset = {k: v[self._calibration_subset(len(raw["log_prob"]))] for k, v in raw.items()}
            self.log_tau_ = calibrate_log_tau(lambda t: self._count(subset, t), self.lid_target_)
        return {"log_prob": raw["log_prob"], "lid": self._count(raw, self.log_tau_).numpy()}

    # ------------------------------------------------------------ fitting
    def _calibration_subset(self, n: int) -> np.ndarray:
        """The held-out points (at most ``n_calibration``) whose mean LID calibrates tau."""
        return check_random_state(self.seed_).choice(n, min(self.n_calibration, n), replace=False)

    def _prepare(self, X_train, X_cal):
        if self.log_tau != "auto":
            self.log_tau_, self.lid_target_ = float(self.log_tau), None
            return
        if self.lid_target == "pretrained":
            self.lid_target_ = self._pretrained_lid_target()
            return
        if self.lid_target is not None:
            self.lid_target_ = float(self.lid_target)
            return
        X_fit = np.concatenate([X_train, X_cal])
        k = min(self.lpca_neighbors, len(X_fit) - 1)
        if k < 2:
            raise ValueError("log_tau='auto' without lid_target needs at least 3 fit samples for local PCA.")
        if k < self.lpca_neighbors:
            warnings.warn(
                f"local PCA for the tau target used {k} neighbours (lpca_neighbors={self.lpca_neighbors}, "
                f"but only {len(X_fit)} fit samples): it sees at most {k - 1} dimensions, so the target and "
                "tau may be too low. Fit on more data, or pass lid_target (a number, or 'pretrained' "
                "with a shipped backbone).",
                UserWarning,
                stacklevel=4,  # _prepare <- BaseDetector.fit <- sklearn's fit wrapper <- the caller
            )
        queries = X_cal[self._calibration_subset(len(X_cal))]
        self.lid_target_ = float(
            lpca_lid(queries, X_fit, n_neighbors=k, alpha=self.lpca_alpha, exclude_self=True).mean()
        )

    def _pretrained_lid_target(self) -> float:
        record = self.backbone_metadata_.get("lid_calibration")
        if not record:
            raise ValueError(
                "lid_target='pretrained' needs a shipped backbone ('pretrained:<name>') whose metadata "
                f"records lid_calibration (scripts/lid_target.py); backbone={self.backbone!r} has none. "
                "Pass a number or None (local PCA of the fit data)."
            )
        return float(record["lpca_target"])

    def _calibrate(self, components):
        self.heldout_components_ = np.c_[components["log_prob"], components["lid"]]
        rule = JointDensityRule() if self.rule == "joint" else DualThresholdRule()
        self.rule_ = rule.fit(self.heldout_components_)

    def _heldout_scores(self, components):
        if self.rule == "joint":  # the density was fitted on these points: score each without itself
            return self.rule_.loo_scores_.copy()
        return self._score_from_components(components)

    def _score_from_components(self, components):
        return self.rule_.score(np.c_[components["log_prob"], components["lid"]])
