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

__all__ = ["elbo", "skip_elbo", "iwae", "llr_scores", "shared_weights", "passes_per_image", "ESTIMATORS"]


def _flat_sum(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1)


def _skip(model, x, k, use_prior_mean, generator, h1, shared_noise=False) -> torch.Tensor:
    log_px, kls = model._terms(x, k, use_prior_mean, generator, h1, shared_noise)
    return log_px - sum(_flat_sum(kl) for kl in kls if kl is not None)


def _log_mean_exp(values: list[torch.Tensor]) -> torch.Tensor:
    """``log (1/S) sum_s exp(v_s)`` over a list of (n,) tensors, per sample."""
    return torch.logsumexp(torch.stack(values), 0) - math.log(len(values))


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
    return _iwae(model, x, int(n_samples), generator, model.features(x), shared_noise)


ESTIMATORS = ("independent", "hybrid", "lme")


def llr_scores(
    model,
    x: torch.Tensor,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
    shared_noise: bool = False,
    n_skip_samples: int = 1,
    estimator: str = "independent",
) -> dict[str, torch.Tensor]:
    r"""All likelihood-ratio scores of Havtorn et al. (ICML 2021, eq. 10) in one call.

    .. math:: LLR^{>k}(x) = \hat{\mathcal{L}}(x) - \hat{\mathcal{L}}^{>k}(x),\quad k = 0, \dots, L

    (high means OOD), with S = ``n_samples``, m = ``n_skip_samples`` and the
    single-draw log-weights

    .. math:: w_k(s) = \log p(x \mid \bar z_{\le k}, z^{(s)}_{>k})
              - \sum_{i>k} \log\frac{q(z^{(s)}_i|\cdot)}{p(z^{(s)}_i|\cdot)},

    :math:`\bar z_{\le k}` the conditional prior means taken top-down
    (:func:`skip_elbo`); :math:`w_0(s)` is a single-sample ELBO.
    ``estimator`` says which draws and which average:

    ``"independent"``
        :math:`\hat{\mathcal L} = \mathcal L_S` (:func:`iwae`, its own S draws),
        :math:`\hat{\mathcal L}^{>k} = \frac1m \sum_{j \le m} w_k(j)` over m
        further draws *per k*: an unbiased estimate of the skip bound whose
        variance falls as 1/m. S + m L + 1 passes (m L + 1 when S = 1: the
        bound is then the first draw of column 0).
    ``"hybrid"``
        The same S draws :math:`z^{(1..S)}` serve every k:
        :math:`\hat{\mathcal L} = \log \frac1S \sum_{s \le S} e^{w_0(s)}` (the
        importance-weighted bound) and
        :math:`\hat{\mathcal L}^{>k} = \frac1m \sum_{s \le m} w_k(s)` on the
        first m of them. With m = S, :math:`LLR^{>0} \ge 0` (Jensen).
    ``"lme"``
        As "hybrid" but :math:`\hat{\mathcal L}^{>k} = \log \frac1m \sum_{s\le m} e^{w_k(s)}`
        (the reference run's estimator, with m = S); :math:`LLR^{>0} = 0` exactly when m = S.

    With shared draws and a top-down model (``inference="top_down"``) the
    full pass and the skip pass of one draw have the same :math:`z_{>k}` and
    the same KL terms above k, which cancel in the ratio; and the skip pass
    reuses the full pass down to layer k, so each skip pass costs the layers
    below k only. On a bottom-up model the posterior means of
    :math:`z_{\le k}` are sent up instead (:func:`skip_elbo`), so the upper
    latents differ between the two passes. Shared-draw passes:
    S + m (L - 1) + 1. :math:`\hat{\mathcal L}^{>L}` (every latent at its
    prior mean) draws nothing and is computed once. All are bounds or
    estimates of bounds: :math:`E\,\hat{\mathcal L} \le \log p(x)`. The ratio
    :math:`LLR^{>k}`, a difference of two of them, is not a bound on anything: it
    is a score (large = the high-level features are unfamiliar).
    ``shared_noise``: every draw is shared by the whole batch (see :func:`elbo`),
    so a sample's value does not depend on its batch mates. ``generator`` may
    instead be a list of per-row generators
    (:func:`~dgmood.backbones.hvae.row_generators`, what the detector passes):
    each row then draws its own noise, still independent of its batch, and
    rows do not share draws. The averages run in draw order, elementwise.

    Returns
    -------
    dict
        ``"elbo_bound"`` (n,): :math:`\hat{\mathcal{L}}`; ``"skip"`` (n, L+1):
        :math:`\hat{\mathcal{L}}^{>k}` for k = 0..L; ``"llr"`` (n, L+1): bound - skip.
    """
    model._check(x)
    if int(n_samples) < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples}.")
    if int(n_skip_samples) < 1:
        raise ValueError(f"n_skip_samples must be a positive int, got {n_skip_samples}.")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}.")
    feats = model.features(x)
    L, S, m = model.n_latent_layers, int(n_samples), int(n_skip_samples)
    if estimator == "independent":
        draws = [
            torch.stack([_skip(model, x, k, True, generator, feats, shared_noise) for k in range(L)], 1)
            for _ in range(m)
        ]
        top = _skip(model, x, L, True, generator, feats, shared_noise)[:, None]
        skip = torch.cat([functools.reduce(torch.add, draws) / m, top], 1)
        bound = draws[0][:, 0] if S == 1 else _iwae(model, x, S, generator, feats, shared_noise)
        return {"elbo_bound": bound, "skip": skip, "llr": bound[:, None] - skip}
    if m > S:
        raise ValueError(f"n_skip_samples ({m}) must not exceed n_samples ({S}) with shared draws.")
    n = 1 if (shared_noise and not isinstance(generator, (list, tuple))) else x.shape[0]
    full, skips = [], []
    for s in range(S):
        eps = model.draw_noise(n, generator=generator, device=x.device, dtype=x.dtype)
        w = shared_weights(model, x, feats, eps, ks=range(L) if s < m else (0,))
        full.append(w[0])
        if s < m:
            skips.append(torch.stack(w, 1))  # (n, L)
    log_px_top, _ = model._terms(x, L, True, None, feats, eps=eps)  # every latent at its prior mean: eps unused
    top = log_px_top[:, None]
    bound = _log_mean_exp(full)
    if estimator == "lme":  # column by column, the same operation as the bound: exactly 0 at k = 0 when m = S
        avg = torch.stack([_log_mean_exp([w[:, k] for w in skips]) for k in range(L)], 1)
    else:
        avg = functools.reduce(torch.add, skips) / m
    skip = torch.cat([avg, top], 1)
    return {"elbo_bound": bound, "skip": skip, "llr": bound[:, None] - skip}


def passes_per_image(estimator: str, n_samples: int, n_skip_samples: int, n_latent_layers: int) -> int:
    """Decoder passes per image of :func:`llr_scores`: "independent" S + m L + 1 (m L + 1 at S = 1),
    the shared-draw estimators S + m (L - 1) + 1 (a branched skip pass counted as a whole pass)."""
    S, m, L = int(n_samples), int(n_skip_samples), int(n_latent_layers)
    if estimator == "independent":
        return (S if S > 1 else 0) + m * L + 1
    return S + m * (L - 1) + 1


def shared_weights(model, x: torch.Tensor, feats, eps: list[torch.Tensor], ks) -> list[torch.Tensor]:
    r"""Log-weights :math:`w_k` of one posterior draw ``eps`` for each k in ``ks`` (k < L).

    Top-down models: one pass down the hierarchy; at layer k it branches off
    and decodes :math:`\bar z_{\le k}` (prior means) from the features of the
    layers above, so :math:`w_k = \log p(x|\bar z_{\le k}, z_{>k}) - \sum_{i>k} KL_i`
    shares :math:`z_{>k}` and the KL terms above k with :math:`w_0`.
    Bottom-up models: one :meth:`_terms` pass per k with the same ``eps``.
    """
    ks = list(ks)
    if not getattr(model, "top_down", False):
        out = []
        for k in ks:
            log_px, kls = model._terms(x, k, True, None, feats, eps=eps)
            out.append(log_px - sum(_flat_sum(kl) for kl in kls if kl is not None))
        return out
    log_px, kls, branches = model._terms(x, 0, True, None, feats, eps=eps, branch_at=[k for k in ks if k > 0])
    kl_sums = [_flat_sum(kl) for kl in kls]
    out = []
    for k in ks:
        above = functools.reduce(torch.add, kl_sums[k:])
        out.append((log_px if k == 0 else branches[k]) - above)
    return out
