"""Top-down inference, per-layer free bits, analytic KL and the shared-draw LLR estimators of the HVAE."""

import math
import pickle

import pytest
import torch

from dgmood.backbones import hvae_bounds
from dgmood.backbones.hvae import HierarchicalVAE, binarize
from tests.test_hvae_backbone import _linear_gaussian

torch.set_num_threads(2)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _image(**kw) -> HierarchicalVAE:
    torch.manual_seed(0)
    return HierarchicalVAE((1, 28, 28), **{"channels": 8, "blocks_per_stage": 1, "inference": "top_down", **kw})


def _dense(**kw) -> HierarchicalVAE:
    torch.manual_seed(0)
    kw = {"channels": 16, "latent_dims": (4, 3, 2), "blocks_per_stage": 1, "likelihood": "gaussian",
          "inference": "top_down", **kw}
    return HierarchicalVAE((6,), **kw).double()


def _images(n=5):
    return binarize(torch.rand(n, 1, 28, 28, generator=_gen(123)), _gen(7))


def _rows(n=7):
    return torch.randn(n, 6, generator=_gen(5), dtype=torch.float64)


CASES = [(_image, _images), (_dense, _rows)]


@pytest.mark.parametrize("make,data", CASES)
def test_top_down_model_scores_and_pickles(make, data):
    model, x = make().eval(), data()
    with torch.no_grad():
        elbo = model.elbo(x, _gen(1))
        assert elbo.shape == (len(x),) and torch.isfinite(elbo).all()
        torch.testing.assert_close(model.skip_elbo(x, 0, generator=_gen(1)), elbo, rtol=0, atol=0)
        again = pickle.loads(pickle.dumps(model)).elbo(x, _gen(1))
    assert torch.equal(again, elbo)
    assert len(model.features(x)) == model.n_latent_layers  # the whole deterministic path, once per input


@pytest.mark.parametrize("inference", ["top_down", "bottom_up"])
def test_upper_kl_terms_cancel_only_with_top_down_inference(inference):
    """Same noise, skip pass k vs full pass: top-down, the KL terms of every layer above k are
    bit-identical (they cancel in LLR^{>k}); bottom-up, the posterior means sent up move them."""
    model, x = _dense(inference=inference).eval(), _rows()
    eps = model.draw_noise(len(x), generator=_gen(3), dtype=x.dtype)
    with torch.no_grad():
        _, full = model._terms(x, 0, eps=eps)
        for k in (1, 2):
            _, skip = model._terms(x, k, eps=eps)
            same = [torch.equal(full[i], skip[i]) for i in range(k, model.n_latent_layers)]
            assert all(same) if inference == "top_down" else not all(same), (k, same)


@pytest.mark.parametrize("make,data", CASES)
def test_branched_skip_weights_equal_separate_passes(make, data):
    """shared_weights decodes each skip bound from the full pass's features above k: the same
    numbers as a separate pass for that k with the same noise."""
    model, x = make().eval(), data()
    feats = model.features(x)
    eps = model.draw_noise(1, generator=_gen(4), dtype=x.dtype)
    with torch.no_grad():
        branched = hvae_bounds.shared_weights(model, x, feats, eps, range(model.n_latent_layers))
        for k in range(model.n_latent_layers):
            log_px, kls = model._terms(x, k, eps=eps)
            separate = log_px - sum(kl.flatten(1).sum(1) for kl in kls if kl is not None)
            torch.testing.assert_close(branched[k], separate, rtol=0, atol=0)


@pytest.mark.parametrize("make,data", CASES)
def test_estimators_at_k0_and_k_equals_L(make, data):
    model, x = make().eval(), data()
    L = model.n_latent_layers
    with torch.no_grad():
        lme = model.llr_scores(x, 6, _gen(0), True, 6, estimator="lme")
        hybrid = model.llr_scores(x, 6, _gen(0), True, 6, estimator="hybrid")
        other = model.llr_scores(x, 6, _gen(9), True, 6, estimator="hybrid")
        cheap = model.llr_scores(x, 6, _gen(0), True, 1, estimator="hybrid")
    assert torch.equal(lme["llr"][:, 0], torch.zeros(len(x), dtype=x.dtype))  # the same form on the same draws
    assert (hybrid["llr"][:, 0] >= 0).all()  # log-mean-exp >= mean (Jensen)
    assert (hybrid["llr"][:, 0] > 0).any()
    torch.testing.assert_close(hybrid["elbo_bound"], lme["elbo_bound"], rtol=0, atol=0)
    torch.testing.assert_close(cheap["elbo_bound"], hybrid["elbo_bound"], rtol=0, atol=0)
    # L^{>L} draws nothing: the same for another seed
    assert torch.equal(hybrid["skip"][:, L], other["skip"][:, L])
    assert not torch.equal(hybrid["skip"][:, 1], other["skip"][:, 1])
    torch.testing.assert_close(hybrid["llr"], hybrid["elbo_bound"][:, None] - hybrid["skip"], rtol=0, atol=0)


def test_exact_posterior_makes_the_shared_bound_log_p():
    """Linear-Gaussian oracle: with the exact posterior every log-weight is log p(x), for every estimator."""
    model, true = _linear_gaussian(exact_posterior=True)
    x = true.sample((20,))
    with torch.no_grad():
        for est in hvae_bounds.ESTIMATORS:
            out = model.llr_scores(x, 4, _gen(2), True, 4, estimator=est)
            torch.testing.assert_close(out["elbo_bound"], true.log_prob(x), rtol=0, atol=1e-3)


def test_shared_draw_scores_do_not_depend_on_the_batch():
    """At a fixed batch shape (the detector pads every batch to ``batch_size`` rows) a row's
    ratios are the same bits alone (beside zero rows), in its batch or shuffled."""
    model, x = _dense().eval(), _rows(9)
    perm = torch.randperm(9, generator=_gen(1))

    def llr(batch):
        return model.llr_scores(batch, 4, _gen(0), True, 2, estimator="hybrid")["llr"]

    with torch.no_grad():
        full = llr(x)
        alone = torch.stack([llr(torch.cat([x[i : i + 1], torch.zeros_like(x[1:])]))[0] for i in range(9)])
        shuffled = llr(x[perm])
    torch.testing.assert_close(alone, full, rtol=0, atol=0)
    torch.testing.assert_close(shuffled, full[perm], rtol=0, atol=0)


def test_per_layer_free_bits_floor_is_the_budget_per_layer():
    """free_bits_per="layer": with a huge budget the KL part of the loss is free_bits per latent layer."""
    model, x = _image(free_bits=1e4, free_bits_per="layer"), torch.rand(4, 1, 28, 28)
    model.train()
    losses = {}
    for beta in (0.0, 1.0):
        model.beta = beta
        losses[beta] = model(x, generator=_gen(0))
    torch.testing.assert_close(losses[1.0] - losses[0.0], torch.full((4,), 3e4), rtol=1e-6, atol=1e-2)


def test_per_layer_free_bits_pass_gradients_above_the_budget():
    model, x = _dense(free_bits=1e-6, free_bits_per="layer", analytic_kl=True), _rows()
    model.train()
    model(x, generator=_gen(0)).mean().backward()
    assert model.q_heads[-1].layer.weight.grad.abs().sum() > 0


def test_analytic_kl_is_the_expectation_of_the_sampled_kl():
    """The closed-form Gaussian KL of the top layer equals the mean of log q - log p over many draws."""
    model, x = _dense().eval(), _rows(3)
    x = x.repeat(4000, 1)
    with torch.no_grad():
        _, sampled = model._terms(x, 0, generator=_gen(0))
        _, exact = model._terms(x, 0, generator=_gen(0), analytic_kl=True)
    top_mc = sampled[-1].sum(1).view(4000, 3).mean(0)
    top_exact = exact[-1].sum(1).view(4000, 3)[0]
    se = sampled[-1].sum(1).view(4000, 3).std(0) / math.sqrt(4000)
    assert ((top_mc - top_exact).abs() < 4 * se).all(), (top_mc, top_exact, se)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="inference must be"):
        HierarchicalVAE((6,), inference="sideways")
    with pytest.raises(ValueError, match="free_bits_per must be"):
        HierarchicalVAE((6,), free_bits_per="pixel")
    model, x = _dense().eval(), _rows()
    with pytest.raises(ValueError, match="estimator must be one of"):
        model.llr_scores(x, 2, estimator="median")
    with pytest.raises(ValueError, match="must not exceed n_samples"):
        model.llr_scores(x, 2, n_skip_samples=3, estimator="hybrid")


def test_row_generators_give_each_row_its_own_noise_whatever_its_batch():
    from dgmood.backbones.hvae import row_generators

    model = _dense().eval()
    X = torch.rand(6, 6, generator=_gen(3), dtype=torch.float64).numpy()
    X[3] = X[1]  # a repeated row draws the same noise as its twin
    eps = model.draw_noise(6, generator=row_generators(X, 0), dtype=torch.float64)
    alone = model.draw_noise(1, generator=row_generators(X[4:5], 0), dtype=torch.float64)
    assert all(torch.equal(a[4:5], b) for a, b in zip(eps, alone))
    assert all(torch.equal(a[1], a[3]) and not torch.equal(a[0], a[1]) for a in eps)
    other_seed = model.draw_noise(6, generator=row_generators(X, 1), dtype=torch.float64)
    assert not torch.equal(eps[0], other_seed[0])
    bits = binarize(torch.full((6, 1, 4, 4), 0.5), row_generators(X, 0))
    assert torch.equal(bits[1], bits[3]) and not torch.equal(bits[0], bits[1])
