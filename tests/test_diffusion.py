"""VP-SDE diffusion backbone and FLIPD, checked against the closed forms of a Gaussian.

Data :math:`y_0 \\sim N(\\mu, \\Sigma)` noised by the VP-SDE stay Gaussian,
:math:`y_t \\sim N(\\psi\\mu, A)`, :math:`A = \\psi^2\\Sigma + \\sigma^2 I`, so the exact
network output is :math:`\\sigma s = -\\sigma A^{-1}(y - \\psi\\mu)`: the ODE
likelihood, FLIPD, the training loss and the sampler all have exact targets.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from dgmood.backbones.diffusion import ScoreDiffusion, VPSDE, rademacher, time_grid, value_and_trace
from dgmood.backbones.diffusion_nets import ScoreMLP, ScoreUNet
from dgmood.backbones.flows import dequantize
from dgmood.backbones.protocols import ScoreModel, missing_members
from dgmood.lid.flipd import FLIPDLID, flipd, flipd_curve

SDE = VPSDE()


class GaussianScore(nn.Module):
    """The exact :math:`\\sigma(t) s(y, t)` of :math:`N(\\mu, \\Sigma)` data (float64)."""

    def __init__(self, mu, cov, sde=SDE):
        super().__init__()
        self.sde = sde
        lam, u = torch.linalg.eigh(torch.as_tensor(cov, dtype=torch.float64))
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float64))
        self.register_buffer("lam", lam.clamp(min=0))
        self.register_buffer("u", u)
        self.dummy = nn.Parameter(torch.zeros(()))  # so that next(parameters()) finds the device

    def forward(self, y, t):
        flat = y.reshape(len(y), -1)
        psi, sigma = self.sde.psi(t).reshape(-1, 1), self.sde.sigma(t).reshape(-1, 1)
        c = (flat - psi * self.mu) @ self.u
        return (-sigma * (c / (psi**2 * self.lam + sigma**2)) @ self.u.T).reshape(y.shape)

    def marginal(self, t):
        psi, sigma = float(self.sde.psi(t)), float(self.sde.sigma(t))
        cov = self.u @ torch.diag(psi**2 * self.lam) @ self.u.T + sigma**2 * torch.eye(len(self.mu), dtype=torch.float64)
        return torch.distributions.MultivariateNormal(psi * self.mu, cov)


def _gaussian(d=3, rank=None, seed=0, sde=SDE):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, rank or d, generator=g, dtype=torch.float64)
    mu = 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
    return GaussianScore(mu, 0.5 * a @ a.T, sde)


def _model(net, shape):
    return ScoreDiffusion(shape, net=net, beta_min=net.sde.beta_min, beta_max=net.sde.beta_max).double()


def test_sde_schedule_closed_form():
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    b = 0.1 * t + 0.5 * 19.9 * t**2
    torch.testing.assert_close(SDE.psi(t) ** 2 + SDE.sigma(t) ** 2, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(SDE.sigma(t), torch.sqrt(1 - torch.exp(-b)))
    assert float(SDE.beta(1.0)) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        VPSDE(1.0, 0.5)


def test_ode_likelihood_equals_the_gaussian_marginal_density():
    """rk45 gives the t_eps marginal's density up to the prior term, which takes N(0, sigma(1)^2 I)
    for N(psi(1) mu, A(1)): with beta_max = 40 (psi(1)^2 = e^{-20}) that gap is below 1e-4."""
    net = _gaussian(3, sde=VPSDE(0.1, 40.0))
    model = _model(net, (3,))
    y0 = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = net.marginal(0.01).log_prob(y0)
    torch.testing.assert_close(model.log_prob(y0, t_eps=0.01, solver="rk45", trace="exact"), exact, rtol=0, atol=3e-4)
    other = model.log_prob(y0, t_eps=0.1, solver="rk45", trace="exact")  # the t_eps marginal, not the data's
    torch.testing.assert_close(other, net.marginal(0.1).log_prob(y0), rtol=0, atol=3e-4)


def test_fixed_step_solvers_converge_at_their_order_on_a_thin_gaussian():
    """Directions of variance 1e-5 (a manifold's normal directions) make the ODE stiff near t_eps:
    Heun on :func:`time_grid` is second order (error / 4 per doubling), Euler first order."""
    g = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    net = GaussianScore(torch.zeros(6, dtype=torch.float64),
                        u @ torch.diag(torch.tensor([1.0, 0.5, 0.3, 1e-5, 1e-5, 1e-5], dtype=torch.float64)) @ u.T)
    model = _model(net, (6,))
    torch.manual_seed(0)
    y0 = net.marginal(1e-6).sample((6,))
    ref = model.log_prob(y0, solver="rk45", trace="exact")
    err = {(solver, n): (model.log_prob(y0, solver=solver, steps=n, trace="exact") - ref).abs().max().item()
           for solver in ("heun", "euler") for n in (50, 100)}
    assert err["heun", 100] < 0.02
    assert 3.0 < err["heun", 50] / err["heun", 100] < 5.0
    assert 1.5 < err["euler", 50] / err["euler", 100] < 2.5
    assert err["euler", 100] > 5 * err["heun", 100]
    t = time_grid(0.01, 4)
    assert t[0] == pytest.approx(0.01) and t[-1] == 1.0 and np.all(np.diff(np.diff(t)) > 0)  # dense near t_eps


def test_image_log_prob_is_the_density_of_dequantized_pixels():
    net = _gaussian(4, seed=1, sde=VPSDE(0.1, 40.0))
    model = _model(net, (1, 2, 2))
    torch.manual_seed(0)
    x = torch.randint(0, 256, (5, 1, 2, 2)).double() / 255.0
    got = model.log_prob(x, torch.Generator().manual_seed(3), trace="exact", solver="rk45")
    v = dequantize(x, torch.Generator().manual_seed(3))
    want = net.marginal(0.01).log_prob((2 * v - 1).reshape(5, 4)) + 4 * math.log(2.0)
    torch.testing.assert_close(got, want, rtol=0, atol=3e-4)


def test_hutchinson_trace_is_unbiased_and_exact_trace_matches_the_jacobian():
    net = _gaussian(5, seed=2)
    y = torch.randn(3, 5, dtype=torch.float64)
    fn = lambda u: net(u, torch.full((len(u),), 0.2, dtype=torch.float64))  # noqa: E731
    jac = torch.func.vmap(torch.func.jacfwd(lambda r: fn(r[None])[0]))(y)
    value, exact = value_and_trace(fn, y, None, chunk_size=2)
    torch.testing.assert_close(exact, torch.diagonal(jac, dim1=1, dim2=2).sum(1))
    torch.testing.assert_close(value, fn(y))
    one = value_and_trace(fn, y, rademacher(1, (5,), torch.Generator().manual_seed(0), dtype=torch.float64))[1]
    many = value_and_trace(fn, y, rademacher(4000, (5,), torch.Generator().manual_seed(0), dtype=torch.float64))[1]
    assert (one - exact).abs().max() > 1e-3  # a single probe is noisy ...
    torch.testing.assert_close(many, exact, rtol=0, atol=0.05 * exact.abs().max().item())  # ... its mean is not


def test_flipd_equals_its_closed_form_and_tends_to_the_subspace_dimension():
    d, rank = 6, 2
    net = _gaussian(d, rank=rank, seed=4)
    model = _model(net, (d,))
    coeff = torch.randn(7, rank, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    _, vecs = torch.linalg.eigh(net.u @ torch.diag(net.lam) @ net.u.T)
    y0 = net.mu + coeff @ vecs[:, -rank:].T  # points on the data's affine subspace
    for t0 in (1e-4, 0.05, 0.4):
        psi, sigma = float(SDE.psi(t0)), float(SDE.sigma(t0))
        a_inv = torch.linalg.inv(net.marginal(t0).covariance_matrix)
        r = (psi * (y0 - net.mu)) @ a_inv
        want = d - sigma**2 * torch.trace(a_inv) + sigma**2 * (r**2).sum(1)
        torch.testing.assert_close(flipd(model, y0, t0), want, rtol=0, atol=1e-8)
    assert flipd(model, y0, 1e-5).sub(rank).abs().max() < 0.02
    curve = flipd_curve(model, y0, (1e-5, 0.5))
    assert (curve[:, 1] - rank).abs().min() > 0.05  # at a large t0 it no longer reads the dimension
    with pytest.raises(ValueError, match=r"t0 in \(0, 1\)"):
        flipd(model, y0, 0.0)


def test_flipd_keeps_no_autograd_graph_of_a_trainable_network():
    """With a graph, each probe's JVP would hold the network's activations for the whole batch (a 100-image
    batch of the shipped UNet with 8 probes filled 24 GB); FLIPD is a score and must not build one, yet the
    forward-mode JVPs still give the trace: equal to the undecorated function's, which builds a graph."""
    torch.manual_seed(0)
    model = ScoreDiffusion((4,), net=ScoreMLP(4, hidden=16, n_layers=2, t_dim=4))
    with torch.no_grad():  # the output layer starts at zero: random weights everywhere, as after training
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    y0 = torch.randn(5, 4)
    probes = rademacher(3, (4,), torch.Generator().manual_seed(1))
    out = flipd(model, y0, 0.1, probes)
    assert not out.requires_grad and out.grad_fn is None
    with torch.enable_grad():  # the undecorated function, graph and all, gives the same numbers
        with_graph = flipd.__wrapped__(model, y0, 0.1, probes)
    assert with_graph.requires_grad
    # float32 kernels differ with and without autograd (about 1e-9 relative here): not bit for bit
    torch.testing.assert_close(with_graph.detach(), out, rtol=1e-6, atol=0)
    assert out.std() > 0  # the network's trace moved it from row to row
    from dgmood.lid.normal_bundle import normal_bundle_singular_values

    sv = normal_bundle_singular_values(model, y0, torch.randn(16, 4), 0.01, chunk_size=8)
    assert not sv.requires_grad and sv.grad_fn is None


def test_flipd_estimator_picks_the_grid_time_closest_to_the_target():
    net = _gaussian(6, rank=2, seed=6)
    model = _model(net, (6,))
    x = torch.randn(8, 6, dtype=torch.float64)
    est = FLIPDLID(t0s=(1e-3, 0.05, 0.3), trace="exact")
    raw = {k: v.numpy() for k, v in est.raw(model, x, [torch.Generator().manual_seed(0)]).items()}
    means = raw["flipd"].mean(0)
    target = means[1] + 0.01
    log_t0 = est.calibrate(raw, target)
    assert log_t0 == pytest.approx(math.log(0.05))
    np.testing.assert_array_equal(est.count(raw, log_t0), raw["flipd"][:, 1])
    with pytest.raises(ValueError, match="was computed at"):
        est.count(raw, math.log(0.2))
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        FLIPDLID(t0s=(0.0,))


def test_training_loss_is_smallest_at_the_true_score():
    """Denoising score matching: the exact score beats a wrong covariance or the opposite sign
    on the same noise (the loss's sign and scaling conventions)."""
    net = _gaussian(4, seed=7)
    wrong = GaussianScore(net.mu, 2.0 * net.u @ torch.diag(net.lam) @ net.u.T)
    torch.manual_seed(0)
    x = net.marginal(1e-6).sample((4000,))
    losses = {}
    for name, module in {"true": net, "wrong": wrong}.items():
        torch.manual_seed(0)
        losses[name] = _model(module, (4,))(x).mean().item()
    torch.manual_seed(0)
    flipped = ScoreDiffusion((4,), net=_Negated(net)).double()(x).mean().item()
    assert losses["true"] < losses["wrong"] and losses["true"] < flipped
    assert losses["true"] < 4.0  # the loss with a zero network is E||eps||^2 = D


class _Negated(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, y, t):
        return -self.inner(y, t)


def test_reverse_sde_samples_the_data_distribution():
    net = _gaussian(2, seed=8)
    model = _model(net, (2,))
    s = model.sample(3000, steps=400, generator=torch.Generator().manual_seed(0))
    target = net.marginal(1e-6)
    torch.testing.assert_close(s.mean(0), target.mean, rtol=0, atol=0.06)
    torch.testing.assert_close(torch.cov(s.T), target.covariance_matrix, rtol=0.12, atol=0.03)


def test_networks_shapes_parameters_and_batch_independence():
    unet = ScoreUNet((1, 28, 28))
    assert sum(p.numel() for p in unet.parameters()) < 5_000_000
    model = ScoreDiffusion((1, 28, 28), channels=8, t_dim=16).eval()
    assert not missing_members(model, ScoreModel)
    assert isinstance(model.net, ScoreUNet)
    with torch.no_grad():
        for p in model.parameters():  # the zero-initialized heads would make every output 0
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        y = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
        out = model.sigma_score(y, 0.3)
        assert out.shape == y.shape and out.abs().max() > 0
        padded = model.sigma_score(torch.cat([y[2:3], y[:2], y[3:]]), 0.3)
        assert torch.equal(padded[0], out[2])
    mlp = ScoreDiffusion((5,))
    assert isinstance(mlp.net, ScoreMLP)
    assert mlp(torch.randn(7, 5)).shape == (7,)
    with pytest.raises(ValueError, match=r"input_shape \(C, H, W\) or \(D,\)"):
        ScoreDiffusion((2, 3))
    with pytest.raises(ValueError, match="divisible by 4"):
        ScoreUNet((1, 30, 30))


def test_unet_log_prob_and_flipd_run_and_are_batch_independent():
    model = ScoreDiffusion((1, 8, 8), channels=8, t_dim=16).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    torch.manual_seed(0)
    x = torch.randint(0, 256, (4, 1, 8, 8)).float() / 255.0
    est = FLIPDLID(t0s=(0.05,), n_probes=2)

    def components(batch):
        lp = model.log_prob(batch, torch.Generator().manual_seed(0), shared_noise=True, steps=3, n_probes=2)
        lid = est.raw(model, batch, [torch.Generator().manual_seed(1)])["flipd"][:, 0]
        return lp, lid

    lp, lid = components(x)
    assert torch.isfinite(lp).all() and torch.isfinite(lid).all()
    order = torch.tensor([3, 1, 0, 2])
    lp2, lid2 = components(x[order])
    assert torch.equal(lp2, lp[order]) and torch.equal(lid2, lid[order])
    with pytest.raises(ValueError, match="solver must be one of"):
        model.log_prob(x, solver="rk4")
    with pytest.raises(ValueError, match=r"t_eps must lie in \(0, 1\)"):
        model.log_prob(x, t_eps=0.0)


def test_normal_bundle_singular_values_match_their_expectation_and_count_the_subspace():
    """V^T V / K -> sigma^2 A^-1 (psi^2 (x - mu)(x - mu)^T + sigma^2 I) A^-1 as K grows; on a rank-2
    plane in R^6 at t0 = 0.01 four values are near 1 (normal) and two near 0 (tangent)."""
    from dgmood.lid.normal_bundle import NormalBundleLID, gap_lid, normal_bundle_singular_values

    net = _gaussian(6, rank=2, seed=9)
    model = _model(net, (6,))
    _, vecs = torch.linalg.eigh(net.u @ torch.diag(net.lam) @ net.u.T)
    y0 = net.mu + torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) @ vecs[:, -2:].T
    eps = torch.randn(20000, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t0 = 0.01
    sv = normal_bundle_singular_values(model, y0, eps, t0, chunk_size=4096)
    psi, sigma = float(SDE.psi(t0)), float(SDE.sigma(t0))
    a_inv = torch.linalg.inv(net.marginal(t0).covariance_matrix)
    for i, point in enumerate(y0):
        d = psi * (point - net.mu)
        m = sigma**2 * a_inv @ (torch.outer(d, d) + sigma**2 * torch.eye(6, dtype=torch.float64)) @ a_inv
        want = torch.linalg.eigvalsh(m).clamp(min=0).sqrt().flip(0)
        torch.testing.assert_close(sv[i], want, rtol=0.03, atol=0.01)
    est = NormalBundleLID(t0=t0)
    raw = {"sv": sv.numpy()}
    np.testing.assert_array_equal(est.count(raw, math.log(0.5)), [2.0, 2.0, 2.0])
    sv_demo = np.array([[1.1, 1.0, 0.9, 0.95, 0.02, 0.01], [1.0, 1.0, 0.3, 0.2, 0.1, 0.05]])
    np.testing.assert_array_equal(gap_lid(np.sort(sv_demo)[:, ::-1]), [2.0, 4.0])  # the largest log gap
    log_tau = est.calibrate(raw, 2.0)
    assert est.count(raw, log_tau).mean() == 2.0
    assert est.count(raw, log_tau + 2).mean() >= est.count(raw, log_tau).mean()  # the count rises with tau
    small = NormalBundleLID(t0=t0, n_draws=24, chunk_size=5)  # chunks padded: K need not divide
    out = small.raw(model, y0, [torch.Generator().manual_seed(0)])["sv"]
    assert out.shape == (3, 6)


def test_ode_defaults_are_log_probs_keyword_defaults():
    import inspect

    from dgmood.backbones.diffusion import ODE_DEFAULTS

    sig = inspect.signature(ScoreDiffusion.log_prob).parameters
    assert {k: sig[k].default for k in ODE_DEFAULTS} == ODE_DEFAULTS
