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
``z`` of shape ``(n, D)``. ``decode`` may instead be a *local decoder*
(:class:`~dgmood.lid.slq.LocalDecoder`): ``decode.at(index)`` returns the decoder of a batch whose
row ``r`` lies at point ``index[r]`` (``encode_with_local_decoder`` of a
:class:`~dgmood.backbones.protocols.LatentFlow`), whose Jacobian is taken at
the encoder's own values and stays finite where a float32 inverse overflows.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.func import vjp

from ..backbones.protocols import LatentFlow
from .base import LIDEstimator, calibrate_log_tau, rowwise_sum
from .slq import (  # noqa: F401 - re-exported: the fast estimator's parts
    LINEARIZE_MIN_ROWS,
    Decoder,
    LocalDecoder,
    _at,
    _flat,
    count_from_quadrature,
    golub_kahan,
    slq_quadrature,
)

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
    "LocalDecoder",
]

def decoder_jacobian(decode: Decoder | LocalDecoder, z: torch.Tensor, chunk_size: int | None = 64) -> torch.Tensor:
    r"""Exact Jacobians :math:`J_i = \partial f(z_i) / \partial z_i`, shape (n, D_out, D).

    Reverse mode, one point at a time: the point is repeated ``chunk_size``
    times (a batch of identical inputs, since ``decode`` treats samples
    independently), the forward pass runs once, and its pullback applied to
    ``chunk_size`` rows of the identity at a time gives that many rows
    :math:`e_j^\top J` (the last block zero-padded). On the shipped FashionMNIST
    flow this is faster than forward mode (``torch.func.jacfwd``), whose JVPs
    cost more than the VJPs here.
    """
    first = torch.zeros(1, dtype=torch.long, device=z.device)
    D_out = _flat(_at(decode, first))(z[:1]).shape[1]
    chunk = D_out if chunk_size is None else min(int(chunk_size), D_out)
    # identity rows, zero-padded to whole blocks of ``chunk``
    eye = torch.zeros(-(-D_out // chunk) * chunk, D_out, dtype=z.dtype, device=z.device)
    eye[:D_out].fill_diagonal_(1.0)
    out = []
    for i, zi in enumerate(z):
        flat = _flat(_at(decode, torch.full((chunk,), i, dtype=torch.long, device=z.device)))
        _, pullback = vjp(flat, zi[None].expand(chunk, -1))
        out.append(torch.cat([pullback(e)[0] for e in eye.split(chunk)])[:D_out])
    return torch.stack(out)


def singular_values(decode: Decoder | LocalDecoder, z: torch.Tensor, chunk_size: int | None = 64) -> torch.Tensor:
    """Singular values of each point's decoder Jacobian, (n, D), descending, float64.

    A point whose Jacobian is not finite (the decoder overflowed there) gets a row of NaN.
    """
    out = []
    for i, zi in enumerate(z):
        local = decode if not isinstance(decode, LocalDecoder) else LocalDecoder(lambda index, i=i: decode.at(index + i))
        J = decoder_jacobian(local, zi[None], chunk_size)[0].double()
        if torch.isfinite(J).all():
            out.append(torch.linalg.svdvals(J))
        else:
            out.append(torch.full((min(J.shape),), float("nan"), dtype=torch.float64, device=J.device))
    return torch.stack(out)


def lid_from_singular_values(sv: torch.Tensor, log_tau: float) -> torch.Tensor:
    r""":math:`\mathrm{LID} = \#\{i: \sigma_i > \tau\}`, :math:`\tau = e^{\log\tau}` (the
    reference compares :math:`\lambda_i(J^\top J) > e^{2 \log\tau}`: the same set)."""
    sv = torch.as_tensor(sv)
    count = (sv > math.exp(log_tau)).sum(-1).to(torch.float64)  # integers: exact in any order
    return torch.where(torch.isnan(sv).any(-1), float("nan"), count)  # not measured: NaN, never 0


def soft_lid_from_singular_values(sv: torch.Tensor, log_tau: float) -> torch.Tensor:
    r"""Soft count :math:`\sum_i \sigma_i^2 / (\sigma_i^2 + \tau^2)`: each direction counts
    in (0, 1), 1/2 at :math:`\sigma_i = \tau`; no ties between points."""
    s2 = torch.as_tensor(sv).double() ** 2
    return torch.from_numpy(rowwise_sum((s2 / (s2 + math.exp(2 * log_tau))).detach().cpu().numpy()))


def exact_lid(
    decode: Decoder | LocalDecoder, z: torch.Tensor, log_tau: float, soft: bool = False,
    chunk_size: int | None = 64,
) -> torch.Tensor:
    """Exact (hard or soft) LID per point from the full Jacobian spectrum, (n,) float64."""
    sv = singular_values(decode, z, chunk_size)
    return soft_lid_from_singular_values(sv, log_tau) if soft else lid_from_singular_values(sv, log_tau)


def fast_lid(
    decode: Decoder | LocalDecoder,
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

    def raw(self, model, x, generators, z=None, local_decoder=None):
        """Singular values ``{"sv": (n, D)}`` (exact), or SLQ nodes and weights ``{"theta", "weight"}``
        (n, P, m) and the latent dimension ``"n_dims"`` (n,) (fast).

        ``local_decoder``: the backbone's (``encode_with_local_decoder``), so the
        Jacobian is taken at the encoder's values; else ``model.decode``.
        """
        if z is None:
            raise ValueError("JacobianLID needs the latent z of a LatentFlow backbone.")
        decode = model.decode if local_decoder is None else LocalDecoder(local_decoder)
        if self.method == "exact":
            return {"sv": singular_values(decode, z)}
        theta, weight = slq_quadrature(decode, z, self.n_probes, self.n_steps, generators[0])
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
