"""Pixel mutation for Ren et al.'s background model."""

import numpy as np
import pytest
import torch

from dgmood.backbones.mutation import MutatedInput, mutate_pixels


def test_mutation_rate_and_always_a_different_uniform_value():
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, 256, (200, 784), generator=g).float()
    out = mutate_pixels(k, 0.3, torch.Generator().manual_seed(1))
    changed = out != k
    assert abs(changed.float().mean().item() - 0.3) < 0.01
    assert out.dtype == k.dtype and out.min() >= 0 and out.max() <= 255 and torch.equal(out, out.round())
    allk = mutate_pixels(torch.full((60000,), 7.0), 1.0, torch.Generator().manual_seed(2))
    assert (allk != 7).all()  # never redrawn as itself
    counts = np.bincount(allk.long().numpy(), minlength=256)
    assert counts[7] == 0 and counts[np.arange(256) != 7].min() > 0.6 * 60000 / 255  # the other 255, evenly
    assert torch.equal(mutate_pixels(k, 0.0), k)
    assert torch.equal(mutate_pixels(k, 0.3, torch.Generator().manual_seed(1)), out)  # reproducible
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mutate_pixels(k, 1.5)


class _Record(torch.nn.Module):
    def forward(self, x):
        self.seen = x.clone()
        return x.flatten(1).sum(1)


def test_mutated_input_mutates_in_training_mode_only_with_fresh_draws():
    inner = _Record()
    wrapped = MutatedInput(inner, rate=0.5)
    x = torch.randint(0, 256, (4, 1, 8, 8)).float() / 255.0
    wrapped.train()
    wrapped(x)
    first = inner.seen
    wrapped(x)
    assert not torch.equal(first, x) and not torch.equal(first, inner.seen)
    assert torch.allclose(first * 255, (first * 255).round(), atol=1e-4)  # still on the 8-bit grid
    wrapped.eval()
    wrapped(x)
    assert torch.equal(inner.seen, x)
    with pytest.raises(ValueError, match="rate"):
        MutatedInput(inner, rate=-0.1)
