r"""Invertible layers of the flows in :mod:`dgmood.backbones.flows`.

Every layer maps ``x -> (y, log|det dy/dx|)`` per sample in ``forward`` and
has an exact ``inverse``. :class:`FlowSequence` chains them and can record the
input of every layer on the way (``forward_with_values``), so the inverse can
be *anchored* at those recorded values (``inverse_anchored``): the value of
each inverted layer is the encoder's own, and only its derivative comes from
the inverse. That is the decoder Jacobian at the true point, without the
float32 round-off an inverse pass accumulates far from the training data.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ActNorm", "InvertibleConv1x1", "AffineCoupling", "FlowSequence", "glow_steps",
           "conv_net", "mlp_net", "squeeze", "unsqueeze", "anchor", "sum_except_batch"]


def anchor(value: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """``at`` in value, ``value``'s derivative: ``at + (value - value.detach())`` (straight through)."""
    return at + (value - value.detach())


def sum_except_batch(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1)


class ActNorm(nn.Module):
    r"""Per-channel affine map :math:`y = (x + b) \odot e^{s}` (Glow), data-initialised.

    On the first training batch, ``b`` and ``s`` are set so the output has zero
    mean and unit variance per channel. Works on (n, C) and (n, C, H, W).
    """

    #: affine in x: the same Jacobian everywhere (:meth:`FlowSequence.inverse_anchored` pins only nonlinear layers)
    linear = True

    def __init__(self, n_channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(n_channels))
        self.log_scale = nn.Parameter(torch.zeros(n_channels))
        self.register_buffer("initialized", torch.tensor(False))

    def _shape(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, *([1] * (x.dim() - 2)))

    def _pixels(self, x: torch.Tensor) -> int:
        return int(math.prod(x.shape[2:])) if x.dim() > 2 else 1

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims)
        std = x.std(dims).clamp_min(1e-6)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not bool(self.initialized):
            self._initialize(x)
        y = (x + self._shape(self.bias, x)) * torch.exp(self._shape(self.log_scale, x))
        logdet = self.log_scale.sum() * self._pixels(x)
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self._shape(self.log_scale, y)) - self._shape(self.bias, y)


class InvertibleConv1x1(nn.Module):
    r"""Invertible channel mixing :math:`y = W x` (Glow), LU-parametrised.

    :math:`W = P L (U + \mathrm{diag}(\mathrm{sign}(s) e^{\log|s|}))` with ``P`` a
    fixed permutation, ``L`` unit lower-triangular and ``U`` strictly upper
    triangular (Kingma & Dhariwal, 2018, section 3.2), so
    :math:`\log|\det W| = \sum \log|s|` is exact and its gradient never
    involves :math:`W^{-1}` (the plain parametrisation's ``slogdet`` diverges
    when ``W`` drifts towards singular). Log-det of the layer:
    :math:`HW \sum \log|s|`. ``W`` starts as a random orthogonal matrix.
    Works on (n, C) and (n, C, H, W).
    """

    #: linear in x: the same Jacobian everywhere (:meth:`FlowSequence.inverse_anchored` pins only nonlinear layers)
    linear = True

    def __init__(self, n_channels: int, generator: torch.Generator | None = None):
        super().__init__()
        w = torch.linalg.qr(torch.randn(n_channels, n_channels, generator=generator))[0]
        P, L, U = torch.linalg.lu(w)
        s = torch.diagonal(U)
        self.register_buffer("perm", P)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(n_channels, n_channels), -1))
        self.register_buffer("eye", torch.eye(n_channels))
        self.lower = nn.Parameter(L)
        self.upper = nn.Parameter(torch.triu(U, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))

    @property
    def weight(self) -> torch.Tensor:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def _mix(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return x @ w.T
        return torch.einsum("ij,njhw->nihw", w, x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = int(math.prod(x.shape[2:])) if x.dim() > 2 else 1
        logdet = self.log_s.sum() * pixels
        return self._mix(self.weight, x), logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self._mix(torch.linalg.inv(self.weight), y)


class AffineCoupling(nn.Module):
    r"""Affine coupling (RealNVP/Glow) on the channel halves :math:`x = (x_a, x_b)`.

    :math:`(t, r) = \mathrm{net}(x_a)`, :math:`s = \sigma(r + 2)`,
    :math:`y_b = (x_b + t) \odot s`, :math:`y_a = x_a`,
    :math:`\log|\det| = \sum \log s`. The sigmoid scale keeps the map
    well-conditioned (Glow's code). The net's last layer starts at zero, so the
    coupling starts near the identity.
    """

    #: its Jacobian depends on the point (:meth:`FlowSequence.inverse_anchored` pins only nonlinear layers)
    linear = False

    def __init__(self, net: nn.Module, n_channels: int):
        super().__init__()
        self.net = net
        self.split = n_channels // 2

    def _params(self, x_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(x_a)
        shift, raw = h[:, 0::2], h[:, 1::2]
        return shift, torch.sigmoid(raw + 2.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_a, x_b = x[:, : self.split], x[:, self.split :]
        shift, scale = self._params(x_a)
        y_b = (x_b + shift) * scale
        return torch.cat([x_a, y_b], 1), sum_except_batch(torch.log(scale))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y_a, y_b = y[:, : self.split], y[:, self.split :]
        shift, scale = self._params(y_a)
        return torch.cat([y_a, y_b / scale - shift], 1)


def conv_net(c_in: int, c_out: int, hidden: int) -> nn.Sequential:
    last = nn.Conv2d(hidden, c_out, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(
        nn.Conv2d(c_in, hidden, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden, hidden, 3, padding=1),
        nn.ReLU(),
        last,
    )


def mlp_net(d_in: int, d_out: int, hidden: int) -> nn.Sequential:
    last = nn.Linear(hidden, d_out)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), last
    )


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """(n, C, H, W) -> (n, 4C, H/2, W/2), space to depth."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(n, c * 4, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    x = x.reshape(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(n, c // 4, h * 2, w * 2)


class FlowSequence(nn.Module):
    """A chain of invertible layers, each returning ``(y, logdet)``."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, logdet = layer(x)
            total = total + logdet
        return x, total

    def forward_with_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``(y, logdet, values)``: ``values[l]`` is what layer ``l`` received and ``values[-1]`` is ``y``
        (the anchors of :meth:`inverse_anchored`)."""
        total = x.new_zeros(x.shape[0])
        values = []
        for layer in self.layers:
            values.append(x)
            x, logdet = layer(x)
            total = total + logdet
        values.append(x)
        return x, total, values

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y

    def inverse_anchored(
        self, y: torch.Tensor, values: list[torch.Tensor], index: torch.Tensor | None = None
    ) -> torch.Tensor:
        r"""The inverse, each nonlinear layer evaluated at the encoder's recorded value (rows ``index``;
        None: row ``r`` is point ``r``).

        Before a layer whose Jacobian depends on the point (a coupling), the
        running value is replaced by the encoder's recorded output of that
        layer, ``values[l + 1][index]`` (:func:`anchor`: the value is the
        record's, the derivative the running one's); the output is pinned to
        ``values[0][index]``. So the derivative with respect to ``y`` is the
        product of the layers' inverse Jacobians at the true point: what the
        plain inverse gives where it reproduces the encoder's values, and
        finite far from the data, where a float32 inverse drifts from them
        and can overflow. Linear layers (``ActNorm``, the 1x1 convolution) have
        the same Jacobian everywhere and are not pinned; a layer is taken as
        linear only when its class sets ``linear = True``.
        """
        for i in reversed(range(len(self.layers))):
            layer = self.layers[i]
            if not getattr(layer, "linear", False):  # a layer that does not say it is linear is pinned
                y = anchor(y, values[i + 1] if index is None else values[i + 1][index])
            y = layer.inverse(y)
        return anchor(y, values[0] if index is None else values[0][index])


def glow_steps(n_channels: int, n_steps: int, make_net, generator) -> FlowSequence:
    layers: list[nn.Module] = []
    for _ in range(n_steps):
        layers += [
            ActNorm(n_channels),
            InvertibleConv1x1(n_channels, generator),
            AffineCoupling(make_net(n_channels // 2, 2 * (n_channels - n_channels // 2)), n_channels),
        ]
    return FlowSequence(layers)
