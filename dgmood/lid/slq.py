r"""Stochastic Lanczos quadrature (SLQ) of :math:`J^\top J` for a decoder Jacobian :math:`J`.

Jacobian-vector and vector-Jacobian products only (no D x D matrix):
:func:`golub_kahan` bidiagonalizes :math:`J` from a probe, :func:`slq_quadrature`
turns the bidiagonal into quadrature nodes and weights per point, and
:func:`count_from_quadrature` gives a count of singular values above any
threshold from them. Used by :class:`~dgmood.lid.jacobian.JacobianLID`
(``method="fast"``).

A *decoder* is a batch function ``(n, D) -> (n, ...)`` treating samples
independently; a :class:`LocalDecoder` gives, for a batch whose row ``r`` lies
at point ``index[r]``, the decoder anchored at that point (a flow's
``local_decoder``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch.func import linearize, vjp

from .base import rowwise_sum

__all__ = ["Decoder", "LocalDecoder", "golub_kahan", "slq_quadrature", "count_from_quadrature",
           "LINEARIZE_MIN_ROWS"]


Decoder = Callable[[torch.Tensor], torch.Tensor]


class LocalDecoder:
    """Wraps ``factory(index) -> Decoder`` (a flow's ``local_decoder``): the decoder of rows at points ``index``."""

    def __init__(self, factory: Callable[[torch.Tensor], Decoder]):
        self.factory = factory

    def at(self, index: torch.Tensor) -> Decoder:
        return self.factory(index)


def _at(decode: Decoder | LocalDecoder, index: torch.Tensor) -> Decoder:
    """The decoder of a batch whose row ``r`` lies at point ``index[r]``."""
    return decode.at(index) if isinstance(decode, LocalDecoder) else decode


def _flat(decode: Decoder) -> Decoder:
    return lambda z: decode(z).reshape(z.shape[0], -1)


def golub_kahan(
    decode: Decoder, z: torch.Tensor, v0: torch.Tensor, n_steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Batched Golub-Kahan-Lanczos bidiagonalization of :math:`J` from unit ``v0``.

    :math:`J V_m = U_m B_m` with :math:`B_m` upper bidiagonal (diagonal
    :math:`\alpha`, superdiagonal :math:`\beta`); :math:`B_m^\top B_m` is the
    Lanczos tridiagonal of :math:`J^\top J` started at ``v0``, but the
    recurrence touches :math:`J` and :math:`J^\top` separately, so float32
    products resolve singular values down to about :math:`10^{-6}\sigma_{\max}`
    instead of :math:`10^{-3}\sigma_{\max}` for Lanczos on :math:`J^\top J`.
    Both bases are fully reorthogonalized in float64. Two products per step:
    :math:`J^\top u` is a VJP; :math:`J v` a JVP of the decoder linearized once
    at ``z`` (``torch.func.linearize``: the forward pass is traced and its
    tangent graph reused, so each JVP costs about one forward pass, several
    times cheaper than ``torch.func.jvp`` or the VJP of the pullback, for a
    one-off trace per batch: large batches amortize it). Batches of fewer than
    :data:`LINEARIZE_MIN_ROWS` rows, and a decoder that cannot be traced
    (``linearize`` raises), take the VJP of the pullback instead, which gives
    the same products up to float round-off.
    Returns (alphas (b, m), betas (b, m)); a row whose decoder output or
    products are not finite (e.g. a flow inverse that overflows in float32 far
    from the data) is zeroed as soon as it is, so it cannot reach the others,
    and returned as NaN.
    """
    flat = _flat(decode)
    out, pullback = vjp(flat, z)
    JTu = lambda u: pullback(u.to(z.dtype))[0].double()  # noqa: E731
    Jv = _jvp_operator(flat, z, pullback, out, trace=z.shape[0] >= LINEARIZE_MIN_ROWS)
    b, D = v0.shape
    m = min(n_steps, D)
    V = torch.zeros(b, m + 1, D, dtype=torch.float64, device=z.device)
    U = None
    alphas = torch.zeros(b, m, dtype=torch.float64, device=z.device)
    betas = torch.zeros(b, m, dtype=torch.float64, device=z.device)
    finite = torch.isfinite(out).all(1)

    def guard(w):
        finite.logical_and_(torch.isfinite(w).all(1))
        return torch.where(finite[:, None], w, 0.0)

    def orth(w, basis, k):
        for _ in range(2):
            w = w - torch.einsum("bm,bmd->bd", torch.einsum("bmd,bd->bm", basis[:, :k], w), basis[:, :k])
        return w

    V[:, 0] = v0.double() / v0.double().norm(dim=1, keepdim=True)
    for j in range(m):
        u = guard(Jv(V[:, j]))
        if U is None:
            U = torch.zeros(b, m, u.shape[1], dtype=torch.float64, device=z.device)
        u = orth(u, U, j)
        alphas[:, j] = u.norm(dim=1)
        U[:, j] = u / alphas[:, j].clamp_min(1e-300)[:, None]
        w = orth(guard(JTu(U[:, j])), V, j + 1)
        betas[:, j] = w.norm(dim=1)
        V[:, j + 1] = w / betas[:, j].clamp_min(1e-300)[:, None]
    alphas[~finite] = float("nan")
    betas[~finite] = float("nan")
    return alphas, betas


#: Golub-Kahan traces the decoder (``torch.func.linearize``) for batches of at least this many rows,
#: where the one-off trace costs less than the cheaper JVPs save; smaller batches take the VJP of the
#: pullback. The choice depends on the batch's shape only (a detector's is fixed: ``batch_size`` x probes),
#: so it never makes a sample's bits depend on its batch mates.
LINEARIZE_MIN_ROWS = 16


def _jvp_operator(flat: Decoder, z: torch.Tensor, pullback, out: torch.Tensor, trace: bool = True):
    """``v -> J v`` (float64) at ``z``: ``torch.func.linearize`` (``trace``), else the VJP of the pullback."""
    if not trace:
        _, pullback_of_pullback = vjp(lambda u: pullback(u)[0], torch.zeros_like(out))
        return lambda v: pullback_of_pullback(v.to(z.dtype))[0].double()
    try:
        with warnings.catch_warnings():  # torch's tracer warns about its own internals
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            _, jvp_fn = linearize(flat, z)
        return lambda v: jvp_fn(v.to(z.dtype)).double()
    except Exception:  # noqa: BLE001 - untraceable decoder: same products, slower
        _, pullback_of_pullback = vjp(lambda u: pullback(u)[0], torch.zeros_like(out))
        return lambda v: pullback_of_pullback(v.to(z.dtype))[0].double()


def slq_quadrature(
    decode: Decoder | LocalDecoder,
    z: torch.Tensor,
    n_probes: int = 1,
    n_steps: int = 35,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Stochastic Lanczos quadrature of :math:`A = J^\top J` per point.

    For each of ``n_probes`` Rademacher probes :math:`v_p / \sqrt D` (the
    same probes for every point: common random numbers, so a point's estimate
    does not depend on its batch), ``n_steps`` Golub-Kahan steps
    (:func:`golub_kahan`) give :math:`B_m = P \Sigma Q^\top`; the quadrature
    nodes are :math:`\theta_j = \sigma_j(B_m)^2` and the weights
    :math:`q_{1j}^2`. Returns (nodes, weights), each (n, n_probes, m);
    :func:`count_from_quadrature` turns them into a count for any :math:`\tau`
    without new products. Each step costs one JVP and one VJP:
    ``2 * n_probes * n_steps`` products per point, independent of D.
    A point whose products are not finite gets NaN nodes and weights (with a
    RuntimeWarning) instead of failing the batch.
    """
    n, D = z.shape
    probes = torch.randint(0, 2, (n_probes, D), generator=generator, device=z.device).to(torch.float64)
    probes = ((2 * probes - 1) / math.sqrt(D)).repeat(n, 1)
    zz = z.repeat_interleave(n_probes, 0)
    index = torch.arange(n, device=z.device).repeat_interleave(n_probes)
    alphas, betas = golub_kahan(_at(decode, index), zz, probes, n_steps)
    m = alphas.shape[1]
    # J V_m = U_m B_m with B_m upper bidiagonal (diagonal alpha, superdiagonal
    # beta_1..beta_{m-1}); B_m^T B_m is the Lanczos tridiagonal of J^T J from v_1
    B = torch.diag_embed(alphas) + torch.diag_embed(betas[:, : m - 1], 1)
    ok = torch.isfinite(alphas).all(1) & torch.isfinite(betas).all(1)
    if ok.all():
        _, S, Vh = torch.linalg.svd(B)
        theta, w = S**2, Vh[:, :, 0] ** 2
    else:
        bad = sorted({int(i) // n_probes for i in torch.where(~ok)[0]})
        warnings.warn(
            f"slq_quadrature: the decoder or its Jacobian products are not finite at the latents of "
            f"samples {bad} of this batch; their nodes and weights are NaN.",
            RuntimeWarning,
            stacklevel=2,
        )
        theta, w = torch.full_like(alphas, float("nan")), torch.full_like(alphas, float("nan"))
        if ok.any():
            _, S, Vh = torch.linalg.svd(B[ok])
            theta[ok], w[ok] = S**2, Vh[:, :, 0] ** 2
    return theta.reshape(n, n_probes, -1), w.reshape(n, n_probes, -1)


def count_from_quadrature(
    theta: torch.Tensor,
    weights: torch.Tensor,
    n_dims: int | np.ndarray,
    log_tau: float,
    soft: bool = False,
    smoothing: float = 0.0,
) -> torch.Tensor:
    r"""SLQ estimate of the (hard or soft) count, (n,) float64:

    .. math:: \mathrm{tr}\, g(A) \approx \frac{D}{P} \sum_{p=1}^{P} \sum_{j=1}^{m}
              (u^{(p)}_{1j})^2\, g(\theta^{(p)}_j)

    (Ubaru, Chen & Saad, 2017), with :math:`g(\lambda) = \lambda / (\lambda + \tau^2)`
    for the soft count and, for the hard count,

    .. math:: g(\lambda) = \Phi\Big(\frac{\tfrac12 \log\lambda - \log\tau}{h}\Big),

    the step :math:`\mathbb 1[\sqrt\lambda > \tau]` smoothed by a Gaussian of
    width :math:`h` = ``smoothing`` in :math:`\log\sigma` (the exact step when
    :math:`h = 0`). m Ritz values spread over a spectrum spanning many decades
    leave gaps of about a unit of :math:`\log\sigma` near :math:`\tau`; each node
    stands for the eigenvalues around it, so spreading its weight over
    neighbouring log-singular values counts the part of it above :math:`\tau`
    instead of all or nothing.
    """
    tau2 = math.exp(2 * log_tau)
    th = theta.double().clamp_min(0)
    if soft:
        g = th / (th + tau2)
    elif smoothing > 0:
        log_sigma = 0.5 * torch.log(th.clamp_min(1e-300))
        g = torch.special.ndtr((log_sigma - log_tau) / smoothing)
    else:
        g = (th > tau2).double()
    per_probe = rowwise_sum((weights.double() * g).detach().cpu().numpy())  # fixed order: batch-independent bits
    return torch.from_numpy(n_dims * rowwise_sum(per_probe) / per_probe.shape[-1])
