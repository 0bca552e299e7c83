r"""Normalizing flows: a multiscale image flow and a tabular coupling flow.

Both map data to a standard normal latent, :math:`z = f^{-1}(x)`, and give

.. math:: \log p(x) = \log \mathcal N(f^{-1}(x); 0, I) + \log\left|\det \frac{\partial f^{-1}}{\partial x}\right|

in nats per sample (Dinh et al., 2017, RealNVP; Kingma & Dhariwal, 2018, Glow).
``encode`` is :math:`f^{-1}` (data -> latent) and ``decode`` is :math:`f`
(latent -> data); both are pure functions of their input, usable with
``torch.func`` (``jacfwd``/``vmap``) for Jacobian-based LID.

Conventions for images (stated once, used everywhere):

* the module takes pixels ``x`` in [0, 1] on the 8-bit grid (``k / 255``);
* dequantization: :math:`v = (k + u) / 256`, :math:`u \sim U[0, 1)^D`, so
  :math:`v \in [0, 1)^D`; ``log_prob`` is the density of :math:`v` (nats);
* the logit transform :math:`y = \mathrm{logit}(\alpha + (1 - \alpha) v)`,
  :math:`\alpha = 0.05`, is part of the model and its log-determinant counts
  in :math:`\log p`;
* bits/dim :math:`= -\log p(v) / (D \ln 2) + \log_2 256`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .flow_layers import (  # noqa: F401 - the layers stay importable here (and pickles made before the split load)
    ActNorm,
    AffineCoupling,
    FlowSequence,
    InvertibleConv1x1,
    conv_net,
    glow_steps,
    mlp_net,
    squeeze,
    sum_except_batch,
    unsqueeze,
)

_FlowSequence = FlowSequence  # the name fitted models pickled before the split refer to

__all__ = [
    "ActNorm",
    "InvertibleConv1x1",
    "AffineCoupling",
    "ImageFlow",
    "TabularFlow",
    "dequantize",
    "bits_per_dim",
    "standard_normal_logpdf",
    "flow_spec",
]

_LOG_2PI = math.log(2.0 * math.pi)


def standard_normal_logpdf(z: torch.Tensor) -> torch.Tensor:
    r"""Per-sample :math:`\log \mathcal N(z; 0, I) = -\tfrac12 (\|z\|^2 + D \log 2\pi)`."""
    z = z.flatten(1)
    return -0.5 * (z.pow(2).sum(1) + z.shape[1] * _LOG_2PI)


def dequantize(
    x: torch.Tensor, generator: torch.Generator | None = None, shared: bool = False
) -> torch.Tensor:
    r"""Uniform dequantization :math:`v = (\mathrm{round}(255 x) + u) / 256`, :math:`u \sim U[0,1)`.

    ``x`` holds 8-bit pixels scaled to [0, 1]. The noise is drawn from
    ``generator`` (never differentiated). With ``shared=True`` one noise image
    serves every sample of the batch (common random numbers: a sample's value
    then does not depend on the batch it is in).
    """
    k = torch.round(x * 255.0)
    shape = (1, *x.shape[1:]) if shared else x.shape
    u = torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)
    # in float32, 255 + u rounds to 256 for u > 1 - 2**-17: v would be 1 and its logit infinite
    return ((k + u) / 256.0).clamp(max=1.0 - 2.0**-20)


def bits_per_dim(log_prob: torch.Tensor, n_dims: int) -> torch.Tensor:
    r"""Bits per dimension of 8-bit data from the density of dequantized :math:`v \in [0,1)^D`.

    :math:`\mathrm{bpd} = -\log p(v) / (D \ln 2) + \log_2 256`.
    """
    return -log_prob / (n_dims * math.log(2.0)) + 8.0


class ImageFlow(nn.Module):
    r"""Multiscale Glow-style flow for images (Dinh et al., 2017; Kingma & Dhariwal, 2018).

    Data path (``encode``, :math:`f^{-1}`): dequantized pixels
    :math:`v \in [0,1)^{C \times H \times W}` :math:`\to`
    :math:`y = \mathrm{logit}(\alpha + (1-\alpha) v)` :math:`\to` per level:
    squeeze, ``steps_per_level`` x (ActNorm, 1x1 conv, affine coupling), then
    half the channels factored out as latents (all levels but the last).
    Every latent is standard normal. Log-determinant of the logit step:
    :math:`\sum_i \log(1-\alpha) - \log s_i - \log(1 - s_i)`,
    :math:`s = \alpha + (1-\alpha) v`.

    Parameters
    ----------
    input_shape : (C, H, W); H and W divisible by ``2 ** n_levels``.
    n_levels, steps_per_level, hidden : architecture (hidden = coupling-net width).
    alpha : logit squashing constant (0.05 as the reference code).
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        n_levels: int = 2,
        steps_per_level: int = 8,
        hidden: int = 128,
        alpha: float = 0.05,
        seed: int = 0,
    ):
        super().__init__()
        c, h, w = input_shape
        if h % (2**n_levels) or w % (2**n_levels):
            raise ValueError(
                f"ImageFlow needs H and W divisible by 2**n_levels={2**n_levels}, got {input_shape}."
            )
        self.input_shape = tuple(int(s) for s in input_shape)
        self.alpha = float(alpha)
        self.n_dims = int(c * h * w)
        generator = torch.Generator().manual_seed(seed)
        levels, shapes = [], []
        channels, height, width = c, h, w
        for level in range(n_levels):
            channels, height, width = channels * 4, height // 2, width // 2
            levels.append(
                glow_steps(channels, steps_per_level, lambda i, o: conv_net(i, o, hidden), generator)
            )
            if level < n_levels - 1:
                shapes.append((channels // 2, height, width))
                channels //= 2
        shapes.append((channels, height, width))
        self.levels = nn.ModuleList(levels)
        self.latent_shapes = shapes

    def _logit(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.alpha + (1.0 - self.alpha) * v
        y = torch.log(s) - torch.log1p(-s)
        logdet = sum_except_batch(math.log(1.0 - self.alpha) - torch.log(s) - torch.log1p(-s))
        return y, logdet

    def _sigmoid(self, y: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(y) - self.alpha) / (1.0 - self.alpha)

    def _encode(self, v: torch.Tensor, record: bool = False):
        """``(z, logdet, values)``: with ``record``, ``values[i]`` the recorded layer values of level ``i``
        (:meth:`~dgmood.backbones.flow_layers.FlowSequence.forward_with_values`)."""
        v = v.reshape(v.shape[0], *self.input_shape)
        h, total = self._logit(v)
        latents, values = [], []
        for i, level in enumerate(self.levels):
            if record:  # the anchors of the local decoder; plain encoding keeps no activations
                h, logdet, level_values = level.forward_with_values(squeeze(h))
                values.append(level_values)
            else:
                h, logdet = level(squeeze(h))
            total = total + logdet
            if i < len(self.levels) - 1:
                half = h.shape[1] // 2
                latents.append(h[:, :half].flatten(1))
                h = h[:, half:]
        latents.append(h.flatten(1))
        return torch.cat(latents, 1), total, values

    def _decode(self, z: torch.Tensor, inputs=None, index=None) -> torch.Tensor:
        sizes = [math.prod(s) for s in self.latent_shapes]
        parts = list(torch.split(z.reshape(z.shape[0], -1), sizes, 1))
        h = parts[-1].reshape(z.shape[0], *self.latent_shapes[-1])
        for i in reversed(range(len(self.levels))):
            if i < len(self.levels) - 1:
                h = torch.cat([parts[i].reshape(z.shape[0], *self.latent_shapes[i]), h], 1)
            level = self.levels[i]
            h = unsqueeze(level.inverse(h) if inputs is None else level.inverse_anchored(h, inputs[i], index))
        return self._sigmoid(h)

    def encode_with_logdet(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z = f^{-1}(v)`` flattened to (n, D), and ``log|det df^{-1}/dv|`` per sample."""
        z, total, _ = self._encode(v)
        return z, total

    def encode(self, v: torch.Tensor) -> torch.Tensor:
        """Latent ``z = f^{-1}(v)``, shape (n, D), for dequantized pixels ``v``."""
        return self._encode(v)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixels ``v = f(z)`` in [0, 1], shape (n, C, H, W); the inverse logit is inside."""
        return self._decode(z)

    def encode_with_local_decoder(
        self, x: torch.Tensor, generator: torch.Generator | None = None, shared_noise: bool = False
    ):
        """``(z, log p(v), local_decoder)`` of the dequantized pixels of ``x``, in one pass.

        ``local_decoder(index)`` is :math:`f` for a batch whose row ``r`` is a
        latent of the point ``index[r]``, anchored at that point's encoder
        values (:meth:`~dgmood.backbones.flow_layers.FlowSequence.inverse_anchored`):
        the decoder Jacobian at the point, finite even where ``decode(z)``
        drifts from the input and overflows (far out of distribution).
        """
        z, logdet, inputs = self._encode(dequantize(x, generator, shared_noise), record=True)
        return z, standard_normal_logpdf(z) + logdet, lambda index: lambda zz: self._decode(zz, inputs, index)

    def log_prob_dequantized(self, v: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(v) = \log\mathcal N(f^{-1}(v)) + \log|\det \partial f^{-1}/\partial v|` (nats)."""
        z, logdet = self.encode_with_logdet(v)
        return standard_normal_logpdf(z) + logdet

    def encode_with_log_prob(
        self, x: torch.Tensor, generator: torch.Generator | None = None, shared_noise: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, log p(v))`` of the dequantized pixels ``v`` of ``x`` (one dequantization, one pass)."""
        z, logdet = self.encode_with_logdet(dequantize(x, generator, shared_noise))
        return z, standard_normal_logpdf(z) + logdet

    def log_prob(
        self, x: torch.Tensor, generator: torch.Generator | None = None, shared_noise: bool = False
    ) -> torch.Tensor:
        """Log-density (nats) of the dequantized 8-bit pixels ``x`` in [0, 1]; noise from ``generator``.

        ``shared_noise``: one dequantization noise image for the whole batch (see :func:`dequantize`).
        """
        return self.encode_with_log_prob(x, generator, shared_noise)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample training loss: ``-log p(v)`` with fresh dequantization noise."""
        return -self.log_prob(x)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0):
        """Draw ``n`` images (pixels in [0, 1]) by decoding ``temperature * N(0, I)``."""
        device = next(self.parameters()).device
        z = temperature * torch.randn(n, self.n_dims, generator=generator, device=device)
        return self.decode(z).clamp(0.0, 1.0)


class TabularFlow(nn.Module):
    r"""RealNVP-style coupling flow for vectors in :math:`\mathbb R^D` (D >= 2).

    ``n_layers`` x (ActNorm, linear mixing ``W`` (an invertible "1x1 conv"),
    affine coupling with an MLP of width ``hidden``). No dequantization: data
    are continuous; standardize them first (e.g. ``StandardScaler`` in a
    pipeline).
    """

    def __init__(self, n_features: int, n_layers: int = 6, hidden: int = 64, seed: int = 0):
        super().__init__()
        if n_features < 2:
            raise ValueError(
                f"TabularFlow needs at least 2 features to couple, got n_features = {n_features}."
            )
        self.n_dims = int(n_features)
        self.input_shape = (self.n_dims,)
        generator = torch.Generator().manual_seed(seed)
        self.flow = glow_steps(n_features, n_layers, lambda i, o: mlp_net(i, o, hidden), generator)

    def encode_with_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.flow(x.reshape(x.shape[0], -1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow(x.reshape(x.shape[0], -1))[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.flow.inverse(z)

    def encode_with_local_decoder(
        self, x: torch.Tensor, generator: torch.Generator | None = None, shared_noise: bool = False
    ):
        """``(z, log p(x), local_decoder)``: as :meth:`ImageFlow.encode_with_local_decoder`."""
        z, logdet, inputs = self.flow.forward_with_values(x.reshape(x.shape[0], -1))
        return z, standard_normal_logpdf(z) + logdet, lambda index: lambda zz: self.flow.inverse_anchored(
            zz, inputs, index)

    def encode_with_log_prob(
        self, x: torch.Tensor, generator: torch.Generator | None = None, shared_noise: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, log p(x))``; deterministic (``generator``, ``shared_noise`` kept for the protocol)."""
        z, logdet = self.encode_with_logdet(x)
        return z, standard_normal_logpdf(z) + logdet

    def log_prob(
        self, x: torch.Tensor, generator: torch.Generator | None = None, shared_noise: bool = False
    ) -> torch.Tensor:
        r""":math:`\log p(x) = \log\mathcal N(f^{-1}(x)) + \log|\det \partial f^{-1}/\partial x|` (nats).

        Deterministic: ``generator`` and ``shared_noise`` are accepted for a common interface.
        """
        return self.encode_with_log_prob(x)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.log_prob(x)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = next(self.parameters()).device
        return self.decode(torch.randn(n, self.n_dims, generator=generator, device=device))


def flow_spec(input_shape: tuple[int, ...], params: dict | None = None) -> tuple[type, dict]:
    """``(class, kwargs)`` of the flow for ``input_shape``: :class:`ImageFlow` for (C, H, W),
    :class:`TabularFlow` for (D,); ``params`` are architecture arguments (e.g. ``{"hidden": 64}``)."""
    params = dict(params or {})
    if len(input_shape) == 3:
        return ImageFlow, dict(input_shape=tuple(int(s) for s in input_shape), **params)
    if len(input_shape) == 1:
        return TabularFlow, dict(n_features=int(input_shape[0]), **params)
    raise ValueError(f"A flow needs input_shape (C, H, W) or (D,), got {tuple(input_shape)}.")
