"""Training schedules of the hierarchical VAE: KL warm-up and free bits.

A schedule maps the fraction ``p`` in [0, 1] of training done to the value of
a module attribute (``beta``, ``free_bits`` of
:class:`~dgmood.backbones.hvae.HierarchicalVAE`); see the ``schedules``
argument of :func:`~dgmood.backbones.training.train_module`. The schedules are
module-level functions, parametrized with ``functools.partial``, so that a
``joblib.Memory`` cache can hash them.
"""

from __future__ import annotations

import functools

__all__ = ["hvae_schedules"]


def _beta_warmup(p: float) -> float:
    """KL weight: linear 0 -> 1 over the first 20 % of training."""
    return min(1.0, p / 0.2)


def _free_bits_decay(p: float, nats: float) -> float:
    """Free bits: ``nats`` for the first 20 % of training, then linearly to 0 at 40 %."""
    return nats * (1.0 if p < 0.2 else max(0.0, 1.0 - (p - 0.2) / 0.2))


def _free_bits_const(p: float, nats: float) -> float:
    """Free bits held at ``nats`` for the whole run (``hvae_schedules(hold=True)``)."""
    return nats


def hvae_schedules(free_bits: float = 2.0, hold: bool = False) -> dict:
    """The reference KL warm-up and free-bits schedule in fractions of training.

    hvae-oodd's 1000-epoch schedule scaled to any length (as used by
    ``scripts/train_pretrained.py``): beta 0 -> 1 over the first 20 %; free
    bits constant at ``free_bits`` nats for 20 %, then linearly to 0 by 40 %.
    With ``hold=True`` the free bits never decay (for short runs, where the
    decay lets the lowest latent collapse before the decoder can use it).

    Returns
    -------
    dict
        ``{"beta": fn, "free_bits": fn}``, each ``fn(p) -> float``.
    """
    fb = _free_bits_const if hold else _free_bits_decay
    return {"beta": _beta_warmup, "free_bits": functools.partial(fb, nats=float(free_bits))}
