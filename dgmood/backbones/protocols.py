r"""What a detector may ask of a backbone: small ``typing.Protocol`` classes.

A detector names the protocol its backbone must follow and checks it once, in
``fit`` (:func:`check_backbone`); a module that lacks a member gets a
``ValueError`` naming what is missing. Detectors never probe a module with
``hasattr`` or ``try/except`` afterwards.

Conventions shared by every protocol:

* ``x`` is a batch in the module's own input range (pixels in [0, 1] for
  images, real values for tabular rows), shape ``(n, *input_shape)``;
* every random draw at scoring time (dequantization, binarization,
  importance samples) comes from ``generator``; with ``shared_noise=True`` one
  draw serves the whole batch, so a sample's value never depends on its batch
  mates (common random numbers);
* log-densities and bounds are in nats, one value per sample.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

__all__ = ["DensityModel", "LatentFlow", "SkipBoundModel", "ScoreModel", "check_backbone", "missing_members"]


@runtime_checkable
class DensityModel(Protocol):
    r"""A model with a log-density: :math:`\log p(x)` in nats for the input's own scale.

    For 8-bit images the density is that of the dequantized pixels
    :math:`v = (k + u)/256` (continuous, in [0, 1)), so
    ``bits_per_dim = -log_prob / (D ln 2) + 8`` (:func:`~dgmood.backbones.flows.bits_per_dim`).
    """

    input_shape: tuple[int, ...]

    def log_prob(
        self, x: torch.Tensor, generator: torch.Generator | None = None, shared_noise: bool = False
    ) -> torch.Tensor:
        """Per-sample log-density (n,), nats."""


@runtime_checkable
class LatentFlow(DensityModel, Protocol):
    r"""An invertible model :math:`x = f(z)`, :math:`z \sim \mathcal N(0, I)` (a normalizing flow).

    ``encode_with_log_prob`` returns the latent of the input *as the model
    sees it* (dequantized for images, with noise from ``generator``) and the
    log-density of that same input: its second output equals ``log_prob`` for
    the same arguments, bit for bit, so a detector needing both the latent and
    :math:`\log p` evaluates the model once. ``decode`` is :math:`f`, a pure
    function of its input (usable with ``torch.func``) whose output space is
    where the Jacobian's singular values (and LID's threshold) are measured.

    ``encode_with_local_decoder`` adds to ``(z, log p)`` a function
    ``local_decoder(index)`` returning a decoder for a batch whose row ``r``
    is a latent of point ``index[r]``: it has ``decode``'s Jacobian at that
    point. A flow inverts layer by layer, and in float32 far from the data
    ``decode(z)`` can drift from the encoded input until it overflows; the
    shipped flows evaluate each inverse layer at the encoder's own recorded
    value instead (:meth:`~dgmood.backbones.flow_layers.FlowSequence.inverse_anchored`).
    A model whose ``decode`` is stable may return ``lambda index: self.decode``.
    """

    def encode_with_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, log|det df^{-1}/dx|)``, z flattened to (n, D)."""

    def encode_with_log_prob(
        self, x: torch.Tensor, generator: torch.Generator | None = None, shared_noise: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, log p)`` of the (dequantized) input."""

    def encode_with_local_decoder(
        self, x: torch.Tensor, generator: torch.Generator | None = None, shared_noise: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]]:
        """``(z, log p, local_decoder)``; ``log p`` equals ``encode_with_log_prob``'s, bit for bit."""

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``x = f(z)``."""


@runtime_checkable
class SkipBoundModel(Protocol):
    r"""A hierarchical latent-variable model with skip bounds :math:`\mathcal L^{>k}` (Havtorn et al., 2021).

    ``llr_scores`` returns a dict of tensors: ``"elbo_bound"`` (n,) the
    importance-weighted bound :math:`\mathcal L_S`, ``"skip"`` (n, L + 1) the
    skip bounds :math:`\mathcal L^{>k}` for k = 0..L and ``"llr"`` (n, L + 1)
    :math:`LLR^{>k} = \mathcal L_S - \mathcal L^{>k}`.
    """

    n_latent_layers: int

    def elbo(
        self, x: torch.Tensor, generator: torch.Generator | None = None, shared_noise: bool = False
    ) -> torch.Tensor:
        """Single-sample ELBO (n,)."""

    def iwae(
        self, x: torch.Tensor, n_samples: int, generator: torch.Generator | None = None, shared_noise: bool = False
    ) -> torch.Tensor:
        """Importance-weighted bound with ``n_samples`` samples (n,)."""

    def llr_scores(
        self,
        x: torch.Tensor,
        n_samples: int = 1,
        generator: torch.Generator | None = None,
        shared_noise: bool = False,
        n_skip_samples: int = 1,
        estimator: str = "independent",
    ) -> dict[str, torch.Tensor]:
        """Bound, skip bounds and ratios (see the class docstring)."""


@runtime_checkable
class ScoreModel(DensityModel, Protocol):
    r"""A VP-SDE diffusion model (:class:`~dgmood.backbones.diffusion.ScoreDiffusion`).

    ``sigma_score(y, t)`` is :math:`\sigma(t) s(y, t)` in the model's own space,
    ``to_model_space(x, generator, shared_noise)`` maps an input there
    (images: dequantized and scaled to [-1, 1)), ``sde`` gives
    :math:`\psi(t)`, :math:`\sigma(t)`, :math:`\beta(t)` and ``n_dims`` is D.
    ``log_prob`` (the probability-flow ODE) also takes the keywords ``t_eps``,
    ``solver``, ``steps``, ``trace`` and ``n_probes``.
    """

    n_dims: int
    sde: object

    def sigma_score(self, y: torch.Tensor, t) -> torch.Tensor:
        r""":math:`\sigma(t) s(y, t)`, the shape of ``y``."""

    def to_model_space(
        self, x: torch.Tensor, generator: torch.Generator | None = None, shared_noise: bool = False
    ) -> torch.Tensor:
        """The input as the score network sees it at t = 0."""


def _protocol_members(protocol: type) -> list[str]:
    names: list[str] = []
    for klass in reversed(protocol.__mro__):
        if klass in (object, Protocol) or not getattr(klass, "_is_protocol", False):
            continue
        for name in list(getattr(klass, "__annotations__", {})) + list(vars(klass)):
            if not name.startswith("_") and name not in names:
                names.append(name)
    return names


def missing_members(module: object, protocol: type) -> list[str]:
    """Names that ``protocol`` requires and ``module`` lacks (callables must be callable)."""
    missing = []
    for name in _protocol_members(protocol):
        wanted_callable = callable(getattr(protocol, name, None))
        value = getattr(module, name, None)
        if value is None or (wanted_callable and not callable(value)):
            missing.append(name)
    return missing


def check_backbone(module: object, protocol: type, who: str) -> None:
    """Raise a ``ValueError`` naming what ``module`` lacks to be a ``protocol`` for ``who``.

    Parameters
    ----------
    module : the fitted backbone.
    protocol : one of :class:`DensityModel`, :class:`LatentFlow`, :class:`SkipBoundModel`, :class:`ScoreModel` (or another
        ``typing.Protocol``).
    who : the detector's name, for the message.
    """
    missing = missing_members(module, protocol)
    if missing:
        raise ValueError(
            f"{who} needs a backbone following dgmood.backbones.protocols.{protocol.__name__} "
            f"({', '.join(_protocol_members(protocol))}); {type(module).__name__} lacks: "
            f"{', '.join(missing)}."
        )
