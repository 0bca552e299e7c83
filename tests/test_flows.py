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


@pytest.mark.parametrize("kind", ["image", "tabular"])
def test_local_decoder_jacobian_is_the_inverse_of_the_encoder_jacobian(kind):
    """Oracle: J_f(z) = (J_{f^-1}(v))^{-1}, so slogdet of the local decoder's Jacobian is -logdet, and
    where the plain inverse reproduces the input both decoders have the same Jacobian."""
    torch.manual_seed(0)
    if kind == "image":
        shape = (1, 4, 4)
        flow = _perturb(_init(ImageFlow(shape, n_levels=2, steps_per_level=2, hidden=8), torch.rand(8, *shape)))
        x = torch.randint(0, 256, (3, *shape)).float() / 255
    else:
        shape = (5,)
        flow = _perturb(_init(TabularFlow(5, n_layers=3, hidden=8), torch.randn(16, 5)))
        x = torch.randn(3, 5)
    z, log_p, local = flow.encode_with_local_decoder(x, torch.Generator().manual_seed(0), shared_noise=True)
    z2, log_p2 = flow.encode_with_log_prob(x, torch.Generator().manual_seed(0), shared_noise=True)
    assert torch.equal(z, z2) and torch.equal(log_p, log_p2)  # one route to log p
    logdet = log_p + 0.5 * (z**2).sum(1) + 0.5 * z.shape[1] * math.log(2 * math.pi)
    for i in range(3):
        decode_i = local(torch.tensor([i]))
        J = torch.autograd.functional.jacobian(lambda a: decode_i(a[None]).flatten(), z[i]).double()
        J_plain = torch.autograd.functional.jacobian(lambda a: flow.decode(a[None]).flatten(), z[i]).double()
        assert torch.allclose(torch.linalg.slogdet(J)[1], -logdet[i].double(), atol=2e-3)
        assert torch.allclose(J, J_plain, rtol=1e-4, atol=1e-5)
        if kind == "tabular":  # the value is pinned to the encoder's input, exactly
            assert torch.equal(decode_i(z[i : i + 1])[0], x[i])


def test_local_decoder_stays_finite_where_the_inverse_overflows():
    """The cause of the fast-LID crash on random pixels: far from the data, the float32 inverse drifts from
    the encoded input and overflows. The local decoder is pinned at the encoder's values: finite."""
    from torch.func import jvp

    from dgmood.pretrained import load_pretrained

    flow, _ = load_pretrained("fmnist-flow")
    pixels = np.random.default_rng(0).integers(0, 256, (128, 784), dtype=np.uint8)[[5, 22]]
    x = torch.from_numpy(pixels.astype(np.float32) / 255).reshape(2, 1, 28, 28)
    with torch.no_grad():
        z, log_p, local = flow.encode_with_local_decoder(x, torch.Generator().manual_seed(0), shared_noise=True)
        assert torch.isfinite(log_p).all()
        plain_overflows = not torch.isfinite(flow.decode(z)).all()  # the cause, where float32 allows it
    value, tangent = jvp(local(torch.arange(2)), (z,), (torch.ones_like(z) / 28,))
    assert torch.isfinite(value).all() and torch.isfinite(tangent).all()
    v = dequantize(x, torch.Generator().manual_seed(0), True)
    assert torch.allclose(value, v, atol=1e-5)  # pinned at the encoder's input (up to the logit round trip)
    if not plain_overflows:
        pytest.skip("the plain float32 inverse did not overflow on this CPU; the anchored path was checked")
