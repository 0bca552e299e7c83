"""Shipped weights: checksum, architecture, and the paradox they exist to show."""

import math
import shutil

import numpy as np
import pytest
import torch

from dgmood import pretrained
from dgmood.backbones.hvae import binarize
from dgmood.datasets import load_dataset
from dgmood.pretrained import REGISTRY, load_pretrained


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_shipped_weights_load_with_their_checksum(name):
    module, spec = load_pretrained(name)
    meta = spec.metadata()
    assert meta["sha256"] == pretrained.sha256(spec.weights_path)
    assert spec.weights_path.stat().st_size < 20e6
    assert len(meta["heldout_train_indices"]) == 5000
    assert not module.training


def test_shipped_fashion_mnist_backbones_hold_out_the_same_images():
    """Every detector calibrates on images none of the shipped backbones saw, whichever it uses."""
    ref = REGISTRY["fmnist-flow"].metadata()["heldout_train_indices"]
    shipped = [name for name, spec in REGISTRY.items() if spec.path is None and spec.dataset == "fashion_mnist"]
    assert {"fmnist-flow", "fmnist-flow-background", "fmnist-hvae", "fmnist-diffusion"} <= set(shipped)
    for name in shipped:
        assert REGISTRY[name].metadata()["heldout_train_indices"] == ref, name


def test_the_background_flow_was_trained_on_mutated_images_at_its_registered_rate():
    spec = REGISTRY["fmnist-flow-background"]
    meta = spec.metadata()
    assert meta["mutation_rate"] == spec.train["mutation_rate"] == 0.3
    assert meta["architecture"] == {k: list(v) if isinstance(v, tuple) else v
                                    for k, v in REGISTRY["fmnist-flow"].kwargs.items()}
    metrics = meta["test_metrics"]
    # it spent capacity on the mutations: clean test images cost it more bits than the clean-data flow
    clean = REGISTRY["fmnist-flow"].metadata()["test_metrics"]["fashion_mnist_test_bits_per_dim"]
    assert metrics["fashion_mnist_test_bits_per_dim"] > clean


def test_corrupt_weights_are_refused(tmp_path, monkeypatch):
    spec = REGISTRY["fmnist-hvae"]
    shutil.copy(spec.metadata_path, tmp_path / spec.metadata_path.name)
    (tmp_path / spec.weights_path.name).write_bytes(spec.weights_path.read_bytes()[:-10] + b"0123456789")
    monkeypatch.setattr(pretrained, "_WEIGHTS", tmp_path)
    with pytest.raises(ValueError, match="Checksum mismatch"):
        load_pretrained("fmnist-hvae")
    (tmp_path / spec.weights_path.name).unlink()
    with pytest.raises(FileNotFoundError, match="train_pretrained.py"):
        load_pretrained("fmnist-hvae")


def test_shipped_hvae_shows_the_paradox():
    """The HVAE's ELBO ranks MNIST above FashionMNIST (AUROC of -ELBO, MNIST positive, < 0.5)."""
    from sklearn.metrics import roc_auc_score

    module, _ = load_pretrained("fmnist-hvae")
    X_id, _ = load_dataset("fashion_mnist", "test", n=100, random_state=0)
    X_ood, _ = load_dataset("mnist", "test", n=100, random_state=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x = torch.as_tensor(np.r_[X_id, X_ood], dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
        elbo = module.elbo(binarize(x, g), generator=g).numpy()
    y = np.r_[np.zeros(100), np.ones(100)]
    assert roc_auc_score(y, -elbo) < 0.4


def test_shipped_hvae_bounds_are_ordered_and_its_layer_kls_finite():
    """ELBO <= IWAE_4 <= IWAE_16 on average over 64 FashionMNIST test images (within 3 standard errors
    of each paired difference), and every layer's KL (analytic, per image) is finite and positive."""
    module, _ = load_pretrained("fmnist-hvae")
    X, _ = load_dataset("fashion_mnist", "test", n=64, random_state=3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x = binarize(torch.as_tensor(X, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0, g)
        bounds = [module.elbo(x, generator=g)] + [module.iwae(x, s, generator=g) for s in (4, 16)]
        _, kls = module._terms(x, generator=g, analytic_kl=True)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        diff = (hi - lo).double()
        assert diff.mean() > -3 * diff.std() / math.sqrt(len(diff)), diff.mean()
    assert (bounds[2] - bounds[0]).mean() > 0.5  # importance weighting tightens the bound visibly
    per_layer = torch.stack([kl.flatten(1).sum(1) for kl in kls], 1)
    assert per_layer.shape == (64, module.n_latent_layers)
    assert torch.isfinite(per_layer).all() and (per_layer.mean(0) > 0).all()
