r"""Likelihood ratio with a background model (Ren et al., "Likelihood ratios for
out-of-distribution detection", NeurIPS 2019).

A generative model's likelihood of an image is dominated by population-level
"background" statistics (how many pixels are black, how smooth it is) that
say nothing about what the image shows. A second, *background* model of the
same architecture is trained on the training images with a share of their
pixels replaced by random values
(:func:`~dgmood.backbones.mutation.mutate_pixels`): it learns the background
but not the semantics. The score

.. math:: \mathrm{LLR}(x) = \log p_\theta(x) - \log p_{\theta_0}(x)

cancels the background's share. Both models score the *same* dequantized
input :math:`v = (k + u)/256` (one noise draw shared by the two), so the
ratio of two identical models is exactly 0. Higher = more in-distribution.

Defaults are fixed without OOD data: ``mutation_rate=0.3`` is the seed code's
rate (alibi-detect uses 0.2); Ren et al. chose rate and L2 weight by the AUROC
on an OOD validation set (NotMNIST), which a detector of unknown inputs cannot do.
"""

from __future__ import annotations

import copy
import os
from numbers import Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval

from ..backbones.fitting import BACKBONES, fit_backbone, fit_mutated_backbone
from ..backbones.protocols import DensityModel, check_backbone
from ..metrics import auroc
from ..pretrained import REGISTRY, as_registered
from .likelihood import LikelihoodDetector

__all__ = ["LikelihoodRatioDetector"]


class LikelihoodRatioDetector(LikelihoodDetector):
    r"""Ren et al.'s likelihood ratio: ``score_samples(X)`` = :math:`\log p(x) - \log p_{\mathrm{bg}}(x)` (nats).

    Parameters
    ----------
    backbone : "flow", "pretrained:fmnist-flow" or an ``nn.Module``
        The model of the data, as in :class:`~dgmood.LikelihoodDetector`.
    background : "auto", "flow", "pretrained:<name>" or an ``nn.Module``, default="auto"
        The background model. "auto": with a shipped backbone, its shipped
        background (``"pretrained:fmnist-flow"`` -> ``"pretrained:fmnist-flow-background"``);
        otherwise a fresh copy of the backbone's architecture trained on the
        fit data with mutated pixels. "flow": a fresh image or tabular flow
        (``backbone_params``) trained so. A module is trained so unless
        ``max_epochs=0`` (then used as it is). A shipped or stored background
        is used as it is. It must have ``log_prob`` and the backbone's ``input_shape``.
    mutation_rate : float in (0, 1), default=0.3
        Share of the 8-bit pixels the background's training images get
        replaced by a uniformly drawn different value (fresh draws per batch).
    background_weight_decay : float >= 0, default=0.0
        L2 penalty of the background's training (Adam's ``weight_decay``);
        Ren et al. tuned it on OOD data, so the default adds none.
    Other parameters as :class:`~dgmood.LikelihoodDetector`; the background
    trains with the same ``max_epochs``, ``lr``, ``batch_size`` and ``memory``.

    Attributes
    ----------
    background_ : the fitted background module (CPU)
    background_history_ : list of dict (empty when nothing was trained)
    background_source_ : str
        What ``background`` resolved to: "pretrained:<name>", a family name, or the module's class name.
    Others as :class:`~dgmood.LikelihoodDetector`.
    """

    _parameter_constraints = {
        **LikelihoodDetector._parameter_constraints,
        "background": [str, os.PathLike, torch.nn.Module],
        "mutation_rate": [Interval(Real, 0, 1, closed="neither")],
        "background_weight_decay": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(
        self,
        backbone="flow",
        *,
        background="auto",
        mutation_rate=0.3,
        background_weight_decay=0.0,
        backbone_params=None,
        input_shape=None,
        data_range="auto",
        contamination="auto",
        validation_fraction=0.1,
        device="auto",
        batch_size=128,
        max_epochs="auto",
        lr=1e-3,
        memory=None,
        random_state=None,
        verbose=0,
    ):
        super().__init__(backbone, backbone_params=backbone_params, input_shape=input_shape,
                         data_range=data_range, contamination=contamination,
                         validation_fraction=validation_fraction, device=device, batch_size=batch_size,
                         max_epochs=max_epochs, lr=lr, memory=memory, random_state=random_state, verbose=verbose)
        self.background = background
        self.mutation_rate = mutation_rate
        self.background_weight_decay = background_weight_decay

    # ------------------------------------------------------------- fitting
    def _background_choice(self):
        """What ``background`` resolves to: "pretrained:<name>", a family name, or a module to train."""
        background, backbone = as_registered(self.background), as_registered(self.backbone)
        if isinstance(background, str) and background in BACKBONES and not self._trains_backbone():
            raise ValueError(
                f"background={background!r} is trained on the fit data, but this detector trains nothing (a "
                "shipped backbone, or max_epochs=0): pass background= a shipped or stored background "
                "('pretrained:<name>') or a trained module."
            )
        if not (isinstance(background, str) and background == "auto"):
            return background
        if isinstance(backbone, str) and backbone.startswith("pretrained:"):
            name = backbone.split(":", 1)[1]
            paired = f"{name}-background"
            if paired not in REGISTRY:
                shipped = sorted(n for n in REGISTRY if n.endswith("-background"))
                raise ValueError(
                    f"background='auto' with the shipped backbone {backbone!r} uses 'pretrained:{paired}', "
                    f"which does not exist (shipped backgrounds: {shipped}). Pass background= a shipped "
                    "background, a family name ('flow', trained on the fit data) or a module."
                )
            return f"pretrained:{paired}"
        if not self._trains_backbone():
            raise ValueError(
                "background='auto' trains a copy of the backbone on mutated fit data, but this backbone is "
                "used as it is (max_epochs=0): there is nothing to train it on. Pass background= a trained "
                "module (max_epochs=0 uses it as is) or 'pretrained:<name>'."
            )
        return copy.deepcopy(backbone) if isinstance(backbone, torch.nn.Module) else backbone

    def _check_settings(self) -> None:
        self._background_choice()  # an impossible "auto" is refused before any training

    def _fit_backbone(self, X_train):
        super()._fit_backbone(X_train)
        choice = self._background_choice()
        who = f"{type(self).__name__} (background)"
        trains = self._trains_backbone() and not (isinstance(choice, str) and choice.startswith("pretrained:"))
        if trains:
            kwargs = self._train_kwargs()
            kwargs.update(random_state=self.seed_ + 1, weight_decay=float(self.background_weight_decay))
            if isinstance(choice, str) and choice not in BACKBONES:
                raise ValueError(f"{who}: unknown background {choice!r}; valid: 'auto', {sorted(BACKBONES)}, "
                                 "'pretrained:<name>' or an nn.Module.")
            fitted = fit_mutated_backbone(choice, X_train, rate=self.mutation_rate, input_shape=self.input_shape_,
                                          params=self._backbone_params(), train_kwargs=kwargs, memory=self.memory)
        else:
            kwargs = {**self._train_kwargs(), "max_epochs": 0}
            fitted = fit_backbone(choice, X_train, input_shape=self.input_shape_, params=None,
                                  train_kwargs=kwargs, names=(), pretrained_kinds=self._pretrained_kinds,
                                  who=who)
        self.background_, self.background_history_ = fitted.module, fitted.history
        self.background_source_ = choice if isinstance(choice, str) else type(choice).__name__
        check_backbone(self.background_, DensityModel, who)
        shapes = (tuple(getattr(self.backbone_, "input_shape", ())), tuple(self.background_.input_shape))
        if shapes[0] != shapes[1] or shapes[1] != tuple(self.input_shape_):
            raise ValueError(
                f"{type(self).__name__}: the background's input_shape {shapes[1]} differs from the backbone's "
                f"{shapes[0]} (data: {tuple(self.input_shape_)}); both models must score the same inputs."
            )

    # ------------------------------------------------------------- scoring
    def _batch_components(self, module, xb, generators, n_valid):
        g = generators[0]
        state = g.get_state()  # the background sees the very same dequantization noise
        log_prob = module.log_prob(xb, generator=g, shared_noise=True)
        background, _ = self._scoring_module("background_")
        g_bg = torch.Generator(device=xb.device)
        g_bg.set_state(state)
        return {"log_prob": log_prob,
                "log_prob_background": background.log_prob(xb, generator=g_bg, shared_noise=True)}

    def _score_from_components(self, components):
        return components["log_prob"] - components["log_prob_background"]

    def benchmark_fields(self, components_id, components_ood):
        """AUROC of each model's :math:`\\log p` alone, the mutation rate and the background's source."""
        return {
            "likelihood_auroc": auroc(components_id["log_prob"], components_ood["log_prob"]),
            "background_likelihood_auroc": auroc(components_id["log_prob_background"],
                                                 components_ood["log_prob_background"]),
            "mutation_rate": float(self.mutation_rate),
            "background_weight_decay": float(self.background_weight_decay),
            "background": self.background_source_,
            "mean_log_prob_id": float(np.mean(components_id["log_prob"])),
            "mean_log_prob_background_id": float(np.mean(components_id["log_prob_background"])),
        }
