"""Flow backbones against closed-form oracles."""

import math

import numpy as np
import pytest
import torch

from dgmood.backbones.flows import ImageFlow, TabularFlow, bits_per_dim, dequantize
from dgmood.backbones.training import train_module


def _perturb(module, scale=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module.eval()


def _init(module, x):
    module.train()
    module(x)  # ActNorm data-dependent initialisation
    return module


@pytest.mark.parametrize("shape", [(1, 4, 4), (2, 8, 8)])
def test_image_flow_logdet_equals_slogdet_of_jacobian(shape):
    torch.manual_seed(0)
    flow = _perturb(_init(ImageFlow(shape, n_levels=2, steps_per_level=2, hidden=8), torch.rand(8, *shape)))
    v = 0.05 + 0.9 * torch.rand(2, *shape, dtype=torch.float32)
    z, logdet = flow.encode_with_logdet(v)
    for i in range(2):
        J = torch.autograd.functional.jacobian(lambda a: flow.encode(a.reshape(1, *shape)).flatten(), v[i].flatten())
        assert torch.allclose(torch.linalg.slogdet(J.double())[1].float(), logdet[i], rtol=1e-4, atol=1e-3)
    assert torch.allclose(flow.decode(z), v, atol=1e-4)


def test_tabular_flow_logdet_and_inverse():
    torch.manual_seed(0)
    flow = _perturb(_init(TabularFlow(5, n_layers=3, hidden=16), torch.randn(64, 5)), scale=0.2)
    x = torch.randn(4, 5)
    z, logdet = flow.encode_with_logdet(x)
    for i in range(4):
        J = torch.autograd.functional.jacobian(lambda a: flow.encode(a[None])[0], x[i])
        assert torch.allclose(torch.linalg.slogdet(J)[1], logdet[i], atol=1e-4)
    assert torch.allclose(flow.decode(z), x, atol=1e-5)


def test_tabular_flow_learns_exact_gaussian_density():
    """Trained on a correlated 2-D Gaussian, the flow's log p is within 0.1 nats of the truth."""
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.8], [0.8, 1.0]])
    mean = np.array([1.0, -2.0])
    X = rng.multivariate_normal(mean, cov, size=4000).astype(np.float32)
    flow, history = train_module(
        TabularFlow(2, n_layers=4, hidden=32), X, input_shape=(2,), max_epochs=25, lr=3e-3,
        batch_size=256, device="cpu", patience=None, random_state=0,
    )
    X_test = rng.multivariate_normal(mean, cov, size=500).astype(np.float32)
    truth = torch.distributions.MultivariateNormal(torch.tensor(mean), torch.tensor(cov)).log_prob(
        torch.tensor(X_test, dtype=torch.float64))
    with torch.no_grad():
        est = flow.log_prob(torch.tensor(X_test)).double()
    # tolerance: mean absolute error 0.1 nats over test points
    assert (est - truth).abs().mean().item() < 0.1, (est - truth).abs().mean().item()
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_dequantize_grid_and_shared_noise():
    x = torch.randint(0, 256, (3, 1, 4, 4)).float() / 255.0
    g = torch.Generator().manual_seed(0)
    v = dequantize(x, g)
    k = torch.round(x * 255)
    assert torch.all(v >= k / 256) and torch.all(v < (k + 1) / 256)
    vs = dequantize(x, torch.Generator().manual_seed(0), shared=True)
    noise = vs * 256 - k
    assert torch.allclose(noise[0], noise[1], atol=1e-3) and torch.allclose(noise[0], noise[2], atol=1e-3)


def test_dequantize_never_reaches_one_in_float32():
    """255 + u rounds to 256 in float32 for u close to 1: the logit must stay finite."""
    x = torch.ones(1, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    u_max = torch.tensor(1.0 - 2.0**-24)
    assert ((255 + u_max) / 256.0).item() == 1.0  # the float32 hazard exists
    flow = ImageFlow((1, 4, 4), n_levels=1, steps_per_level=1, hidden=4)
    v = dequantize(x, g)
    assert v.max() < 1.0
    # the worst case itself: force u to its float32 maximum
    orig = torch.rand
    try:
        torch.rand = lambda *a, **k: torch.full(a[0], 1.0 - 2.0**-24)
        v = dequantize(x, g)
    finally:
        torch.rand = orig
    assert v.max() < 1.0 and torch.isfinite(flow.log_prob_dequantized(v)).all()


def test_bits_per_dim_convention():
    # a uniform density on [0,1)^D has log p = 0, i.e. 8 bits/dim for 8-bit data
    assert bits_per_dim(torch.zeros(1), 784).item() == pytest.approx(8.0)
    assert bits_per_dim(torch.tensor([784 * math.log(2.0)]), 784).item() == pytest.approx(7.0)


def test_image_flow_rejects_bad_shape():
    with pytest.raises(ValueError, match="divisible"):
        ImageFlow((1, 6, 6), n_levels=2)
    with pytest.raises(ValueError, match="n_features = 1"):
        TabularFlow(1)


class _Exploding(torch.nn.Module):
    """Loss that overflows to inf after the first optimizer step."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return torch.exp(1e3 * (2.0 - self.w)) * x.pow(2).sum(1)


def test_nan_loss_stops_training():
    X = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train_module(_Exploding(), X, input_shape=(3,), max_epochs=2, lr=10.0, device="cpu", patience=None)
