r"""Local intrinsic dimension (LID) from a flow's decoder Jacobian.

For a flow :math:`x = f(z)` and a point :math:`x` with :math:`z = f^{-1}(x)`,
let :math:`J = \partial f(z) / \partial z` (``D x D``, in the space the
decoder outputs: [0, 1] pixels for :class:`~dgmood.backbones.flows.ImageFlow`,
whose inverse logit is inside ``decode``). Kamkari et al. (ICML 2024,
"A geometric explanation of the likelihood OOD detection paradox"):

.. math:: \mathrm{LID}(x; \tau) = \#\{ i : \sigma_i(J) > \tau \}
          = \#\{ i : \lambda_i(J^\top J) > \tau^2 \}.

Also offered: the tie-free soft count
:math:`\sum_i \sigma_i^2 / (\sigma_i^2 + \tau^2)`, a stochastic Lanczos
quadrature estimate of either count from Jacobian-vector and vector-Jacobian products only
(:func:`fast_lid`), and the linearized LIDL estimator (:func:`lidl_from_jacobian`).

Every function takes ``decode`` (a batch function ``(n, D) -> (n, ...)`` that
treats samples independently, e.g. ``flow.decode`` in eval mode) and latents
``z`` of shape ``(n, D)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch.func import linearize, vjp

from ..backbones.protocols import LatentFlow
from .base import LIDEstimator, calibrate_log_tau, rowwise_sum

__all__ = [
    "decoder_jacobian",
    "singular_values",
    "lid_from_singular_values",
    "soft_lid_from_singular_values",
    "exact_lid",
    "fast_lid",
    "slq_quadrature",
    "golub_kahan",
    "count_from_quadrature",
    "calibrate_log_tau",
    "lidl_from_jacobian",
    "JacobianLID",
]

Decoder = Callable[[torch.Tensor], torch.Tensor]


def _flat(decode: Decoder) -> Decoder:
    return lambda z: decode(z).reshape(z.shape[0], -1)


def decoder_jacobian(decode: Decoder, z: torch.Tensor, chunk_size: int | None = 64) -> torch.Tensor:
    r"""Exact Jacobians :math:`J_i = \partial f(z_i) / \partial z_i`, shape (n, D_out, D).

    Reverse mode, one point at a time: the point is repeated ``chunk_size``
    times (a batch of identical inputs, since ``decode`` treats samples
    independently), the forward pass runs once, and its pullback applied to
    ``chunk_size`` rows of the identity at a time gives that many rows
    :math:`e_j^\top J` (the last block zero-padded). On the shipped FashionMNIST
    flow this is faster than forward mode (``torch.func.jacfwd``), whose JVPs
    cost more than the VJPs here.
    """
    flat = _flat(decode)
    D_out = flat(z[:1]).shape[1]
    chunk = D_out if chunk_size is None else min(int(chunk_size), D_out)
    # identity rows, zero-padded to whole blocks of ``chunk``
    eye = torch.zeros(-(-D_out // chunk) * chunk, D_out, dtype=z.dtype, device=z.device)
    eye[:D_out].fill_diagonal_(1.0)
    out = []
    for zi in z:
        _, pullback = vjp(flat, zi[None].expand(chunk, -1))
        out.append(torch.cat([pullback(e)[0] for e in eye.split(chunk)])[:D_out])
    return torch.stack(out)


def singular_values(decode: Decoder, z: torch.Tensor, chunk_size: int | None = 64) -> torch.Tensor:
    """Singular values of each point's decoder Jacobian, (n, D), descending, float64.

    A point whose Jacobian is not finite (the decoder overflowed there) gets a row of NaN.
    """
    out = []
    for zi in z:
        J = decoder_jacobian(decode, zi[None], chunk_size)[0].double()
        if torch.isfinite(J).all():
            out.append(torch.linalg.svdvals(J))
        else:
            out.append(torch.full((min(J.shape),), float("nan"), dtype=torch.float64, device=J.device))
    return torch.stack(out)


def lid_from_singular_values(sv: torch.Tensor, log_tau: float) -> torch.Tensor:
    r""":math:`\mathrm{LID} = \#\{i: \sigma_i > \tau\}`, :math:`\tau = e^{\log\tau}` (the
    reference compares :math:`\lambda_i(J^\top J) > e^{2 \log\tau}`: the same set)."""
    return (torch.as_tensor(sv) > math.exp(log_tau)).sum(-1).to(torch.float64)  # integers: exact in any order


def soft_lid_from_singular_values(sv: torch.Tensor, log_tau: float) -> torch.Tensor:
    r"""Soft count :math:`\sum_i \sigma_i^2 / (\sigma_i^2 + \tau^2)`: each direction counts
    in (0, 1), 1/2 at :math:`\sigma_i = \tau`; no ties between points."""
    s2 = torch.as_tensor(sv).double() ** 2
    return torch.from_numpy(rowwise_sum((s2 / (s2 + math.exp(2 * log_tau))).detach().cpu().numpy()))


def exact_lid(
    decode: Decoder, z: torch.Tensor, log_tau: float, soft: bool = False, chunk_size: int | None = 64
) -> torch.Tensor:
    """Exact (hard or soft) LID per point from the full Jacobian spectrum, (n,) float64."""
    sv = singular_values(decode, z, chunk_size)
    return soft_lid_from_singular_values(sv, log_tau) if soft else lid_from_singular_values(sv, log_tau)


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
    decode: Decoder,
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
    alphas, betas = golub_kahan(decode, zz, probes, n_steps)
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


def fast_lid(
    decode: Decoder,
    z: torch.Tensor,
    log_tau: float,
    n_probes: int = 1,
    n_steps: int = 35,
    soft: bool = False,
    generator: torch.Generator | None = None,
    smoothing: float = 0.5,
) -> torch.Tensor:
    r"""LID by stochastic Lanczos quadrature (SLQ) on :math:`A = J^\top J`.

    :func:`slq_quadrature` then :func:`count_from_quadrature` (``smoothing``
    for the hard count): ``2 n_probes n_steps`` products per point, whatever D.
    The estimate is unbiased in the probes up to the quadrature error; its
    spread across probes is the Hutchinson variance
    :math:`2 (\|g(A)\|_F^2 - \sum_i g(A)_{ii}^2) / P`. The probes are the same
    for every point (common random numbers), so the probe error is largely
    shared and points keep their order better than the count error suggests.
    """
    theta, w = slq_quadrature(decode, z, n_probes, n_steps, generator)
    return count_from_quadrature(theta, w, z.shape[1], log_tau, soft, 0.0 if soft else smoothing)


def lidl_from_jacobian(J: torch.Tensor, z: torch.Tensor, log_sigma: float) -> torch.Tensor:
    r"""Linearized LIDL estimate (dgm_geometry ``lid/flows/jacobian_flow.py``).

    With :math:`\sigma^2 = e^{2 \delta}` (``log_sigma`` = :math:`\delta`),
    :math:`\lambda_i` the eigenvalues of :math:`J^\top J = Q \Lambda Q^\top` and
    :math:`\tilde z = Q^\top z`:

    .. math:: \mathrm{LID} = D + \sigma^2 \Big[ -\sum_i \frac{1}{\lambda_i + \sigma^2}
              + \sum_i \frac{\lambda_i \tilde z_i^2}{(\lambda_i + \sigma^2)^2} \Big].

    (The rate of change of the log-density of the Gaussian-convolved
    linearized model with :math:`\log\sigma`; the ICML code drops the +D and
    swaps arguments, so this follows the authors' later code.)
    """
    A = J.double().transpose(-1, -2) @ J.double()
    lam, Q = torch.linalg.eigh((A + A.transpose(-1, -2)) / 2)
    lam = lam.clamp_min(1e-20)
    zt = torch.einsum("bij,bi->bj", Q, z.double())
    s2 = math.exp(2 * log_sigma)
    D = J.shape[-1]
    return D + s2 * (-(1.0 / (lam + s2)).sum(-1) + (lam * zt**2 / (lam + s2) ** 2).sum(-1))


class JacobianLID(LIDEstimator):
    r"""LID from a flow decoder's Jacobian at the point's latent (Kamkari et al., ICML 2024).

    :math:`\mathrm{LID}(x;\tau) = \#\{i : \sigma_i(J) > \tau\}`, :math:`J = \partial f(z)/\partial z`.

    Parameters
    ----------
    method : {"exact", "fast"}, default="exact"
        "exact": every singular value (:func:`singular_values`, D vector-Jacobian
        products per point); "fast": stochastic Lanczos quadrature
        (:func:`slq_quadrature`, ``2 n_probes n_steps`` products per point,
        independent of D).
    soft : bool, default=False
        The tie-free soft count :math:`\sum_i \sigma_i^2/(\sigma_i^2+\tau^2)` instead of the hard one.
    n_probes, n_steps : int, default=1, 35
        Fast-method budget.
    smoothing : float, default=0.5
        Width in :math:`\log\sigma` of the Gaussian smoothing the fast hard
        count (:func:`count_from_quadrature`); 0 is the bare step.
    """

    n_generators = 1
    protocol = LatentFlow

    def __init__(self, method: str = "exact", soft: bool = False, n_probes: int = 1, n_steps: int = 35,
                 smoothing: float = 0.5):
        if method not in ("exact", "fast"):
            raise ValueError(f"method must be 'exact' or 'fast', got {method!r}.")
        self.method, self.soft = method, bool(soft)
        self.n_probes, self.n_steps, self.smoothing = int(n_probes), int(n_steps), float(smoothing)

    @property
    def per_point(self) -> bool:
        return self.method == "exact"

    def raw(self, model, x, generators, z=None):
        """Singular values ``{"sv": (n, D)}`` (exact), or SLQ nodes and weights ``{"theta", "weight"}``
        (n, P, m) and the latent dimension ``"n_dims"`` (n,) (fast)."""
        if z is None:
            raise ValueError("JacobianLID needs the latent z of a LatentFlow backbone.")
        if self.method == "exact":
            return {"sv": singular_values(model.decode, z)}
        theta, weight = slq_quadrature(model.decode, z, self.n_probes, self.n_steps, generators[0])
        n_dims = torch.full((z.shape[0],), float(z.shape[1]), dtype=torch.float64)
        return {"theta": theta, "weight": weight, "n_dims": n_dims}

    def count(self, raw, log_tau):
        if self.method == "exact":
            sv = torch.as_tensor(raw["sv"])
            counted = soft_lid_from_singular_values(sv, log_tau) if self.soft else lid_from_singular_values(sv, log_tau)
        else:
            theta, weight = torch.as_tensor(raw["theta"]), torch.as_tensor(raw["weight"])
            n_dims = np.asarray(raw["n_dims"], dtype=np.float64)
            counted = count_from_quadrature(theta, weight, n_dims, log_tau, self.soft,
                                            0.0 if self.soft else self.smoothing)
        return np.asarray(counted, dtype=np.float64)
