r"""Likelihood + local intrinsic dimension (Kamkari et al., ICML 2024) on normalizing flows.

An input is in-distribution only if its log-likelihood is high **and** the
flow's manifold around it is not low-dimensional:

.. math:: \log p(x) \ge \psi_L \quad\text{and}\quad \mathrm{LID}(x) \ge \psi_{\mathrm{LID}}.

Everything that turns the two components into one score is fitted on held-out
in-distribution data only. The paper's rule, ``rule="min-cdf"``, maps each component through its
empirical CDF :math:`F_L, F_{\mathrm{LID}}` on the held-out slice and scores
:math:`\min(F_L(\log p(x)), F_{\mathrm{LID}}(\mathrm{LID}(x)))`
(:class:`~dgmood.rules.DualThresholdRule`): thresholding it at ``offset_``
is the dual rule above with both thresholds at the same held-out quantile.
``rule="min-cdf"`` is the default; ``rule="joint"`` scores the log of a kernel
density of the held-out (log p, LID) pairs (:class:`~dgmood.rules.JointDensityRule`).
LID is :math:`\#\{\sigma_i(J) > \tau\}` of the flow decoder's Jacobian at
:math:`z = f^{-1}(x)` (see :mod:`dgmood.lid.jacobian`), with :math:`\tau`
calibrated so that the mean LID of held-out points matches a model-free local
PCA estimate (the paper's procedure) or a given target.
"""

from __future__ import annotations

import copy
import math
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions

from ..backbones.protocols import DensityModel, LatentFlow, ScoreModel, check_backbone, missing_members
from ..base import BaseDetector
from ..envelope import oracle_dual_auroc
from ..metrics import auroc
from ..rules import DualThresholdRule, JointDensityRule
from ..lid.normal_bundle import NormalBundleLID
from .lid_methods import (AUTO_PROBES, LID_METHODS, METHOD_KINDS, ODE_DEFAULTS, backbone_kind, check_ode_params,
                          lpca_target, resolve_method)

__all__ = ["LIDLikelihoodDetector", "LID_METHODS", "METHOD_KINDS", "ODE_DEFAULTS"]


class LIDLikelihoodDetector(BaseDetector):
    r"""Dual likelihood + LID detector on a normalizing flow or a diffusion model (Kamkari et al., ICML 2024).

    Parameters
    ----------
    backbone : "flow", "diffusion", "pretrained:fmnist-flow", "pretrained:fmnist-diffusion" or an ``nn.Module``
        "flow": a normalizing flow (:class:`~dgmood.backbones.flows.ImageFlow`),
        log p exact, LID from its decoder Jacobian. "diffusion": a VP-SDE
        diffusion model (:class:`~dgmood.backbones.diffusion.ScoreDiffusion`),
        log p by the probability-flow ODE (``ode_params``), LID by FLIPD.
        A module follows the protocol its LID estimator asks for:
        :class:`~dgmood.backbones.protocols.LatentFlow` for "exact" and "fast",
        :class:`~dgmood.backbones.protocols.ScoreModel` for "flipd"; checked in ``fit``.
    lid_method : {"auto", "exact", "fast", "flipd", "normal_bundle"} or LIDEstimator, default="auto"
        "auto": "fast" on a flow, "flipd" on a diffusion model. A method of
        the other backbone kind is a ``ValueError`` naming the valid ones.
        "exact": the full Jacobian (D vector-Jacobian products per point)
        and its singular values; "fast": stochastic Lanczos quadrature with
        ``n_probes`` probes x ``n_steps`` Golub-Kahan steps (``2 n_probes n_steps``
        products per point, independent of D), the hard count smoothed in
        :math:`\log\sigma` by ``smoothing`` (:func:`~dgmood.lid.jacobian.count_from_quadrature`),
        a few times cheaper on the shipped flow at nearly the same ranking
        (``benchmarks/lid_speed.py`` measures both; docs: "Local intrinsic dimension").
        "flipd": :math:`D + \sigma^2(t_0)[\mathrm{tr}\nabla s + \|s\|^2]` at
        :math:`\psi(t_0) x` (:mod:`dgmood.lid.flipd`): one score evaluation and
        ``n_probes`` Jacobian-vector products per point. "normal_bundle":
        the singular values of 4D noised copies' scores at :math:`t_0` = 0.01
        (:mod:`dgmood.lid.normal_bundle`; 4D network evaluations and an SVD
        per point), the ICML paper's estimator.
        Or any :class:`~dgmood.lid.base.LIDEstimator` (names: :data:`LID_METHODS`).
    t0 : "auto" or float in (0, 1), default="auto"
        FLIPD's time, its analogue of :math:`\tau`: the noise scale
        :math:`\sigma(t_0)` below which directions count as off the manifold.
        "auto": of the 16 times of :data:`~dgmood.lid.flipd.T0_GRID` (log grid
        over [1e-3, 0.5]), the one whose mean FLIPD over ``n_calibration``
        held-out points is closest to ``lid_target`` (recorded as ``t0_``).
        "pretrained": the time ``scripts/lid_target.py`` calibrated so on a
        shipped diffusion's held-out images (``flipd_t0`` in its
        ``lid_calibration``), which skips the grid: a fit several times
        cheaper. For "normal_bundle": its noise time ("auto": 0.01). Ignored by the flow methods.
    ode_params : dict or None, default=None
        Settings of a diffusion backbone's probability-flow ODE likelihood that
        replace :data:`ODE_DEFAULTS` (``t_eps`` 0.01, ``solver`` "heun",
        ``steps`` 8, ``trace`` "hutchinson", ``n_probes`` 1): about
        ``2 steps n_probes`` network JVPs per point (Heun). "rk45" is the
        accurate solver but shares its step control across a batch (scores then
        depend on batch mates within its tolerance). Ignored by flows.
    log_tau : "auto", float or None
        Natural log of the singular-value threshold :math:`\tau`, in the space
        the decoder outputs ([0, 1] pixels for images); for "normal_bundle",
        of the threshold below which a singular value of the stacked scores
        counts as tangent (scale-free). "auto": bisection so
        that the mean LID of ``n_calibration`` held-out points equals
        ``lid_target``. None ("normal_bundle" only): the largest gap of the
        log singular values (:func:`~dgmood.lid.normal_bundle.gap_lid`).
        FLIPD ignores it (``t0`` is its scale).
    lid_target : float, "auto", "pretrained" or None, default="auto"
        Target mean LID for ``log_tau="auto"``. "auto": "pretrained" for a
        shipped backbone that records a target, else None. None: local PCA of the fit data
        (``lpca_neighbors`` neighbours, Fukunaga-Olsen cut at ``lpca_alpha``);
        it needs many fit samples, since k neighbours show at most k - 1
        dimensions (a warning says when fewer than ``lpca_neighbors`` were
        available). "pretrained": the local-PCA target recorded in a shipped
        backbone's metadata (``lid_calibration``, computed by
        ``scripts/lid_target.py`` on its 5000 held-out training images), for
        fits on a few hundred images, where local PCA would see too few
        neighbours and aim too low.
    count : {"hard", "soft"}
        :math:`\#\{\sigma_i > \tau\}` or the tie-free :math:`\sum \sigma_i^2/(\sigma_i^2+\tau^2)`.
    rule : {"min-cdf", "joint"}
        How the two components become one score, both fitted on held-out ID
        data only. "min-cdf" (default):
        :math:`\min(F_L(\log p), F_{\mathrm{LID}}(\mathrm{LID}))`, the paper's dual
        threshold rule (:class:`~dgmood.rules.DualThresholdRule`), which
        rejects low values of either. "joint": log of a kernel density of the
        standardized (log p, LID) pairs (:class:`~dgmood.rules.JointDensityRule`),
        which flags a pair unusual in any direction. Where the two components
        are strongly anti-correlated (FashionMNIST), OOD pairs with high
        likelihood and low LID lie along the ID cloud's own tail, and "joint"
        ranks them worse than "min-cdf".
    n_probes : "auto" or int, default="auto"
        Probes per point: 1 for "fast" (2 n_probes n_steps products), 8 for
        "flipd" (Hutchinson probes of the trace, shared by every point) when "auto".
    n_steps : int, default=35
        Fast-method budget: 2 n_probes n_steps products per point. More steps
        resolve the spectrum near tau better at a linear cost; the defaults
        and ``smoothing`` were chosen on in-distribution images only (rank
        agreement with the exact count, ``benchmarks/lid_speed.py``), never on
        OOD data.
    smoothing : float
        Width :math:`h` of the Gaussian in :math:`\log\sigma` that smooths the
        fast hard count (0: the bare step); ignored by "exact" and ``count="soft"``.
    n_calibration : int
        Held-out points used to calibrate :math:`\tau`.
    batch_size : int, default=64
        Training batch size and the fixed shape of every scoring batch (fewer
        rows are padded). The fast estimate traces the decoder once per batch,
        so large batches amortize the trace; scoring a single row still costs
        a whole batch.
    Other parameters as :class:`~dgmood.LikelihoodDetector`.

    Attributes
    ----------
    log_tau_ : float
        The threshold used (calibrated or given); for FLIPD, :math:`\log t_0`.
    lid_method_ : str or LIDEstimator
        The method used ("auto" resolved).
    t0_ : float
        FLIPD's time (FLIPD only).
    lid_target_ : float or None
        The mean LID the calibration aimed at.
    rule_ : DualThresholdRule or JointDensityRule
        Fitted on the held-out (log p, LID) pairs.
    heldout_components_ : ndarray of shape (n_heldout, 2)
        Those pairs.
    """

    _backbone_names = ("flow", "diffusion")
    _pretrained_kinds = frozenset({"flow", "diffusion"})

    _parameter_constraints = {
        **BaseDetector._parameter_constraints,
        "lid_method": [StrOptions({"auto", *LID_METHODS}), HasMethods(["raw", "count", "calibrate"])],
        "t0": [StrOptions({"auto", "pretrained"}), Interval(Real, 0, 1, closed="neither")],
        "ode_params": [dict, None],
        "log_tau": [StrOptions({"auto"}), Real, None],
        "lid_target": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto", "pretrained"}), None],
        "count": [StrOptions({"hard", "soft"})],
        "rule": [StrOptions({"joint", "min-cdf"})],
        "n_probes": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
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
        lid_method="auto",
        log_tau="auto",
        lid_target="auto",
        count="hard",
        rule="min-cdf",
        t0="auto",
        ode_params=None,
        n_probes="auto",
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
        max_epochs="auto",
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
        self.t0 = t0
        self.ode_params = ode_params
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

    # ------------------------------------------------------------ estimator
    def _resolved_method(self):
        return resolve_method(self.lid_method, self.backbone)

    def _n_probes(self, method: str) -> int:
        return AUTO_PROBES[method] if self.n_probes == "auto" else int(self.n_probes)

    def _check_settings(self) -> None:
        """A method of the other backbone kind, or an unknown ODE setting, fails before training."""
        method, kind = self._resolved_method(), backbone_kind(self.backbone)
        if isinstance(method, str) and kind is not None and METHOD_KINDS[method] != kind:
            valid = ["auto"] + [m for m, k in METHOD_KINDS.items() if k == kind]
            raise ValueError(
                f"lid_method={method!r} needs a {METHOD_KINDS[method]} backbone, but backbone={self.backbone!r} "
                f"is a {kind}; valid lid_method values for it: {valid} (or an LIDEstimator)."
            )
        if self.log_tau is None and not (method == "normal_bundle" or isinstance(method, NormalBundleLID)):
            raise ValueError(f"log_tau=None (the largest spectral gap) is for lid_method='normal_bundle', "
                             f"not {method!r}; pass 'auto' or a number.")
        check_ode_params(self.ode_params)

    def _lid_estimator(self):
        """A fresh estimator: a user's instance is deep-copied, since fitting sets its times (FLIPD)."""
        method = self.lid_method_
        return LID_METHODS[method](self) if isinstance(method, str) else copy.deepcopy(method)

    def _batch_components(self, module, xb, generators, n_valid):
        """log p and the LID estimator's raw quantities (counted later, for any tau).

        The held-out raw quantities computed once in ``fit`` serve both the tau
        calibration and the rule; an estimator that works point by point sees
        only the ``n_valid`` real rows. While FLIPD's time is calibrated
        (``_lid_only``), the diffusion's likelihood is not computed.
        """
        estimator = self.lid_estimator_
        z = local_decoder = None
        if LatentFlow in getattr(estimator.protocol, "__mro__", ()):
            z, log_prob, local_decoder = module.encode_with_local_decoder(
                xb, generator=generators[0], shared_noise=True)
        elif getattr(self, "_lid_only", False):
            log_prob = None
        elif self.ode_params_ is not None:
            log_prob = module.log_prob(xb, generator=generators[0], shared_noise=True, **self.ode_params_)
        else:
            log_prob = module.log_prob(xb, generator=generators[0], shared_noise=True)
        rows = slice(0, n_valid) if estimator.per_point else slice(None)
        raw = estimator.raw(module, xb[rows], generators[1:], z=None if z is None else z[rows],
                            local_decoder=local_decoder)
        parts = {f"lid_raw_{k}": v for k, v in raw.items()}
        return parts if log_prob is None else {"log_prob": log_prob, **parts}

    def _n_generators(self):
        """One stream for dequantization, then ``n_generators`` for the LID estimator (probes)."""
        return 1 + int(self.lid_estimator_.n_generators)

    @staticmethod
    def _estimator_raw(raw: dict) -> dict:
        return {k[len("lid_raw_"):]: v for k, v in raw.items() if k.startswith("lid_raw_")}

    def _fit_raw(self, raw):
        """Calibrate tau on (at most ``n_calibration``) held-out points: an explicit fit-time step
        (FLIPD's t0 was calibrated in ``_prepare``, before the held-out points were scored)."""
        if self.log_tau == "auto" and not self._on_grid():
            subset = self._calibration_subset(len(raw["log_prob"]))
            est_raw = {k: v[subset] for k, v in self._estimator_raw(raw).items()}
            self.log_tau_ = float(self.lid_estimator_.calibrate(est_raw, self.lid_target_))

    def _finish_components(self, raw):
        lid = np.asarray(self.lid_estimator_.count(self._estimator_raw(raw), self.log_tau_), dtype=np.float64)
        self._check_finite_lid(lid)
        return {"log_prob": raw["log_prob"], "lid": lid}

    @staticmethod
    def _check_finite_lid(lid: np.ndarray) -> None:
        """A clear error, not a NaN score, where the estimator could not measure LID."""
        bad = np.flatnonzero(~np.isfinite(lid))
        if bad.size:
            raise ValueError(
                f"LID is undefined for {bad.size} input(s) (rows {bad[:10].tolist()}"
                f"{' ...' if bad.size > 10 else ''}): the LID estimator could not measure them (the backbone's "
                "decoder Jacobian is not finite in float32 there: a flow that contracts an input so strongly, "
                "e.g. coupling scales of 1e-30, has inverse derivatives beyond float32's range). These inputs "
                "are far out of "
                "distribution; score them with LikelihoodDetector, or drop them."
            )

    # ------------------------------------------------------------ fitting
    def _calibration_subset(self, n: int) -> np.ndarray:
        """The held-out points (at most ``n_calibration``) whose mean LID calibrates tau."""
        return check_random_state(self.seed_).choice(n, min(self.n_calibration, n), replace=False)

    def _on_grid(self) -> bool:
        return bool(getattr(self.lid_estimator_, "calibrates_on_grid", False))

    def _prepare(self, X_train, X_cal):
        self.lid_method_ = self._resolved_method()
        self.lid_estimator_ = self._lid_estimator()
        protocol = self.lid_estimator_.protocol or DensityModel
        check_backbone(self.backbone_, protocol, f"{type(self).__name__}(lid_method={self.lid_method_!r})")
        diffusion = not missing_members(self.backbone_, ScoreModel)
        self.ode_params_ = {**ODE_DEFAULTS, **(self.ode_params or {})} if diffusion else None
        if self._on_grid():
            if self.t0 != "auto":
                self.lid_target_ = None
                self.t0_ = self._pretrained_t0() if self.t0 == "pretrained" else float(self.t0)
                self.log_tau_ = math.log(self.t0_)
                self.lid_estimator_.t0s = (self.t0_,)
                return
            self.lid_target_ = self._lid_target(X_train, X_cal)
            self._calibrate_t0(X_cal)
            return
        if self.log_tau != "auto":
            self.log_tau_ = None if self.log_tau is None else float(self.log_tau)
            self.lid_target_ = None
            return
        self.lid_target_ = self._lid_target(X_train, X_cal)

    def _calibrate_t0(self, X_cal):
        """FLIPD on :data:`~dgmood.lid.flipd.T0_GRID` for ``n_calibration`` held-out points; keep the
        time whose mean is closest to the target, and score at that time alone from then on."""
        self._lid_only = True
        try:
            raw = self._estimator_raw(self._raw_components(X_cal[self._calibration_subset(len(X_cal))]))
        finally:
            self._lid_only = False
        log_t0 = float(self.lid_estimator_.calibrate(raw, self.lid_target_))
        grid = np.asarray(self.lid_estimator_.t0s)
        self.t0_ = float(grid[np.argmin(np.abs(np.log(grid) - log_t0))])  # the grid's value, exactly
        self.log_tau_ = math.log(self.t0_)
        self.t0_curve_ = np.c_[np.exp(raw["log_t0"][0]), raw["flipd"].mean(0)]
        closest = float(self.t0_curve_[np.argmin(np.abs(self.t0_curve_[:, 0] - self.t0_)), 1])
        if abs(closest - self.lid_target_) > 0.1 * self.lid_target_:
            warnings.warn(
                f"No t0 of the grid brings the mean FLIPD ({closest:.1f} at t0 = {self.t0_:.3g}) within 10 % of "
                f"the LID target {self.lid_target_:.1f}; t0_curve_ holds the grid's means. Pass t0 or "
                "lid_target.", UserWarning, stacklevel=5)  # <- _prepare <- fit <- sklearn's wrapper <- caller
        self.lid_estimator_.t0s = (self.t0_,)

    def _pretrained_t0(self) -> float:
        record = self.backbone_metadata_.get("lid_calibration") or {}
        if "flipd_t0" not in record:
            raise ValueError(
                "t0='pretrained' needs a shipped diffusion ('pretrained:<name>') whose metadata records "
                f"lid_calibration['flipd_t0'] (scripts/lid_target.py); backbone="
                f"{self.backbone if isinstance(self.backbone, str) else type(self.backbone).__name__!r} has none. "
                "Pass t0='auto' (calibrate on the fit data) or a number in (0, 1).")
        return float(record["flipd_t0"])

    def _lid_target(self, X_train, X_cal) -> float:
        """The mean LID to calibrate at: a number, the shipped backbone's record, or local PCA of the fit data."""
        if self.lid_target == "pretrained" or (
                self.lid_target == "auto" and self.backbone_metadata_.get("lid_calibration")):
            return self._pretrained_lid_target()
        if self.lid_target not in (None, "auto"):
            return float(self.lid_target)
        queries = X_cal[self._calibration_subset(len(X_cal))]
        return lpca_target(np.concatenate([X_train, X_cal]), queries, self.lpca_neighbors, self.lpca_alpha)

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

    def benchmark_fields(self, components_id, components_ood):
        """AUROC of each component alone, the oracle envelope (METHODS.md 4), every rule's
        AUROC (each fitted on this detector's held-out pairs), tau and the LID settings."""
        pairs_id = np.c_[components_id["log_prob"], components_id["lid"]]
        pairs_ood = np.c_[components_ood["log_prob"], components_ood["lid"]]
        rules = {}
        for name, rule in (("min-cdf", DualThresholdRule()), ("joint", JointDensityRule())):
            rule.fit(self.heldout_components_)
            rules[name] = auroc(rule.score(pairs_id), rule.score(pairs_ood))
        out = {
            "likelihood_auroc": auroc(components_id["log_prob"], components_ood["log_prob"]),
            "lid_auroc": auroc(components_id["lid"], components_ood["lid"]),
            "oracle_auroc": oracle_dual_auroc(pairs_id, pairs_ood),
            "log_tau": None if self.log_tau_ is None else float(self.log_tau_),
            "lid_target": self.lid_target_,
            "lid_method": self.lid_method_ if isinstance(self.lid_method_, str) else repr(self.lid_method_),
            "rule": self.rule,
        }
        if self.lid_method_ == "fast":
            out.update(n_probes=self._n_probes("fast"), n_steps=self.n_steps, smoothing=self.smoothing)
        if self.lid_method_ == "flipd":
            out.update(t0=self.t0_, t0_auto=self.t0 == "auto", n_probes=self._n_probes("flipd"))
        if self.ode_params_ is not None:
            out["ode"] = dict(self.ode_params_)
        out["rule_aurocs"] = rules
        out["mean_lid_id"] = float(np.mean(components_id["lid"]))
        out["mean_lid_ood"] = float(np.mean(components_ood["lid"]))
        return out
