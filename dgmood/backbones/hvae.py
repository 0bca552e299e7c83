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
All KL terms are single-sample Monte Carlo estimates ``log q(z|.) - log p(z|.)``
at the posterior sample, as in the reference code (analytic KLs would not
combine with importance weighting nor with the skip bounds).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# the layer classes stay importable here, so that models pickled before the split still load
from .hvae_layers import (_ConvBlock, _DenseBlock, _Head, _Path, _Projection,  # noqa: F401
                          _WNConv2d, _WNConvTranspose2d, _WNLinear, build_stages)

__all__ = ["HierarchicalVAE", "binarize"]

_LOG_2PI = math.log(2.0 * math.pi)
_LN2 = math.log(2.0)


def binarize(
    x: torch.Tensor, generator: torch.Generator | None = None, shared_noise: bool = False
) -> torch.Tensor:
    """Bernoulli sample of ``x`` in [0, 1]: ``b ~ Bernoulli(x)`` elementwise.

    Evaluation sets are binarized once, with a seeded ``generator`` created on
    ``x.device``, so that every bound of the same point sees the same bits.

    With ``shared_noise=True`` one uniform draw ``u`` of shape ``(1, *x.shape[1:])``
    serves the whole batch, ``b = 1[u < x]`` (common random numbers): a sample's
    bits do not depend on the other samples in its batch nor on their order.
    """
    p = x.clamp(0.0, 1.0)
    if not shared_noise:
        return torch.bernoulli(p, generator=generator)
    u = torch.rand((1, *p.shape[1:]), generator=generator, device=p.device, dtype=p.dtype)
    return (u < p).to(p.dtype)


def _log_normal(z: torch.Tensor, mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Elementwise ``log N(z; mu, std^2)``."""
    return -0.5 * ((z - mu) / std) ** 2 - torch.log(std) - 0.5 * _LOG_2PI


def _flat_sum(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1)


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
    ):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.image = len(self.input_shape) == 3
        if len(self.input_shape) not in (1, 3):
            raise ValueError(f"input_shape must be (C, H, W) or (D,), got {input_shape!r}.")
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
        act = nn.Identity() if linear else nn.SiLU()
        stages = build_stages(self.input_shape, self.channels, self.blocks_per_stage, self.latent_dims,
                              self.kernel_sizes, act, self.linear)
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

    def _terms(
        self,
        x: torch.Tensor,
        k: int = 0,
        use_prior_mean: bool = True,
        generator: torch.Generator | None = None,
        h1: torch.Tensor | None = None,
        shared_noise: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """One pass: ``log p(x|z)`` and, per layer, elementwise ``log q - log p`` (None if skipped).

        Noise for all L posterior samples is drawn first (layer 1 first), then,
        only when ``use_prior_mean`` is False, prior noise for layers k ... 1.
        ``shared_noise``: every draw has batch size 1 and is broadcast over the batch.
        """
        L = self.n_latent_layers
        n = 1 if shared_noise else x.shape[0]
        kw = dict(generator=generator, device=x.device, dtype=x.dtype)
        eps = [torch.randn((n, *s), **kw) for s in self._latent_shapes]
        post, inp, aux = [], x, None
        for i in range(L):  # bottom-up inference
            h = h1 if (i == 0 and h1 is not None) else self.q_paths[i](inp, aux)
            mu, std = self._gaussian(self.q_heads[i](h))
            z = mu if i < k else mu + std * eps[i]  # posterior means of z_{<=k} go up
            post.append((mu, std, z))
            if i < L - 1:
                inp, aux = self.q_proj[i](z), h
        d, kls = None, [None] * L
        for i in reversed(range(L)):  # top-down generation
            if i == L - 1:
                p_mu, p_std = torch.zeros_like(post[i][0]), torch.ones_like(post[i][1])
            else:
                p_mu, p_std = self._gaussian(self.p_heads[i](d))
            if i >= k:
                q_mu, q_std, z = post[i]
                kls[i] = _log_normal(z, q_mu, q_std) - _log_normal(z, p_mu, p_std)
            elif use_prior_mean:
                z = p_mu
            else:
                z = p_mu + p_std * torch.randn((n, *p_mu.shape[1:]), **kw)
            d = self.p_paths[i](self.p_proj[i](z), d)
        return self._log_px(d, x), kls

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

        Eval mode: :math:`-\mathcal{L}(x)` with :math:`\beta = 1`, no free bits, on ``x`` as given.
        """
        self._check(x)
        if not self.training:
            return -self.elbo(x, generator=generator)
        if self.likelihood == "bernoulli":
            x = binarize(x, generator)
        log_px, kls = self._terms(x, generator=generator)
        kl_total = torch.zeros_like(log_px)
        for kl in kls:
            if self.free_bits > 0:
                thr = self.free_bits / kl.shape[1]
                kl = torch.where(kl.mean(0, keepdim=True) >= thr, kl, torch.full_like(kl, thr))
            kl_total = kl_total + _flat_sum(kl)
        return -log_px + self.beta * kl_total

    def _skip(self, x, k, use_prior_mean, generator, h1, shared_noise=False) -> torch.Tensor:
        log_px, kls = self._terms(x, k, use_prior_mean, generator, h1, shared_noise)
        return log_px - sum(_flat_sum(kl) for kl in kls if kl is not None)

    def _iwae(self, x, n_samples, generator, h1, shared_noise=False) -> torch.Tensor:
        terms = torch.stack([self._skip(x, 0, True, generator, h1, shared_noise) for _ in range(n_samples)])
        return torch.logsumexp(terms, 0) - math.log(n_samples)

    def elbo(
        self, x: torch.Tensor, generator: torch.Generator | None = None, shared_noise: bool = False
    ) -> torch.Tensor:
        r"""Single-sample ELBO (Kingma & Welling 2014; Havtorn et al. 2021, eq. 2).

        .. math:: \mathcal{L}(x) = \log p(x|z) + \sum_{i=1}^{L}
                  [\log p(z_i | z_{>i}) - \log q(z_i | \cdot)],\quad z \sim q(z|x).

        Parameters
        ----------
        x : Tensor of shape ``(n, *input_shape)``
            Binarized inputs (Bernoulli) or real inputs (Gaussian).
        generator : torch.Generator, optional
            Source of every random draw, on ``x.device``.
        shared_noise : bool
            Common random numbers: every draw has batch size 1 and is shared by
            all samples, so a sample's value does not depend on its batch
            (False: independent draws per sample).

        Returns
        -------
        Tensor of shape (n,), nats.
        """
        return self.skip_elbo(x, 0, generator=generator, shared_noise=shared_noise)

    def skip_elbo(
        self,
        x: torch.Tensor,
        k: int,
        use_prior_mean: bool = True,
        generator: torch.Generator | None = None,
        shared_noise: bool = False,
    ) -> torch.Tensor:
        r"""Skip bound :math:`\mathcal{L}^{>k}` of Havtorn et al. (ICML 2021, eq. 9), one sample.

        .. math:: \mathcal{L}^{>k}(x) = \log p(x | z) + \sum_{i>k}
                  [\log p(z_i | z_{>i}) - \log q(z_i | \cdot)],

        :math:`z_{>k} \sim q(z_{>k}|x)`, and :math:`z_{\le k}` the means of the
        conditional priors :math:`p(z_i | z_{>i})` taken top-down (samples of them
        with ``use_prior_mean=False``); only the KL terms of :math:`z_{>k}` count.
        As hvae-oodd's ``use_mode``, the bottom-up inference propagates the
        posterior *means* of :math:`z_{\le k}` when computing :math:`q(z_{>k}|x)`.

        Parameters
        ----------
        x : Tensor of shape ``(n, *input_shape)``
        k : int in 0 .. L
            Number of lowest latents taken from the prior. ``k = 0`` is :meth:`elbo`
            (same draws for the same generator state); ``k = L`` is
            :math:`\log p(x | z = \text{prior means})` and draws nothing that matters.
        use_prior_mean : bool
            Prior means (True, the paper's choice) or prior samples for :math:`z_{\le k}`.
        generator : torch.Generator, optional
        shared_noise : bool
            One draw shared by the whole batch (see :meth:`elbo`).

        Returns
        -------
        Tensor of shape (n,), nats.
        """
        self._check(x)
        if not 0 <= int(k) <= self.n_latent_layers:
            raise ValueError(f"k must be in 0..{self.n_latent_layers}, got {k}.")
        return self._skip(x, int(k), use_prior_mean, generator, None, shared_noise)

    def iwae(
        self,
        x: torch.Tensor,
        n_samples: int,
        generator: torch.Generator | None = None,
        shared_noise: bool = False,
    ) -> torch.Tensor:
        r"""Importance-weighted bound (Burda et al. 2016), one pass per sample.

        .. math:: \mathcal{L}_S(x) = \log \frac{1}{S} \sum_{s=1}^{S}
                  \frac{p(x, z^{(s)})}{q(z^{(s)}|x)},\quad z^{(s)} \sim q(z|x),

        the log-mean-exp of S single-sample ELBOs; :math:`\mathcal{L}_1` is
        :meth:`elbo` (identical for the same generator state) and
        :math:`E[\mathcal{L}_S]` rises with S towards :math:`\log p(x)`.
        Memory is that of one ELBO pass plus an ``(S, n)`` table; the
        deterministic bottom features :math:`Q_1(x)` are computed once.
        ``shared_noise``: each of the S draws is shared by the whole batch (see :meth:`elbo`).

        Returns
        -------
        Tensor of shape (n,), nats.
        """
        self._check(x)
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be a positive int, got {n_samples}.")
        return self._iwae(x, int(n_samples), generator, self.q_paths[0](x), shared_noise)

    def llr_scores(
        self,
        x: torch.Tensor,
        n_samples: int = 1,
        generator: torch.Generator | None = None,
        shared_noise: bool = False,
        n_skip_samples: int = 1,
    ) -> dict[str, torch.Tensor]:
        r"""All likelihood-ratio scores of Havtorn et al. (ICML 2021, eq. 10) in one call.

        .. math:: LLR^{>k}(x) = \mathcal{L}_S(x) - \mathcal{L}^{>k}(x),\quad k = 0, \dots, L

        (high means OOD). :math:`\mathcal{L}^{>k}` is an expectation over the
        upper latents :math:`z_{>k} \sim q(z_{>k}|x)`; it is estimated by the mean of
        ``n_skip_samples`` = m single-sample bounds,

        .. math:: \hat{\mathcal{L}}^{>k}(x) = \frac1m \sum_{j=1}^{m}
                  \Big[\log p(x \mid \bar z_{\le k}, z^{(j)}_{>k})
                  - \sum_{i>k} \log\frac{q(z^{(j)}_i|\cdot)}{p(z^{(j)}_i|\cdot)}\Big],

        an unbiased estimate whose Monte Carlo variance falls as 1/m (the mean,
        not a log-mean-exp: the quantity stays the skip bound, not a tighter
        bound). On trained image models (the ``fmnist-hvae`` architecture) the
        single-draw noise of :math:`\mathcal{L}^{>1}` dominates that of
        :math:`\mathcal{L}_S`, so a larger m lowers the noise of the ratio more than a larger S.
        :math:`\mathcal{L}^{>L}` (every latent at its prior mean) has no noise and
        is computed once. S + m L + 1 passes (m L + 1 when S = 1: the bound is then
        the first ELBO draw), the bottom features computed once.
        ``shared_noise``: every draw is shared by the whole batch (see :meth:`elbo`).

        Returns
        -------
        dict
            ``"elbo_bound"`` (n,): :math:`\mathcal{L}_S`; with ``n_samples == 1`` it
            is the first single-sample ELBO of ``skip[:, 0]`` (so ``llr[:, 0] == 0``
            when m = 1), else :meth:`iwae` drawn after the skip columns. ``"skip"``
            (n, L+1): :math:`\hat{\mathcal{L}}^{>k}` for k = 0..L (column 0 a mean of m
            single-sample ELBOs). ``"llr"`` (n, L+1): bound - skip.
        """
        self._check(x)
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be a positive int, got {n_samples}.")
        if int(n_skip_samples) < 1:
            raise ValueError(f"n_skip_samples must be a positive int, got {n_skip_samples}.")
        h1 = self.q_paths[0](x)
        L, S, m = self.n_latent_layers, int(n_samples), int(n_skip_samples)
        draws = [
            torch.stack([self._skip(x, k, True, generator, h1, shared_noise) for k in range(L)], 1)
            for _ in range(m)
        ]
        top = self._skip(x, L, True, generator, h1, shared_noise)[:, None]
        # elementwise sum in draw order: a sample's value does not depend on the batch it is in
        skip = torch.cat([functools.reduce(torch.add, draws) / m, top], 1)
        bound = draws[0][:, 0] if S == 1 else self._iwae(x, S, generator, h1, shared_noise)
        return {"elbo_bound": bound, "skip": skip, "llr": bound[:, None] - skip}

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
