"""The LID methods of :class:`~dgmood.LIDLikelihoodDetector`: names, backbone kinds, defaults, targets.

One table per fact, so that a method is added in one place: :data:`LID_METHODS`
builds each estimator from the detector's parameters, :data:`METHOD_KINDS`
says which backbone kind it needs (``lid_method="auto"`` picks by kind).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..backbones.diffusion import ODE_DEFAULTS, ode_settings_problems
from ..backbones.protocols import ScoreModel, missing_members
from ..lid.flipd import T0_GRID, FLIPDLID
from ..lid.jacobian import JacobianLID
from ..lid.normal_bundle import NormalBundleLID
from ..lid.lpca import lpca_lid

__all__ = ["LID_METHODS", "METHOD_KINDS", "ODE_DEFAULTS", "AUTO_PROBES", "backbone_kind", "resolve_method",
           "lpca_target", "check_ode_params"]


def _jacobian(method):
    def make(det):
        return JacobianLID(method, soft=det.count == "soft", n_probes=det._n_probes(method),
                           n_steps=det.n_steps, smoothing=det.smoothing)

    return make


def _flipd(det):
    # the whole grid; fit narrows it to t0_ (fixed, "pretrained" or calibrated on it)
    return FLIPDLID(T0_GRID, trace="hutchinson", n_probes=det._n_probes("flipd"))


def _normal_bundle(det):
    return NormalBundleLID(t0=0.01 if det.t0 in ("auto", "pretrained") else float(det.t0))


#: ``lid_method`` names and the estimator each builds from the detector's parameters.
LID_METHODS = {"exact": _jacobian("exact"), "fast": _jacobian("fast"), "flipd": _flipd,
               "normal_bundle": _normal_bundle}
#: The backbone kind each ``lid_method`` needs.
METHOD_KINDS = {"exact": "flow", "fast": "flow", "flipd": "diffusion", "normal_bundle": "diffusion"}
#: Default Hutchinson probes per point for ``n_probes="auto"``.
AUTO_PROBES = {"exact": 1, "fast": 1, "flipd": 8}


def check_ode_params(ode_params: dict | None) -> None:
    """A ``ValueError`` for an unknown key or a value ``ScoreDiffusion.log_prob`` would refuse (before training)."""
    params = dict(ode_params or {})
    unknown = sorted(set(params) - set(ODE_DEFAULTS))
    if unknown:
        raise ValueError(f"ode_params keys {unknown} are unknown; valid: {sorted(ODE_DEFAULTS)}.")
    problems = ode_settings_problems(**{**ODE_DEFAULTS, **params})
    if problems:
        raise ValueError("ode_params: " + "; ".join(problems) + ".")


def backbone_kind(backbone) -> str | None:
    """"flow" or "diffusion" where ``backbone`` tells (a name, a shipped kind, a module's protocol), else None."""
    from ..pretrained import REGISTRY, as_registered

    backbone = as_registered(backbone)
    if isinstance(backbone, torch.nn.Module):
        return "diffusion" if not missing_members(backbone, ScoreModel) else "flow"
    if isinstance(backbone, str) and backbone.startswith("pretrained:"):
        spec = REGISTRY.get(backbone.split(":", 1)[1])
        return None if spec is None else spec.kind
    return backbone if backbone in METHOD_KINDS.values() else None


def resolve_method(lid_method, backbone):
    """``lid_method`` with "auto" resolved: "flipd" on a diffusion backbone, else "fast"."""
    if not isinstance(lid_method, str) or lid_method != "auto":
        return lid_method
    return "flipd" if backbone_kind(backbone) == "diffusion" else "fast"


def lpca_target(X_fit: np.ndarray, queries: np.ndarray, n_neighbors: int, alpha: float) -> float:
    """Mean local-PCA LID of ``queries`` among ``X_fit`` (the paper's target for tau), with a warning
    where fewer fit samples than ``n_neighbors`` cap what it can see."""
    k = min(n_neighbors, len(X_fit) - 1)
    if k < 2:
        raise ValueError("log_tau='auto' without lid_target needs at least 3 fit samples for local PCA.")
    if k < n_neighbors:
        warnings.warn(
            f"local PCA for the tau target used {k} neighbours (lpca_neighbors={n_neighbors}, "
            f"but only {len(X_fit)} fit samples): it sees at most {k - 1} dimensions, so the target and "
            "tau may be too low. Fit on more data, or pass lid_target (a number, or 'pretrained' "
            "with a shipped backbone).",
            UserWarning,
            stacklevel=6,  # here <- _lid_target <- _prepare <- BaseDetector.fit <- sklearn's fit wrapper <- caller
        )
    return float(lpca_lid(queries, X_fit, n_neighbors=k, alpha=alpha, exclude_self=True).mean())
