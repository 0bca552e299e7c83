r"""The bounds of a :class:`~dgmood.backbones.hvae.HierarchicalVAE`: ELBO, importance-weighted bound,
skip bounds :math:`\mathcal L^{>k}` and the likelihood ratios of Havtorn et al. (ICML 2021).

Functions of a model, each a method of the model too (``model.llr_scores(x)``
calls :func:`llr_scores`). Every value is in nats per example, shape ``(n,)``
(or ``(n, L+1)``); every random draw comes from ``generator``; with
``shared_noise`` each draw is shared by the whole batch (common random
numbers), so a sample's value does not depend on its batch mates.
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = ["elbo", "skip_elbo", "iwae", "llr_scores"]


def _flat_sum(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1)


def _skip(model, x, k, use_prior_mean, generator, h1, shared_noise=False) -> torch.Tensor:
    log_px, kls = model._terms(x, k, use_prior_mean, generator, h1, shared_noise)
    return log_px - sum(_flat_sum(kl) for kl in kls if kl is not None)


def _iwae(model, x, n_samples, generator, h1, shared_noise=False) -> torch.Tensor:
    terms = torch.stack([_skip(model, x, 0, True, generator, h1, shared_noise) for _ in range(n_samples)])
    return torch.logsumexp(terms, 0) - math.log(n_samples)


def elbo(
    model, x: torch.Tensor, generator: torch.Generator | None = None, shared_noise: bool = False
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
    return skip_elbo(model, x, 0, generator=generator, shared_noise=shared_noise)


def skip_elbo(
    model,
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
        Number of lowest latents taken from the prior. ``k = 0`` is :func:`elbo`
        (same draws for the same generator state); ``k = L`` is
        :math:`\log p(x | z = \text{prior means})` and draws nothing that matters.
    use_prior_mean : bool
        Prior means (True, the paper's choice) or prior samples for :math:`z_{\le k}`.
    generator : torch.Generator, optional
    shared_noise : bool
        One draw shared by the whole batch (see :func:`elbo`).

    Returns
    -------
    Tensor of shape (n,), nats.
    """
    model._check(x)
    if not 0 <= int(k) <= model.n_latent_layers:
        raise ValueError(f"k must be in 0..{model.n_latent_layers}, got {k}.")
    return _skip(model, x, int(k), use_prior_mean, generator, None, shared_noise)


def iwae(
    model,
    x: torch.Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
    shared_noise: bool = False,
) -> torch.Tensor:
    r"""Importance-weighted bound (Burda et al. 2016), one pass per sample.

    .. math:: \mathcal{L}_S(x) = \log \frac{1}{S} \sum_{s=1}^{S}
              \frac{p(x, z^{(s)})}{q(z^{(s)}|x)},\quad z^{(s)} \sim q(z|x),

    the log-mean-exp of S single-sample ELBOs; :math:`\mathcal{L}_1` is
    :func:`elbo` (identical for the same generator state) and
    :math:`E[\mathcal{L}_S]` rises with S towards :math:`\log p(x)`.
    Memory is that of one ELBO pass plus an ``(S, n)`` table; the
    deterministic bottom features :math:`Q_1(x)` are computed once.
    ``shared_noise``: each of the S draws is shared by the whole batch (see :func:`elbo`).

    Returns
    -------
    Tensor of shape (n,), nats.
    """
    model._check(x)
    if int(n_samples) < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples}.")
    return _iwae(model, x, int(n_samples), generator, model.q_paths[0](x), shared_noise)


def llr_scores(
    model,
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
    ``shared_noise``: every draw is shared by the whole batch (see :func:`elbo`).

    Returns
    -------
    dict
        ``"elbo_bound"`` (n,): :math:`\mathcal{L}_S`; with ``n_samples == 1`` it
        is the first single-sample ELBO of ``skip[:, 0]`` (so ``llr[:, 0] == 0``
        when m = 1), else :func:`iwae` drawn after the skip columns. ``"skip"``
        (n, L+1): :math:`\hat{\mathcal{L}}^{>k}` for k = 0..L (column 0 a mean of m
        single-sample ELBOs). ``"llr"`` (n, L+1): bound - skip.
    """
    model._check(x)
    if int(n_samples) < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples}.")
    if int(n_skip_samples) < 1:
        raise ValueError(f"n_skip_samples must be a positive int, got {n_skip_samples}.")
    h1 = model.q_paths[0](x)
    L, S, m = model.n_latent_layers, int(n_samples), int(n_skip_samples)
    draws = [
        torch.stack([_skip(model, x, k, True, generator, h1, shared_noise) for k in range(L)], 1)
        for _ in range(m)
    ]
    top = _skip(model, x, L, True, generator, h1, shared_noise)[:, None]
    # elementwise sum in draw order: a sample's value does not depend on the batch it is in
    skip = torch.cat([functools.reduce(torch.add, draws) / m, top], 1)
    bound = draws[0][:, 0] if S == 1 else _iwae(model, x, S, generator, h1, shared_noise)
    return {"elbo_bound": bound, "skip": skip, "llr": bound[:, None] - skip}
