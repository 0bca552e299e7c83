"""Layers of the hierarchical VAE and the builders that assemble them into stages.

Holds the weight-normed linear and convolution layers (Salimans & Kingma 2016),
the residual blocks of a stage (hvae-oodd's ``VaeStage``), the heads and the
dense-to-feature-map projection, and :func:`build_stages` (:func:`build_image_stages`,
:func:`build_dense_stages`), which lay out the inference and generative paths
of :class:`~dgmood.backbones.hvae.HierarchicalVAE` (whose docstring describes
the architecture). No probability computations live here: the bounds are in
:mod:`dgmood.backbones.hvae`.

Modules are plain ``nn.Module`` s with plain parameters, so models pickle; the
builders create the modules in a fixed order, so ``torch.manual_seed`` fixes
the initial weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Stages", "build_dense_stages", "build_image_stages", "build_stages"]


def _norm_except(v: torch.Tensor, dim: int) -> torch.Tensor:
    """L2 norm of ``v`` over every axis but ``dim`` (kept, size 1 elsewhere)."""
    dims = [d for d in range(v.ndim) if d != dim]
    return torch.linalg.vector_norm(v, dim=dims, keepdim=True)


class _WNLinear(nn.Linear):
    """Weight-normed linear layer, ``W = g v / ||v||`` per output (Salimans & Kingma 2016).

    Plain parameters (not ``torch.nn.utils.parametrize``) so the module pickles.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.g = nn.Parameter(_norm_except(self.weight.detach(), 0).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.g * self.weight / _norm_except(self.weight, 0), self.bias)


class _WNConv2d(nn.Conv2d):
    """Weight-normed convolution, normalized per output channel."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.g = nn.Parameter(_norm_except(self.weight.detach(), 0).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.g * self.weight / _norm_except(self.weight, 0), self.bias)


class _WNConvTranspose2d(nn.ConvTranspose2d):
    """Weight-normed transposed convolution (weight ``(in, out, k, k)``: normalized per output)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.g = nn.Parameter(_norm_except(self.weight.detach(), 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.g * self.weight / _norm_except(self.weight, 1)
        return F.conv_transpose2d(x, w, self.bias, self.stride, self.padding, self.output_padding)


def _conv(c_in: int, c_out: int, k: int, stride: int = 1, up: bool = False) -> nn.Module:
    """'Same' convolution; ``stride=2`` halves H, W; ``up=True`` doubles them (transposed)."""
    if up:
        return _WNConvTranspose2d(c_in, c_out, k, 2, padding=(k - 1) // 2, output_padding=1)
    return _WNConv2d(c_in, c_out, k, stride, padding=(k - 1) // 2)


class _ConvBlock(nn.Module):
    """Residual block ``y = conv2(act(conv1(act(x)) + aux_op(act(aux)))) + res(x)``.

    ``resample`` is 0 (same size), -1 (conv2 has stride 2) or +1 (conv2 is a
    transposed stride-2 conv). ``aux`` (the skip connection of hvae-oodd's
    ``VaeStage``) is resampled to the size of ``conv1``'s output.
    """

    def __init__(self, c_in, c_out, k, resample, act, aux_shape=None, hw=None):
        super().__init__()
        self.act, self.resample = act, resample
        self.conv1 = _conv(c_in, c_out, k)
        self.conv2 = _conv(c_out, c_out, k, stride=2 if resample < 0 else 1, up=resample > 0)
        self.res = None if c_in == c_out else _WNConv2d(c_in, c_out, 1)
        self.aux_op = None
        if aux_shape is not None:
            ratio = aux_shape[1] / hw
            if ratio > 1:
                self.aux_op = _conv(aux_shape[0], c_out, 3, stride=int(ratio))
            elif ratio < 1:
                self.aux_op = _conv(aux_shape[0], c_out, 3, up=True)
            elif aux_shape[0] != c_out:
                self.aux_op = _conv(aux_shape[0], c_out, 1)
            else:
                self.aux_op = nn.Identity()

    def forward(self, x: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        y = self.conv1(self.act(x))
        if self.aux_op is not None:
            y = y + self.aux_op(self.act(aux))
        y = self.conv2(self.act(y))
        r = x if self.res is None else self.res(x)
        if self.resample < 0:
            r = F.avg_pool2d(r, 2)
        elif self.resample > 0:
            r = F.interpolate(r, scale_factor=2.0, mode="nearest")
        return y + r


class _DenseBlock(nn.Module):
    """Residual MLP block ``y = W2 act(W1 act(x) + A act(aux)) + res(x)``."""

    def __init__(self, d_in, d_out, act, aux_dim=None):
        super().__init__()
        self.act = act
        self.lin1, self.lin2 = _WNLinear(d_in, d_out), _WNLinear(d_out, d_out)
        self.res = None if d_in == d_out else _WNLinear(d_in, d_out, bias=False)
        self.aux_op = None if aux_dim is None else _WNLinear(aux_dim, d_out)

    def forward(self, x: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        y = self.lin1(self.act(x))
        if self.aux_op is not None:
            y = y + self.aux_op(self.act(aux))
        y = self.lin2(self.act(y))
        return y + (x if self.res is None else self.res(x))


class _Path(nn.Module):
    """A stage's deterministic blocks; every block receives the same ``aux``."""

    def __init__(self, blocks: Sequence[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, aux)
        return x


class _Head(nn.Module):
    """``act`` then a (weight-normed) layer; ``flatten`` for dense outputs of feature maps."""

    def __init__(self, layer: nn.Module, act: nn.Module, flatten: bool = False):
        super().__init__()
        self.layer, self.act, self.flatten = layer, act, flatten

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.act(h)
        return self.layer(h.flatten(1) if self.flatten else h)


class _MergeHead(nn.Module):
    """Posterior head of a top-down model: ``head(block(h, aux=d))``, bottom-up features ``h``
    merged with the top-down features ``d`` of the layer above (LVAE / BIVA style)."""

    def __init__(self, block: nn.Module, head: nn.Module):
        super().__init__()
        self.block, self.head = block, head

    def forward(self, h: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(h, d))


class _Concat(nn.Module):
    """``[h, d]`` along the feature axis: the merge of a dense top-down posterior head."""

    def forward(self, h: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return torch.cat([h, d], 1)


class _Projection(nn.Module):
    """Dense latent -> feature map of shape ``view`` (hvae-oodd's ``AsFeatureMap``)."""

    def __init__(self, d_in: int, view: tuple[int, ...]):
        super().__init__()
        self.lin, self.view = _WNLinear(d_in, math.prod(view)), view

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.lin(z).view(-1, *self.view)


class Stages(NamedTuple):
    """Modules of a hierarchical VAE with L latent layers, bottom (index 0) first.

    ``q_paths[i]`` (:math:`Q_{i+1}`) and ``q_heads[i]`` give the posterior of
    layer i; ``q_proj[i]`` (L - 1 of them, none for top-down inference) maps its sample to the input of
    ``q_paths[i + 1]``. ``p_proj[i]`` then ``p_paths[i]`` (:math:`P_{i+1}`) map
    a sample of layer i to the top-down features; ``p_heads[i]`` (L - 1) give
    the conditional prior of layer i from those of layer i + 1; ``x_head``
    gives the parameters of ``p(x|.)``. ``latent_shapes`` are without the batch axis.
    """

    latent_shapes: list[tuple[int, ...]]
    q_paths: list[nn.Module]
    p_paths: list[nn.Module]
    q_heads: list[nn.Module]
    p_heads: list[nn.Module]
    q_proj: list[nn.Module]
    p_proj: list[nn.Module]
    x_head: nn.Module


def build_image_stages(
    input_shape: Sequence[int],
    channels: int,
    blocks_per_stage: int,
    latent_dims: Sequence[int],
    kernel_sizes: Sequence[int],
    act: nn.Module,
    top_down: bool = False,
) -> Stages:
    """Convolutional stages for ``input_shape = (C, H, W)``, H and W divisible by 4.

    Stage 1 starts with a stride-2 block (``z_1`` spatial at H/2 x W/2), stage 2
    ends with one (H/4), later stages keep H/4 with dense latents; the
    generative stages mirror them with transposed convolutions.

    ``top_down=True``: the inference stages form a deterministic path
    ``h_{i+1} = Q_{i+1}(h_i)`` (no latent sample in it, no ``q_proj``), and
    the posterior head of every layer below the top is a :class:`_MergeHead`,
    a residual block over ``h_i`` with the top-down features ``d_{i+1}`` as
    its auxiliary input.
    """
    c_x, h, w = input_shape
    C, B, L, m = channels, blocks_per_stage, len(latent_dims), latent_dims
    k = [kernel_sizes[min(i, len(kernel_sizes) - 1)] for i in range(L)]
    hw = [h // 2] + [h // 4] * (L - 1)  # height of h_i and of d_{i+1}
    latent_shapes = [(m[0], h // 2, w // 2)] + [(mi,) for mi in m[1:]]
    q_paths, p_paths, q_heads, p_heads, q_proj, p_proj = [], [], [], [], [], []
    for i in range(L):
        c_in = c_x if i == 0 else (C if top_down else (m[0] if i == 1 else C))
        aux = None if (i == 0 or top_down) else (C, hw[i - 1], hw[i - 1])
        # stage 1 downsamples first (cheap), stage 2 last (as the reference), others never
        rs = [-1 if (i == 0 and b == 0) or (i == 1 and b == B - 1) else 0 for b in range(B)]
        hw_conv1 = [h] + [h // 2] * (B - 1) if i == 0 else ([h // 2] * B if i == 1 else [h // 4] * B)
        q_paths.append(_Path([_ConvBlock(c_in if b == 0 else C, C, k[i], rs[b], act, aux, hw_conv1[b])
                              for b in range(B)]))
        z_feat = i == 0
        head = (_Head(_conv(C, 2 * m[0], 3), act) if z_feat else
                _Head(_WNLinear(C * (h // 4) * (w // 4), 2 * m[i]), act, flatten=True))
        if top_down and i < L - 1:  # merge h_i with d_{i+1}, both C x hw[i] x hw[i]
            head = _MergeHead(_ConvBlock(C, C, 3, 0, act, (C, hw[i], hw[i]), hw[i]), head)
        q_heads.append(head)
        # generative stage i mirrors inference stage i
        p_in = m[0] if i == 0 else C
        if i >= 1:
            p_proj.append(_Projection(m[i], (C, h // 4, w // 4)))
        else:
            p_proj.append(nn.Identity())
        p_aux = None if i == L - 1 else (C, hw[i], hw[i])
        rs_p = [-r for r in reversed(rs)]
        hw_conv1 = [h // 2] * B if i == 0 else ([h // 4] + [h // 2] * (B - 1) if i == 1 else [h // 4] * B)
        p_paths.append(_Path([_ConvBlock(p_in if b == 0 else C, C, k[i], rs_p[b], act, p_aux, hw_conv1[b])
                              for b in range(B)]))
        if i < L - 1 and not top_down:
            q_proj.append(nn.Identity() if i == 0 else _Projection(m[i], (C, h // 4, w // 4)))
        if i < L - 1:
            p_heads.append(_Head(_conv(C, 2 * m[0], 3), act) if i == 0 else
                           _Head(_WNLinear(C * (h // 4) * (w // 4), 2 * m[i]), act, flatten=True))
    x_head = _Head(_conv(C, c_x, 3), act)
    return Stages(latent_shapes, q_paths, p_paths, q_heads, p_heads, q_proj, p_proj, x_head)


def build_dense_stages(
    input_shape: Sequence[int],
    channels: int,
    blocks_per_stage: int,
    latent_dims: Sequence[int],
    act: nn.Module,
    linear: bool = False,
    top_down: bool = False,
) -> Stages:
    """Residual-MLP stages for ``input_shape = (D,)``; dense latents.

    ``blocks_per_stage = 0`` leaves only the heads; ``linear=True`` makes them
    plain ``nn.Linear`` (with ``act = nn.Identity()``: every conditional affine).
    ``top_down=True``: deterministic inference path ``h_{i+1} = Q_{i+1}(h_i)``
    and, below the top, posterior heads on the concatenation ``[h_i, d_{i+1}]``.
    """
    (D,), C, B, m = input_shape, channels, blocks_per_stage, latent_dims
    Lin = nn.Linear if linear else _WNLinear
    L = len(m)
    latent_shapes = [(mi,) for mi in m]
    q_paths, p_paths, q_heads, p_heads = [], [], [], []
    q_out = []
    p_out = [C if B else m[i] for i in range(L)]
    for i in range(L):
        d_in = D if i == 0 else (q_out[i - 1] if top_down else m[i - 1])
        aux = None if (i == 0 or B == 0 or top_down) else q_out[i - 1]
        q_paths.append(_Path([_DenseBlock(d_in if b == 0 else C, C, act, aux) for b in range(B)]))
        q_out.append(C if B else d_in)
        if top_down and i < L - 1:
            q_heads.append(_MergeHead(_Concat(), _Head(Lin(q_out[i] + p_out[i + 1], 2 * m[i]), act)))
        else:
            q_heads.append(_Head(Lin(q_out[i], 2 * m[i]), act))
    for i in range(L):
        p_aux = None if (i == L - 1 or B == 0) else p_out[i + 1]
        p_paths.append(_Path([_DenseBlock(m[i] if b == 0 else C, C, act, p_aux) for b in range(B)]))
        if i < L - 1:
            p_heads.append(_Head(Lin(p_out[i + 1], 2 * m[i]), act))
    ident = [nn.Identity() for _ in range(L)]
    x_head = _Head(Lin(p_out[0], D), act)
    return Stages(latent_shapes, q_paths, p_paths, q_heads, p_heads, ident[: L - 1], ident, x_head)


def build_stages(
    input_shape: Sequence[int],
    channels: int,
    blocks_per_stage: int,
    latent_dims: Sequence[int],
    kernel_sizes: Sequence[int],
    act: nn.Module,
    linear: bool = False,
    top_down: bool = False,
) -> Stages:
    """:func:`build_image_stages` for ``(C, H, W)`` inputs, :func:`build_dense_stages` for ``(D,)``."""
    if len(input_shape) == 3:
        return build_image_stages(input_shape, channels, blocks_per_stage, latent_dims, kernel_sizes, act, top_down)
    return build_dense_stages(input_shape, channels, blocks_per_stage, latent_dims, act, linear, top_down)
