"""Jacobian LID against decoders with a known spectrum."""

import math

import numpy as np
import pytest
import torch

from dgmood.backbones.flows import ImageFlow, TabularFlow
from dgmood.lid.jacobian import (
    decoder_jacobian,
    exact_lid,
    fast_lid,
    lid_from_singular_values,
    lidl_from_jacobian,
    singular_values,
    soft_lid_from_singular_values,
)


class KnownSpectrumFlow(torch.nn.Module):
    """decode(z) = R2 · tanh-free linear map Q diag(s) R · z, composed with an orthogonal mixing.

    Orthogonal layers keep singular values, so J's spectrum is exactly ``s``.
    """

    def __init__(self, s, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        D = len(s)
        q = lambda: torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))[0]  # noqa: E731
        self.register_buffer("W", q() @ torch.diag(torch.as_tensor(s, dtype=torch.float64)) @ q())
        self.register_buffer("O", q())

    def decode(self, z):
        return (z @ self.W.T) @ self.O.T

    def encode(self, x):
        return torch.linalg.solve(self.W, (x @ self.O).T).T


SPECTRUM = np.r_[np.logspace(0.3, 1.0, 18), np.logspace(-3, -1.5, 22)]  # 18 values above tau = 1


def test_exact_lid_equals_known_count():
    flow = KnownSpectrumFlow(SPECTRUM)
    z = torch.randn(4, 40, dtype=torch.float64)
    np.testing.assert_allclose(singular_values(flow.decode, z)[0].numpy(), np.sort(SPECTRUM)[::-1], rtol=1e-8)
    assert exact_lid(flow.decode, z, log_tau=0.0).tolist() == [18.0] * 4
    assert exact_lid(flow.decode, z, log_tau=math.log(0.02)).tolist() == [float((SPECTRUM > 0.02).sum())] * 4
    assert (SPECTRUM > 0.02).sum() == 21  # 18 large + 3 of the small ones
    soft = exact_lid(flow.decode, z, log_tau=0.0, soft=True)
    expected = float(np.sum(SPECTRUM**2 / (SPECTRUM**2 + 1.0)))
    np.testing.assert_allclose(soft.numpy(), expected)


def test_fast_lid_within_its_hutchinson_error():
    """64 probes: the Hutchinson sd is sqrt(2 (r - sum P_ii^2) / 64) <= sqrt(2 * 18 / 64) = 0.75; allow 4 sd."""
    flow = KnownSpectrumFlow(SPECTRUM)
    z = torch.randn(3, 40, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    est = fast_lid(flow.decode, z, log_tau=0.0, n_probes=64, n_steps=25, generator=g)
    assert np.all(np.abs(est.numpy() - 18.0) < 3.0), est
    soft = fast_lid(flow.decode, z, log_tau=0.0, n_probes=64, n_steps=25, soft=True, generator=g)
    expected = float(np.sum(SPECTRUM**2 / (SPECTRUM**2 + 1.0)))
    assert np.all(np.abs(soft.numpy() - expected) < 3.0), soft


def test_fast_lid_is_reproducible_and_batch_independent():
    flow = KnownSpectrumFlow(SPECTRUM)
    z = torch.randn(4, 40, dtype=torch.float64)
    a = fast_lid(flow.decode, z, 0.0, generator=torch.Generator().manual_seed(1))
    b = fast_lid(flow.decode, z[2:], 0.0, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(a[2:].numpy(), b.numpy(), rtol=1e-10)


def test_jacobian_of_image_flow_matches_autograd():
    torch.manual_seed(0)
    flow = ImageFlow((1, 4, 4), n_levels=1, steps_per_level=2, hidden=8)
    flow.train()
    flow(torch.rand(8, 1, 4, 4))
    flow.eval()
    z = torch.randn(2, 16)
    J = decoder_jacobian(flow.decode, z, chunk_size=5)
    for i in range(2):
        ref = torch.autograd.functional.jacobian(lambda a: flow.decode(a[None]).flatten(), z[i])
        torch.testing.assert_close(J[i], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["image", "tabular"])
def test_linearized_jvp_equals_the_jacobian_product(kind, monkeypatch):
    """The JVP inside Golub-Kahan (torch.func.linearize) is J v for every row, with the exact
    Jacobian as oracle; and it really is the linearize path, not the fallback."""
    from torch.func import vjp

    from dgmood.lid import slq as jac

    torch.manual_seed(0)
    if kind == "image":
        flow = ImageFlow((1, 4, 4), n_levels=1, steps_per_level=2, hidden=8)
        flow.train()
        flow(torch.rand(8, 1, 4, 4))
    else:
        flow = TabularFlow(6, hidden=8, n_layers=2)
    flow.eval()
    D = 16 if kind == "image" else 6
    z, v = torch.randn(3, D), torch.randn(3, D)
    flat = jac._flat(flow.decode)
    out, pullback = vjp(flat, z)
    J = decoder_jacobian(flow.decode, z)

    def no_fallback(*a, **k):
        raise AssertionError("fell back to the VJP of the pullback")

    small = jac._jvp_operator(flat, z, pullback, out, trace=False)(v)  # the untraced path, small batches
    torch.testing.assert_close(small, torch.einsum("bij,bj->bi", J, v).double(), rtol=1e-4, atol=1e-6)
    monkeypatch.setattr(jac, "vjp", no_fallback)
    Jv = jac._jvp_operator(flat, z, pullback, out)(v)
    torch.testing.assert_close(Jv, torch.einsum("bij,bj->bi", J, v).double(), rtol=1e-4, atol=1e-6)


def test_lidl_on_linear_gaussian_limit():
    """For tiny sigma the linearized LIDL counts directions with lambda >> sigma^2 (z~ small)."""
    flow = KnownSpectrumFlow(SPECTRUM)
    z = torch.zeros(1, 40, dtype=torch.float64)
    J = decoder_jacobian(flow.decode, z)
    lid = lidl_from_jacobian(J, z, log_sigma=math.log(0.1))
    # sigma = 0.1: directions with s >= 2 count ~1, with s <= 0.03 count ~0
    assert abs(lid.item() - 18.0) < 1.0, lid


def test_tabular_flow_lid_is_invertible_full_rank():
    torch.manual_seed(0)
    flow = TabularFlow(3, n_layers=2, hidden=8).eval()
    sv = singular_values(flow.decode, torch.randn(2, 3))
    assert torch.all(sv > 0)
    assert soft_lid_from_singular_values(sv, -30.0).tolist() == pytest.approx([3.0, 3.0])


def test_smoothed_fast_lid_resolves_a_threshold_deep_in_a_wide_spectrum():
    """300 log-uniform singular values over 8 decades, tau two decades below the top (75 above).

    25 Golub-Kahan steps leave gaps of about half a decade between Ritz values
    near tau, so the unsmoothed step undercounts (56 here, whatever the probes);
    the log-domain smoothing of ``count_from_quadrature`` spreads each node over
    its neighbourhood. 32 probes: Hutchinson sd sqrt(2 * 75 / 32) ~ 2.2.
    """
    spectrum = np.logspace(-6, 2, 300)
    flow = KnownSpectrumFlow(spectrum)
    z = torch.randn(2, 300, dtype=torch.float64)
    kw = dict(n_probes=32, n_steps=25, generator=torch.Generator().manual_seed(0))
    smoothed = fast_lid(flow.decode, z, 0.0, smoothing=0.5, **kw)
    assert np.all(np.abs(smoothed.numpy() - 75) < 9), smoothed
    kw["generator"] = torch.Generator().manual_seed(0)
    step = fast_lid(flow.decode, z, 0.0, smoothing=0.0, **kw)
    assert np.all(step.numpy() < 65), step  # the failure the smoothing fixes


def test_local_decoder_maps_every_row_to_its_point():
    """Several points, several probes, a scrambled index: the anchored decoder gives each row its own
    point's Jacobian, equal to the plain decoder's where the plain inverse reproduces the input."""
    from dgmood.lid.slq import LocalDecoder, slq_quadrature

    torch.manual_seed(0)
    flow = TabularFlow(4, n_layers=2, hidden=8)
    flow.train()
    flow(torch.randn(16, 4))  # ActNorm initialisation
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn(p.shape))
    flow.eval()
    x = torch.randn(3, 4)
    with torch.no_grad():
        z, _, local = flow.encode_with_local_decoder(x)
    anchored = LocalDecoder(local)
    args = (2, 4)
    th_a, w_a = slq_quadrature(anchored, z, *args, generator=torch.Generator().manual_seed(0))
    th_p, w_p = slq_quadrature(flow.decode, z, *args, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(th_a, th_p, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w_a, w_p, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(singular_values(anchored, z), singular_values(flow.decode, z), rtol=1e-4, atol=1e-6)
    index = torch.tensor([2, 0, 2])
    with torch.no_grad():
        assert torch.equal(anchored.at(index)(z[index]), x[index])  # each row pinned to its own point


def test_an_unmeasured_spectrum_counts_nan_never_zero():
    sv = torch.tensor([[3.0, 2.0, 0.1], [float("nan")] * 3], dtype=torch.float64)
    hard = lid_from_singular_values(sv, 0.0)
    assert hard[0] == 2 and torch.isnan(hard[1])
    assert torch.isnan(soft_lid_from_singular_values(sv, 0.0)[1])
