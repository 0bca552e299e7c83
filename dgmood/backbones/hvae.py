"""Hierarchical VAE backbone: the model, its ELBO, importance-weighted bound and skip-ELBOs L^{>k}.

Holds :class:`HierarchicalVAE` (inference and generative passes, training
loss, the bounds and the likelihood-ratio scores of :meth:`~HierarchicalVAE.llr_scores`)
and :func:`binarize`; its layers and their layout are in
``dgmood.backbones.hvae_layers`` (internal), its training schedules in
:mod:`dgmood.backbones.schedules`.

The model and the likelihood-ratio scores follow Havtorn et al., "Hierarchical
VAEs Know What They Don't Know", ICML 2021 (reference code: hvae-oodd, its
``VAE`` model built of ``VaeStage`` s). The importance-weighted bound is Burda
et al., "Importance Weighted Autoencoders", ICLR 2016.

Conventions: every score is in nats per example, shape ``(n,)``; Bernoulli
inputs are already binarized to {0, 1} (use :func:`binarize` once per
evaluation set). Every random draw comes from the ``generator`` argument.
All KL terms of the bounds are single-sample Monte Carlo estimates
``log q(z|.) - log p(z|.)`` at the posterior sample, as in the reference code
(analytic KLs would not combine with importance weighting nor with the skip
bounds); the training loss may use the closed form (``analytic_kl=True``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import hvae_bounds
from .hvae_bounds import _flat_sum
from .hvae_noise import binarize, per_row_noise, row_generators

# the layer classes stay importable here, so that models pickled before the split still load
from .hvae_layers import (_ConvBlock, _DenseBlock, _Head, _Path, _Projection,  # noqa: F401
                          _WNConv2d, _WNConvTranspose2d, _WNLinear, build_stages)

__all__ = ["HierarchicalVAE", "binarize", "row_generators"]

_LOG_2PI = math.log(2.0 * math.pi)
_LN2 = math.log(2.0)


def _log_normal(z: torch.Tensor, mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Elementwise ``log N(z; mu, std^2)``."""
    return -0.5 * ((z - mu) / std) ** 2 - torch.log(std) - 0.5 * _LOG_2PI


class HierarchicalVAE(nn.Module):
    r"""Bottom-up hierarchical VAE (hvae-oodd's ``VAE``) for images or tabular rows.

    Latents :math:`z_1` (lowest) ... :math:`z_L` (top), Gaussian with
    ``std = softplus_{ln 2}(s) + min_std`` (``softplus_{ln 2}(0) = 1``).

    *Inference* (bottom-up, through the latent samples as hvae-oodd's
    ``VaeStage``): :math:`h_1 = Q_1(x)`, :math:`h_{i+1} = Q_{i+1}(z_i; \text{aux}=h_i)`,
    :math:`q(z_i | h_i)`; so :math:`q(z|x) = q(z_1|x) \prod_{i>1} q(z_i | z_{i-1}, h_{i-1})`.
    The bottom-up path passes through the samples :math:`z_i`, so "propagate
    the posterior means of :math:`z_{\le k}`" (``use_mode`` of the reference) is
    a real choice; :meth:`skip_elbo` makes it.

    *Generation* (top-down): :math:`p(z_L) = N(0, I)`,
    :math:`d_L = P_L(z_L)`, :math:`p(z_i | d_{i+1})`,
    :math:`d_i = P_i(z_i; \text{aux}=d_{i+1})`, :math:`p(x | d_1)`.

    Image variant (``len(input_shape) == 3``, H and W divisible by 4): ``Q_1``
    starts with a stride-2 residual block (kernel ``kernel_sizes[0]``), so its
    remaining blocks and ``z_1`` live at H/2 x W/2 (14 x 14 for 28 x 28: the
    reference's two full-resolution 5 x 5 blocks are the costly part, moved to
    half resolution for CPU speed); ``Q_2`` ends with a stride-2 block (H/4);
    ``Q_{i>2}`` keep H/4. ``z_1`` is spatial (``latent_dims[0]`` channels),
    ``z_{i>1}`` dense. ``P_i`` mirror ``Q_i`` with transposed convolutions.
    Defaults: ``latent_dims=(8, 16, 8)``: z1 8x14x14, z2 16, z3 8 as the reference;
    2.39 M parameters at 64 channels; weight-normed convolutions, SiLU.
    Dense variant (``len(input_shape) == 1``): residual MLP blocks of width
    ``channels``, dense latents, default ``latent_dims=(8, 4, 2)``.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)`` for images or ``(D,)`` for tabular rows.
    channels : int
        Width of every deterministic block (conv channels or MLP units).
    latent_dims : sequence of int, optional
        Units (channels for the spatial ``z_1``) per latent layer, bottom first.
    free_bits : float
        Free nats per group in the training loss (mutable by callbacks).
    beta : float
        KL weight in the training loss (mutable by callbacks).
    likelihood : {"bernoulli", "gaussian"}
        ``p(x|z)``: Bernoulli on {0, 1} inputs (logits from the decoder) or
        Gaussian with a learned log-std per input element (``self.log_std``).
    blocks_per_stage : int
        Residual blocks per stage (3, as the reference). 0 (dense only) removes them.
    kernel_sizes : tuple of int
        Conv kernels of stage 1, 2 and 3+ (reference 5, 3, 3).
    linear : bool
        Dense only: no blocks and no activations, so every conditional is
        affine in the layer above (``q(z_1|x) = N(Ax + a, .)``,
        ``p(x|z_1) = N(W z_1 + b, diag(sigma^2))``). With one latent layer the
        model is exactly linear-Gaussian, :math:`p(x) = N(b, WW^T + diag(\sigma^2))`,
        a closed-form oracle for tests.
    min_std : float
        Floor added to every latent standard deviation.
    inference : {"bottom_up", "top_down"}
        Bottom-up (above; the seed's released code) or top-down, as LVAE /
        BIVA and the reference run: a deterministic path
        :math:`h_1 = Q_1(x)`, :math:`h_{i+1} = Q_{i+1}(h_i)`, then
        :math:`q(z_L | h_L)` and, going down with the generative path,
        :math:`q(z_i | h_i, d_{i+1})`. So the posterior of the upper latents
        does not depend on the lower samples: a skip bound drawn with the same
        noise as the full bound has the same :math:`z_{>k}` and the same KL
        terms above k, which cancel exactly in :math:`LLR^{>k}`; and the
        deterministic path is computed once per input, not once per draw.
    free_bits_per : {"element", "layer"}
        Where the free-bits threshold applies in the training loss (see :meth:`forward`).
    analytic_kl : bool
        Train on the closed-form Gaussian KL (see :meth:`forward`).
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        channels: int = 64,
        latent_dims: Sequence[int] | None = None,
        free_bits: float = 2.0,
        beta: float = 1.0,
        likelihood: str = "bernoulli",
        blocks_per_stage: int = 3,
        kernel_sizes: Sequence[int] = (5, 3, 3),
        linear: bool = False,
        min_std: float = 1e-3,
        inference: str = "bottom_up",
        free_bits_per: str = "element",
        analytic_kl: bool = False,
    ):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.image = len(self.input_shape) == 3
        if len(self.input_shape) not in (1, 3):
            raise ValueError(f"input_shape must be (C, H, W) or (D,), got {input_shape!r}.")
        if inference not in ("bottom_up", "top_down"):
            raise ValueError(f"inference must be 'bottom_up' or 'top_down', got {inference!r}.")
        if free_bits_per not in ("element", "layer"):
            raise ValueError(f"free_bits_per must be 'element' or 'layer', got {free_bits_per!r}.")
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}.")
        if latent_dims is None:
            latent_dims = (8, 16, 8) if self.image else (8, 4, 2)
        self.latent_dims = tuple(int(m) for m in latent_dims)
        if not self.latent_dims or min(self.latent_dims) < 1:
            raise ValueError(f"latent_dims must be a non-empty sequence of positive ints, got {latent_dims!r}.")
        if linear and self.image:
            raise ValueError("linear=True exists for the dense variant only (input_shape=(D,)).")
        if self.image and (self.input_shape[1] % 4 or self.input_shape[2] % 4):
            raise ValueError(f"image height and width must be divisible by 4, got {self.input_shape[1:]}.")
        if blocks_per_stage < (1 if self.image else 0):
            raise ValueError(f"blocks_per_stage must be >= {1 if self.image else 0}, got {blocks_per_stage}.")
        self.free_bits, self.beta = float(free_bits), float(beta)
        self.likelihood, self.linear, self.min_std = likelihood, bool(linear), float(min_std)
        self.channels, self.blocks_per_stage = int(channels), 0 if linear else int(blocks_per_stage)
        self.kernel_sizes = tuple(kernel_sizes)
        self.inference, self.free_bits_per, self.analytic_kl = inference, free_bits_per, bool(analytic_kl)
        act = nn.Identity() if linear else nn.SiLU()
        stages = build_stages(self.input_shape, self.channels, self.blocks_per_stage, self.latent_dims,
                              self.kernel_sizes, act, self.linear, self.top_down)
        self._latent_shapes = stages.latent_shapes
        # registration order fixes the state_dict keys of the shipped weights
        self.q_paths, self.p_paths = nn.ModuleList(stages.q_paths), nn.ModuleList(stages.p_paths)
        self.q_heads, self.p_heads = nn.ModuleList(stages.q_heads), nn.ModuleList(stages.p_heads)
        self.q_proj, self.p_proj = nn.ModuleList(stages.q_proj), nn.ModuleList(stages.p_proj)
        self.x_head = stages.x_head
        if likelihood == "gaussian":
            self.log_std = nn.Parameter(torch.zeros(self.input_shape))

    # ------------------------------------------------------------- internals
    @property
    def top_down(self) -> bool:
        """Whether inference runs top-down (``inference="top_down"``)."""
        # models pickled before the option existed inferred bottom-up
        return getattr(self, "inference", "bottom_up") == "top_down"

    @property
    def n_latent_layers(self) -> int:
        """Number L of stochastic layers."""
        return len(self.latent_dims)

    @property
    def latent_shapes(self) -> list[tuple[int, ...]]:
        """Shape of each latent layer without the batch axis, bottom first."""
        return list(self._latent_shapes)

    def _gaussian(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, s = raw.chunk(2, dim=1)
        return mu, F.softplus(s, beta=_LN2) + self.min_std

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(x) or tuple(x.shape[1:]) != self.input_shape:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"expected a tensor of shape (n, {', '.join(map(str, self.input_shape))}), got {shape}.")
        return x

    def _log_px(self, d1: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = self.x_head(d1)
        if self.likelihood == "bernoulli":
            return -_flat_sum(F.binary_cross_entropy_with_logits(out, x, reduction="none"))
        return _flat_sum(_log_normal(x, out, self.log_std.exp()))

    def _x_mean(self, d1: torch.Tensor) -> torch.Tensor:
        out = self.x_head(d1)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    def features(self, x: torch.Tensor):
        """The deterministic bottom-up features, computed once per input and reused by every draw.

        Bottom-up inference: ``Q_1(x)`` (the higher paths see latent samples).
        Top-down inference: the whole path ``[h_1, ..., h_L]``, ``h_{i+1} = Q_{i+1}(h_i)``.
        """
        if not self.top_down:
            return self.q_paths[0](x)
        hs, h = [], x
        for path in self.q_paths:
            h = path(h)
            hs.append(h)
        return hs

    def draw_noise(self, n: int, generator=None, device=None, dtype=None) -> list[torch.Tensor]:
        """Standard normal noise for the L posterior samples, layer 1 first, each ``(n, *shape)``.

        ``generator`` a list (one per row, :func:`row_generators`): row i from its own generator.
        """
        if isinstance(generator, (list, tuple)):
            return per_row_noise(torch.randn, self._latent_shapes, generator, device, dtype)
        kw = dict(generator=generator, device=device, dtype=dtype)
        return [torch.randn((n, *s), **kw) for s in self._latent_shapes]

    def _terms(
        self,
        x: torch.Tensor,
        k: int = 0,
        use_prior_mean: bool = True,
        generator: torch.Generator | None = None,
        h1=None,
        shared_noise: bool = False,
        eps: list[torch.Tensor] | None = None,
        analytic_kl: bool = False,
        branch_at: list[int] | None = None,
    ):
        """One pass: ``log p(x|z)`` and, per layer, elementwise ``log q - log p`` (None if skipped).

        Noise for all L posterior samples is drawn first (layer 1 first; or
        taken from ``eps``), then, only when ``use_prior_mean`` is False, prior
        noise for layers k ... 1. ``shared_noise``: every draw has batch size 1
        and is broadcast over the batch. ``h1``: :meth:`features` of ``x``, if
        already computed. ``analytic_kl``: the elementwise Gaussian KL
        :math:`KL(q \\| p)` in place of the single-sample ``log q - log p``
        (training only: it does not combine with importance weights).
        ``branch_at`` (top-down, k = 0 only): for each j in it, also decode
        from the features above layer j with :math:`z_{\\le j}` at their prior
        means; then a third value, ``{j: log p(x | z_{<=j} = prior means, z_{>j})}``.
        """
        L = self.n_latent_layers
        n = 1 if shared_noise else x.shape[0]
        kw = dict(generator=generator, device=x.device, dtype=x.dtype)
        if eps is None:
            eps = self.draw_noise(n, **kw)
        feats = self.features(x) if h1 is None else h1

        def kl_of(z, q_mu, q_std, p_mu, p_std):
            if analytic_kl:
                return (torch.log(p_std / q_std) + (q_std**2 + (q_mu - p_mu) ** 2) / (2 * p_std**2) - 0.5)
            return _log_normal(z, q_mu, q_std) - _log_normal(z, p_mu, p_std)

        post = []
        if not self.top_down:
            inp, aux = x, None
            for i in range(L):  # bottom-up inference
                h = feats if i == 0 else self.q_paths[i](inp, aux)
                mu, std = self._gaussian(self.q_heads[i](h))
                z = mu if i < k else mu + std * eps[i]  # posterior means of z_{<=k} go up
                post.append((mu, std, z))
                if i < L - 1:
                    inp, aux = self.q_proj[i](z), h
        d, kls, branches = None, [None] * L, {}
        for i in reversed(range(L)):  # top-down generation (and, top-down, inference)
            if i == L - 1:
                p_mu = torch.zeros((x.shape[0], *self._latent_shapes[i]), device=x.device, dtype=x.dtype)
                p_std = torch.ones_like(p_mu)
            else:
                p_mu, p_std = self._gaussian(self.p_heads[i](d))
            if i >= k:
                if self.top_down:
                    head = self.q_heads[i]
                    q_mu, q_std = self._gaussian(head(feats[i]) if i == L - 1 else head(feats[i], d))
                    z = q_mu + q_std * eps[i]
                else:
                    q_mu, q_std, z = post[i]
                kls[i] = kl_of(z, q_mu, q_std, p_mu, p_std)
            elif use_prior_mean:
                z = p_mu
            else:
                z = p_mu + p_std * torch.randn((n, *p_mu.shape[1:]), **kw)
            if branch_at and i + 1 in branch_at:  # d: the features of layers > i, as in the pass for k = i + 1
                branches[i + 1] = self._log_px(self._decode_prior_means(d, i, p_mu), x)
            d = self.p_paths[i](self.p_proj[i](z), d)
        if branch_at is not None:
            return self._log_px(d, x), kls, branches
        return self._log_px(d, x), kls

    def _decode_prior_means(self, d: torch.Tensor, i: int, p_mu: torch.Tensor) -> torch.Tensor:
        """Top-down features at the bottom when layers i, i-1, ..., 0 take their prior means (``p_mu`` of layer i)."""
        z = p_mu
        for j in range(i, -1, -1):
            if j < i:
                z = self._gaussian(self.p_heads[j](d))[0]
            d = self.p_paths[j](self.p_proj[j](z), d)
        return d

    # ---------------------------------------------------------------- public
    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""Per-sample training loss (train mode) or ``-ELBO`` (eval mode), shape ``(n,)``.

        Train mode (Bernoulli inputs binarized afresh, :math:`x \sim Bernoulli(x)`):

        .. math:: \ell(x) = -\log p(x|z) + \beta \sum_i \sum_j \widetilde{KL}_{ij},

        with :math:`KL_{ij}` the single-sample :math:`\log q - \log p` of element
        j of layer i. Free bits (Kingma et al. 2016, per element as hvae-oodd's
        ``FreeNats(shared_dims=1)``): the threshold of layer i is
        :math:`\lambda_i = \text{free\_bits} / c_i`, :math:`c_i` its channels
        (units of a dense layer), i.e. ``free_bits`` nats per dense layer and per
        spatial position of ``z_1``. Each element is clamped on its batch mean:
        :math:`\widetilde{KL}_{ij} = KL_{ij}` if :math:`\text{mean}_{batch} KL_{\cdot j} \ge \lambda_i`
        else the constant :math:`\lambda_i`, so the batch mean of the loss holds
        :math:`\max(\lambda_i, \text{mean } KL_{\cdot j})` and gradients above the
        threshold are untouched. (hvae-oodd clamps each sample's element instead.)

        With ``free_bits_per="layer"`` (the reference run's choice) the threshold
        is ``free_bits`` nats on the batch mean of a layer's *total* KL: layer i
        contributes :math:`\sum_j KL_{ij}` if its batch mean is at least
        ``free_bits``, else the constant ``free_bits``. With ``analytic_kl=True``
        :math:`KL_{ij}` is the closed-form Gaussian KL rather than the
        single-sample estimate (same expectation, less gradient noise).

        Eval mode: :math:`-\mathcal{L}(x)` with :math:`\beta = 1`, no free bits, on ``x`` as given.
        """
        self._check(x)
        if not self.training:
            return -self.elbo(x, generator=generator)
        if self.likelihood == "bernoulli":
            x = binarize(x, generator)
        log_px, kls = self._terms(x, generator=generator, analytic_kl=getattr(self, "analytic_kl", False))
        per_layer = getattr(self, "free_bits_per", "element") == "layer"
        kl_total = torch.zeros_like(log_px)
        for kl in kls:
            if per_layer:
                kl = _flat_sum(kl)
                if self.free_bits > 0:
                    kl = torch.where(kl.mean() >= self.free_bits, kl, torch.full_like(kl, self.free_bits))
                kl_total = kl_total + kl
                continue
            if self.free_bits > 0:
                thr = self.free_bits / kl.shape[1]
                kl = torch.where(kl.mean(0, keepdim=True) >= thr, kl, torch.full_like(kl, thr))
            kl_total = kl_total + _flat_sum(kl)
        return -log_px + self.beta * kl_total

    def elbo(self, x, generator=None, shared_noise=False) -> torch.Tensor:
        """Single-sample ELBO, (n,) nats: :func:`dgmood.backbones.hvae_bounds.elbo`."""
        return hvae_bounds.elbo(self, x, generator, shared_noise)

    def skip_elbo(self, x, k, use_prior_mean=True, generator=None, shared_noise=False) -> torch.Tensor:
        r"""Skip bound :math:`\mathcal L^{>k}`, (n,) nats: :func:`dgmood.backbones.hvae_bounds.skip_elbo`."""
        return hvae_bounds.skip_elbo(self, x, k, use_prior_mean, generator, shared_noise)

    def iwae(self, x, n_samples, generator=None, shared_noise=False) -> torch.Tensor:
        r"""Importance-weighted bound :math:`\mathcal L_S`, (n,) nats: :func:`dgmood.backbones.hvae_bounds.iwae`."""
        return hvae_bounds.iwae(self, x, n_samples, generator, shared_noise)

    def llr_scores(self, x, n_samples=1, generator=None, shared_noise=False, n_skip_samples=1,
                   estimator="independent") -> dict:
        r"""Bound, skip bounds and :math:`LLR^{>k}`: :func:`dgmood.backbones.hvae_bounds.llr_scores`."""
        return hvae_bounds.llr_scores(self, x, n_samples, generator, shared_noise, n_skip_samples, estimator)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""Means of :math:`p(x|z)` (Bernoulli probabilities) at ancestral prior samples
        :math:`z_L \sim N(0, I)`, :math:`z_i \sim p(z_i | z_{>i})`; shape ``(n, *input_shape)``."""
        p = next(self.parameters())
        kw = dict(generator=generator, device=p.device, dtype=p.dtype)
        d = None
        for i in reversed(range(self.n_latent_layers)):
            if i == self.n_latent_layers - 1:
                z = torch.randn((n, *self._latent_shapes[i]), **kw)
            else:
                mu, std = self._gaussian(self.p_heads[i](d))
                z = mu + std * torch.randn(mu.shape, **kw)
            d = self.p_paths[i](self.p_proj[i](z), d)
        return self._x_mean(d)
