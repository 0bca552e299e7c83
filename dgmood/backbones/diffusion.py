r"""VP-SDE diffusion models: denoising score matching, probability-flow ODE likelihood, sampling.

The variance-preserving SDE (Song et al., ICLR 2021) with
:math:`\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})` on :math:`t \in [0, 1]`:

.. math::

    B(t) = \int_0^t \beta = \beta_{\min} t + \tfrac12 (\beta_{\max} - \beta_{\min}) t^2, \quad
    \psi(t) = e^{-B(t)/2}, \quad \sigma^2(t) = 1 - e^{-B(t)},

so :math:`y_t = \psi(t) y_0 + \sigma(t)\epsilon`, :math:`\epsilon \sim \mathcal N(0, I)`.
The network predicts :math:`\sigma(t) s(y_t, t)` (``sigma_score``; about
:math:`-\epsilon`), trained by :math:`\|\mathrm{net}(y_t, t) + \epsilon\|^2`.

Conventions for images match :mod:`~dgmood.backbones.flows`: the module takes
8-bit pixels in [0, 1], dequantizes :math:`v = (k + u)/256` and models
:math:`y_0 = 2v - 1 \in [-1, 1)`; ``log_prob`` returns the density of
:math:`v`, :math:`\log p(v) = \log p(y_0) + D \ln 2`, so
:func:`~dgmood.backbones.flows.bits_per_dim` serves both families.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .diffusion_nets import ScoreMLP, ScoreUNet
from .flows import dequantize

__all__ = ["VPSDE", "ScoreDiffusion", "value_and_trace", "rademacher", "time_grid", "SOLVERS", "TRACES", "ODE_DEFAULTS",
           "ode_settings_problems"]

SOLVERS = ("heun", "euler", "rk45")
TRACES = ("hutchinson", "exact")
#: The probability-flow ODE settings of :meth:`ScoreDiffusion.log_prob` (its keyword defaults).
#: Heun on 8 intervals with one probe: a speed trade-off. On the shipped FashionMNIST model it ranks log p
#: as 25 intervals with 4 probes do, at a fraction of the cost, but its level is biased
#: (``benchmarks/ode_settings.py`` measures both; its JSON in ``benchmarks/results/``). For bits/dim worth
#: reporting, pass more steps and probes, or ``solver="rk45"``.
ODE_DEFAULTS = {"t_eps": 0.01, "solver": "heun", "steps": 8, "trace": "hutchinson", "n_probes": 1}


def ode_settings_problems(t_eps, solver, steps, trace, n_probes) -> list[str]:
    """What :meth:`ScoreDiffusion.log_prob` would refuse in these settings (empty when all are valid)."""
    problems = []
    if solver not in SOLVERS:
        problems.append(f"solver must be one of {SOLVERS}, got {solver!r}")
    if trace not in TRACES:
        problems.append(f"trace must be one of {TRACES}, got {trace!r}")
    if not (isinstance(t_eps, (int, float)) and 0 < t_eps < 1):
        problems.append(f"t_eps must lie in (0, 1), got {t_eps!r}")
    for key, value in (("steps", steps), ("n_probes", n_probes)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            problems.append(f"{key} must be an integer >= 1, got {value!r}")
    return problems


class VPSDE:
    r"""The VP-SDE schedule: :math:`\beta(t)`, :math:`B(t)`, :math:`\psi(t)`, :math:`\sigma(t)`
    (module docstring). Accepts floats or tensors; floats are computed in float64."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not 0 < beta_min < beta_max:
            raise ValueError(f"VPSDE needs 0 < beta_min < beta_max, got {beta_min}, {beta_max}.")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    @staticmethod
    def _t(t):
        return t if isinstance(t, torch.Tensor) else torch.as_tensor(t, dtype=torch.float64)

    def beta(self, t):
        return self.beta_min + self._t(t) * (self.beta_max - self.beta_min)

    def integral_beta(self, t):
        t = self._t(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def psi(self, t):
        return torch.exp(-0.5 * self.integral_beta(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(-self.integral_beta(t)))


def rademacher(n_probes: int, shape: tuple[int, ...], generator=None, device=None, dtype=None) -> torch.Tensor:
    """``n_probes`` Rademacher (+-1) tensors of ``shape``, shared by every sample of a batch."""
    bits = torch.randint(0, 2, (n_probes, *shape), generator=generator, device=device)
    return (2 * bits - 1).to(dtype or torch.float32)


def value_and_trace(fn, y: torch.Tensor, probes: torch.Tensor | None = None, chunk_size: int = 64):
    r"""``(fn(y), tr(d fn / d y))`` per sample, by Jacobian-vector products (``torch.func.jvp``).

    ``fn`` maps a batch (n, \*shape) to the same shape, acting on each sample
    alone. ``probes`` (P, \*shape), shared by all samples: the Hutchinson
    estimate :math:`\tfrac1P \sum_p \epsilon_p^\top J \epsilon_p` (unbiased for
    Rademacher or Gaussian probes; P JVPs). ``probes=None``: the exact trace
    :math:`\sum_j e_j^\top J e_j` (D JVPs, ``chunk_size`` at a time through
    ``torch.func.vmap``). The trace is summed in float64, column by column, so
    a sample's value does not depend on its batch mates.
    """
    from torch.func import jvp, vmap

    n, shape = y.shape[0], y.shape[1:]
    if probes is not None:
        value, total = None, torch.zeros(n, dtype=torch.float64, device=y.device)
        for probe in probes:
            v = probe.expand_as(y).to(y.dtype)
            value, jv = jvp(fn, (y,), (v,))
            total = total + _rowsum64(v * jv)
        return value, total / len(probes)
    d = int(math.prod(shape))
    value = fn(y)
    diag = []
    for start in range(0, d, chunk_size):
        idx = torch.arange(start, min(start + chunk_size, d), device=y.device)
        basis = torch.zeros(len(idx), n, d, dtype=y.dtype, device=y.device)
        basis[torch.arange(len(idx)), :, idx] = 1.0
        jv = vmap(lambda v: jvp(fn, (y,), (v.reshape(y.shape),))[1])(basis)
        diag.append(jv.reshape(len(idx), n, d)[torch.arange(len(idx)), :, idx])  # (chunk, n)
    diag = torch.cat(diag).to(torch.float64)
    total = torch.zeros(n, dtype=torch.float64, device=y.device)
    for row in diag:
        total = total + row
    return value, total


def time_grid(t_eps: float, steps: int, rho: float = 3.0) -> np.ndarray:
    r"""The fixed solvers' times: :math:`t_i = (t_\epsilon^{1/\rho} + \tfrac iN (1 - t_\epsilon^{1/\rho}))^\rho`,
    i = 0..N (``steps``), dense near :math:`t_\epsilon`, where the score changes fastest.

    On Gaussian data with directions of tiny variance (as pixels near a manifold), Heun's
    error at a few tens of steps is much smaller with :math:`\rho = 3` than on a grid uniform
    in t; ``tests/test_diffusion.py`` checks the error and its order on this grid.
    """
    return np.linspace(t_eps ** (1.0 / rho), 1.0, int(steps) + 1) ** rho


def _rowsum64(a: torch.Tensor) -> torch.Tensor:
    """Per-sample sum in float64, over a fixed number of elements (the same whatever the batch)."""
    return a.reshape(a.shape[0], -1).to(torch.float64).sum(1)


class ScoreDiffusion(nn.Module):
    r"""A VP-SDE diffusion model: a score network and the SDE (module docstring).

    Parameters
    ----------
    input_shape : (C, H, W) for images (pixels in [0, 1], dequantized and
        scaled to [-1, 1)) or (D,) for real-valued rows (modelled as they come;
        standardize them first).
    beta_min, beta_max : the linear :math:`\beta(t)` (0.1 and 20, as Song et al.).
    t_min : smallest training time; :math:`\sigma(t)` vanishes at 0.
    net : a module ``net(y, t)`` -> :math:`\sigma(t) s(y, t)`; default
        :class:`~dgmood.backbones.diffusion_nets.ScoreUNet` (images) or
        :class:`~dgmood.backbones.diffusion_nets.ScoreMLP` (rows), built with ``net_params``.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] = (1, 28, 28),
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        t_min: float = 1e-5,
        net: nn.Module | None = None,
        **net_params,
    ):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        if len(self.input_shape) not in (1, 3):
            raise ValueError(f"ScoreDiffusion needs input_shape (C, H, W) or (D,), got {input_shape}.")
        self.images = len(self.input_shape) == 3
        self.n_dims = int(math.prod(self.input_shape))
        self.sde = VPSDE(beta_min, beta_max)
        self.t_min = float(t_min)
        if net is None:
            net = ScoreUNet(self.input_shape, **net_params) if self.images else ScoreMLP(self.n_dims, **net_params)
        self.net = net

    # ------------------------------------------------------------ the model's input space
    def to_model_space(self, x: torch.Tensor, generator=None, shared_noise: bool = False) -> torch.Tensor:
        r""":math:`y_0`: images dequantized (:func:`~dgmood.backbones.flows.dequantize`) and scaled,
        :math:`2v - 1`; rows unchanged. Shape (n, \*input_shape)."""
        x = x.reshape(x.shape[0], *self.input_shape)
        return 2.0 * dequantize(x, generator, shared_noise) - 1.0 if self.images else x

    @property
    def log_det_scaling(self) -> float:
        """:math:`\\log|dy_0/dv| = D \\ln 2` for images (0 for rows): added to :math:`\\log p(y_0)`."""
        return self.n_dims * math.log(2.0) if self.images else 0.0

    def sigma_score(self, y: torch.Tensor, t) -> torch.Tensor:
        r"""The network output :math:`\sigma(t) s(y, t)` (about :math:`-\epsilon`); ``t`` a float or (n,)."""
        t = torch.as_tensor(t, dtype=y.dtype, device=y.device).expand(y.shape[0])
        return self.net(y, t)

    def score(self, y: torch.Tensor, t) -> torch.Tensor:
        r""":math:`s(y, t) = \nabla_y \log p_t(y)`, the network output divided by :math:`\sigma(t)`."""
        return self.sigma_score(y, t) / self.sde.sigma(float(t)).item()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r"""Per-sample denoising score matching loss :math:`\|\mathrm{net}(\psi y_0 + \sigma\epsilon, t) + \epsilon\|^2`,
        :math:`t \sim U(t_{\min}, 1)`, fresh dequantization and noise from the global RNG in training
        mode; in eval mode (skorch's validation) from a generator seeded 0, so that the validation
        loss of every epoch uses the same draws and early stopping compares like with like."""
        g = None if self.training else torch.Generator(device=x.device).manual_seed(0)
        y0 = self.to_model_space(x, g)
        t = self.t_min + (1.0 - self.t_min) * torch.rand(y0.shape[0], generator=g, device=y0.device, dtype=y0.dtype)
        shape = (-1,) + (1,) * (y0.dim() - 1)
        eps = torch.randn(y0.shape, generator=g, device=y0.device, dtype=y0.dtype)
        yt = self.sde.psi(t).reshape(shape) * y0 + self.sde.sigma(t).reshape(shape) * eps
        return (self.net(yt, t) + eps).pow(2).flatten(1).sum(1)

    # ------------------------------------------------------------ likelihood
    def _drift_and_divergence(self, y: torch.Tensor, t: float, probes):
        r"""Probability-flow drift :math:`f = -\tfrac12\beta(t)(y + s)` and :math:`\nabla\cdot f =
        -\tfrac12\beta(t)(D + \mathrm{tr}\,\nabla s)` (float64), at one time shared by the batch."""
        beta, sigma = float(self.sde.beta(t)), float(self.sde.sigma(t))
        s_sigma, trace = value_and_trace(lambda u: self.sigma_score(u, t), y, probes)
        drift = -0.5 * beta * (y + s_sigma / sigma)
        return drift, -0.5 * beta * (self.n_dims + trace / sigma)

    def log_prob(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        shared_noise: bool = False,
        *,
        t_eps: float = 0.01,
        solver: str = "heun",
        steps: int = 8,
        trace: str = "hutchinson",
        n_probes: int = 1,
    ) -> torch.Tensor:
        r"""Log-density (nats) by the probability-flow ODE :math:`dy/dt = -\tfrac12\beta(t)[y + s(y, t)]`:

        .. math::

            \log p_{t_\epsilon}(y_0) = \log\mathcal N(y(1); 0, \sigma^2(1) I)
            + \int_{t_\epsilon}^1 -\tfrac12\beta(t)\,[D + \mathrm{tr}\,\nabla_y s(y(t), t)]\,dt,

        integrated from :math:`y(t_\epsilon) = y_0` (Song et al., 2021), plus
        :attr:`log_det_scaling` for images. This is the density of the
        :math:`t_\epsilon` marginal (the data slightly noised), not of
        :math:`y_0` itself: small :math:`t_\epsilon` is closer to the data's
        density and costs more steps; 0.01 is the ICML reference's setting.

        Parameters
        ----------
        x : pixels in [0, 1] (dequantized here, noise from ``generator``;
            ``shared_noise``: one noise image for the batch) or rows.
        t_eps : start time in (0, 1).
        solver : "heun" (default; 2 steps network calls per probe), "euler"
            (``steps``), both on the fixed grid :func:`time_grid` of ``steps``
            intervals: a sample's value is independent of its batch mates; or "rk45"
            (scipy ``solve_ivp``, rtol = atol = 1e-5, the accurate choice,
            ``steps`` ignored), whose adaptive step control is shared by the
            batch, so a sample's value depends (within the tolerance) on what
            it is batched with.
        trace : "hutchinson" (``n_probes`` Rademacher probes, drawn from
            ``generator`` after the dequantization noise, fixed along the path
            and shared by all samples) or "exact" (D JVPs per network call; small D).
        """
        problems = ode_settings_problems(t_eps, solver, steps, trace, n_probes)
        if problems:
            raise ValueError("; ".join(problems) + ".")
        y = self.to_model_space(x, generator, shared_noise)
        probes = None
        if trace == "hutchinson":
            probes = rademacher(int(n_probes), y.shape[1:], generator, y.device, y.dtype)
        if solver == "rk45":
            y1, integral = self._solve_rk45(y, t_eps, probes)
        else:
            y1, integral = self._solve_fixed(y, t_eps, int(steps), probes, heun=solver == "heun")
        sigma1 = float(self.sde.sigma(1.0))
        prior = -0.5 * (_rowsum64(y1.pow(2)) / sigma1**2 + self.n_dims * math.log(2 * math.pi * sigma1**2))
        return (prior + integral + self.log_det_scaling).to(y.dtype)

    def _solve_fixed(self, y, t_eps, steps, probes, heun):
        ts = time_grid(t_eps, steps)
        integral = torch.zeros(y.shape[0], dtype=torch.float64, device=y.device)
        with torch.no_grad():
            for t0, t1 in zip(ts[:-1], ts[1:]):
                h = float(t1 - t0)
                f0, div0 = self._drift_and_divergence(y, float(t0), probes)
                if not heun:
                    y, integral = y + h * f0, integral + h * div0
                    continue
                f1, div1 = self._drift_and_divergence(y + h * f0, float(t1), probes)
                y, integral = y + 0.5 * h * (f0 + f1), integral + 0.5 * h * (div0 + div1)
        return y, integral

    def _solve_rk45(self, y, t_eps, probes):
        from scipy.integrate import solve_ivp

        n, shape = y.shape[0], y.shape[1:]

        def rhs(t, state):
            yt = torch.as_tensor(state[:-n], dtype=y.dtype, device=y.device).reshape(n, *shape)
            with torch.no_grad():
                drift, div = self._drift_and_divergence(yt, float(t), probes)
            return np.concatenate([drift.double().cpu().numpy().ravel(), div.cpu().numpy()])

        state0 = np.concatenate([y.double().cpu().numpy().ravel(), np.zeros(n)])
        # t_eval: keep only the end state; by default solve_ivp stores every accepted step, which on a
        # stiff path (many thousand steps from a small t_eps) grows to gigabytes
        sol = solve_ivp(rhs, (t_eps, 1.0), state0, method="RK45", rtol=1e-5, atol=1e-5, t_eval=[1.0])
        if not sol.success:
            raise RuntimeError(f"The probability-flow ODE solver failed: {sol.message}")
        end = sol.y[:, -1]
        return (torch.as_tensor(end[:-n], dtype=y.dtype, device=y.device).reshape(n, *shape),
                torch.as_tensor(end[-n:], dtype=torch.float64, device=y.device))

    # ------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, n: int, steps: int = 500, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""``n`` samples by the reverse SDE (Euler-Maruyama, ``steps`` uniform steps from 1 to
        :math:`t_{\min}`), :math:`dy = [-\tfrac12\beta y - \beta s]dt + \sqrt\beta\, d\bar w`,
        ending with the denoised mean :math:`(y + \sigma^2 s)/\psi` (Tweedie). Images come
        back as pixels in [0, 1]."""
        param = next(self.parameters())
        device, dtype = param.device, param.dtype
        y = torch.randn(n, *self.input_shape, generator=generator, device=device, dtype=dtype)
        ts = np.linspace(1.0, self.t_min, steps + 1)
        for t0, t1 in zip(ts[:-1], ts[1:]):
            dt = float(t1 - t0)  # negative
            beta = float(self.sde.beta(t0))
            drift = -0.5 * beta * y - beta * self.score(y, float(t0))
            noise = torch.randn(y.shape, generator=generator, device=device, dtype=dtype)
            y = y + drift * dt + math.sqrt(beta * -dt) * noise
        t = float(ts[-1])
        y = (y + float(self.sde.sigma(t)) ** 2 * self.score(y, t)) / float(self.sde.psi(t))
        return ((y + 1.0) / 2.0).clamp(0.0, 1.0) if self.images else y


def diffusion_spec(input_shape: tuple[int, ...], params: dict | None = None) -> tuple[type, dict]:
    """``(ScoreDiffusion, kwargs)`` for ``input_shape``; ``params`` go to the module (SDE and network)."""
    return ScoreDiffusion, dict(input_shape=tuple(int(s) for s in input_shape), **dict(params or {}))
