"""Getting a fitted backbone: train a named architecture, load a shipped one, or take a user's module.

:func:`fit_backbone` is a plain function, so a detector with two models (a
likelihood-ratio detector and its background model) calls it twice. The
names a detector's ``backbone=`` accepts live in :data:`BACKBONES` (one line
per architecture family); shipped weights in :data:`dgmood.pretrained.REGISTRY`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import joblib
import numpy as np
import torch

from .training import train_module

__all__ = ["BackboneKind", "BACKBONES", "FittedBackbone", "check_backbone_name", "fit_backbone", "fit_mutated_backbone",
           "train_state"]


def _flow_spec(input_shape, params):
    from .flows import flow_spec

    return flow_spec(input_shape, params)


def _hvae_spec(input_shape, params):
    from .hvae import HierarchicalVAE

    return HierarchicalVAE, dict(input_shape=tuple(int(s) for s in input_shape), **params)


def _diffusion_spec(input_shape, params):
    from .diffusion import diffusion_spec

    return diffusion_spec(input_shape, params)


def _hvae_train_kwargs(params):
    from .schedules import hvae_schedules

    return {"schedules": hvae_schedules(float(params.get("free_bits", 2.0)))}


def _no_train_kwargs(params):
    return {}


@dataclass(frozen=True)
class BackboneKind:
    """An architecture family that ``backbone="<name>"`` trains from scratch.

    ``spec(input_shape, params)`` returns ``(class, kwargs)`` building a fresh
    module; ``train_kwargs(params)`` extra arguments of
    :func:`~dgmood.backbones.training.train_module` (e.g. KL schedules).
    """

    name: str
    spec: Callable[[tuple, dict], tuple[type, dict]]
    train_kwargs: Callable[[dict], dict] = field(default=_no_train_kwargs)


#: Architecture families by the name a detector's ``backbone=`` takes.
BACKBONES: dict[str, BackboneKind] = {
    "flow": BackboneKind("flow", _flow_spec),
    "hvae": BackboneKind("hvae", _hvae_spec, _hvae_train_kwargs),
    "diffusion": BackboneKind("diffusion", _diffusion_spec),
}


@dataclass
class FittedBackbone:
    """What :func:`fit_backbone` returns: the module (CPU, eval mode), its training
    history (empty when nothing was trained) and a shipped backbone's metadata (else empty)."""

    module: torch.nn.Module
    history: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)


def train_state(builder_args: tuple, X: np.ndarray, train_kwargs: dict) -> tuple[dict, list]:
    """Build a module from ``builder_args = (class, kwargs)`` and train it on ``X``.

    Returns the CPU ``state_dict`` and the history. Module-level and pure, so
    that ``joblib.Memory`` caches it, keyed by architecture, data and settings.
    The global torch RNG is restored afterwards.
    """
    build, kwargs = builder_args
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train_kwargs["random_state"])
        module = build(**kwargs)
        module, history = train_module(module, X, **train_kwargs)
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    return state, history


def _memory(memory) -> joblib.Memory:
    if memory is None or isinstance(memory, str):
        return joblib.Memory(location=memory, verbose=0)
    return memory


def check_backbone_name(backbone, names: tuple[str, ...], pretrained_kinds, who: str = "This detector") -> None:
    """A ``ValueError`` naming the valid choices (and the closest one) for a backbone string that is none.

    Checked first in ``fit``, before anything is inferred from the name (such as ``input_shape``).
    Modules pass; their members are checked against the detector's protocol after fitting.
    """
    from ..pretrained import as_registered

    backbone = as_registered(backbone)  # a stored backbone's path: must exist, then it is checked by kind
    if not isinstance(backbone, str):
        if isinstance(backbone, torch.nn.Module):
            return
        raise ValueError(f"{who}: backbone must be a name, 'pretrained:<name>' or an nn.Module, "
                         f"got {type(backbone).__name__}.")
    import difflib

    from ..pretrained import REGISTRY

    shipped = [f"pretrained:{name}" for name, spec in REGISTRY.items()
               if spec.kind in pretrained_kinds and spec.path is None]
    valid = [n for n in names if n in BACKBONES] + shipped
    if backbone in valid:
        return
    spec = REGISTRY.get(backbone.split(":", 1)[1]) if backbone.startswith("pretrained:") else None
    if spec is not None:  # shipped or registered
        if spec.kind in pretrained_kinds:
            return
        raise ValueError(f"{who} needs a backbone of kind {sorted(pretrained_kinds)}; {backbone!r} is a "
                         f"{spec.kind!r}. "
                         f"Valid: {valid} or an nn.Module.")
    close = difflib.get_close_matches(backbone, valid, n=1, cutoff=0.6)
    raise ValueError(f"{who}: unknown backbone {backbone!r}"
                     f"{f' (did you mean {close[0]!r}?)' if close else ''}; valid: {valid} or an nn.Module.")


def fit_backbone(
    backbone: str | torch.nn.Module,
    X_train: np.ndarray,
    *,
    input_shape: tuple[int, ...],
    params: dict | None,
    train_kwargs: dict,
    names: tuple[str, ...],
    pretrained_kinds: frozenset[str] | set[str],
    memory=None,
    who: str = "This detector",
) -> FittedBackbone:
    """Fit the backbone a detector was given.

    Parameters
    ----------
    backbone : str or nn.Module
        A name in ``names`` (trained on ``X_train`` from scratch, as
        :data:`BACKBONES` says), ``"pretrained:<name>"`` (a shipped or
        registered backbone of one of ``pretrained_kinds``; nothing trained),
        the path of a stored backbone's ``.pt`` (:mod:`dgmood.backbones.store`;
        nothing trained) or a module (deep-copied,
        never moved; trained on ``X_train`` unless ``train_kwargs["max_epochs"]``
        is 0).
    X_train : floats in the module's input range, shape (n, prod(input_shape)).
    input_shape : the shape of one sample.
    params : architecture arguments for a named backbone.
    train_kwargs : arguments of :func:`~dgmood.backbones.training.train_module`
        (``random_state`` included); a named family adds its own.
    memory : None, str or ``joblib.Memory``: cache of trained named backbones.
    who : the detector's name, for error messages.
    """
    check_backbone_name(backbone, names, pretrained_kinds, who)
    from ..pretrained import as_registered

    backbone = as_registered(backbone)
    if isinstance(backbone, torch.nn.Module):
        module = copy.deepcopy(backbone).cpu()  # never move the user's module
        history: list = []
        if train_kwargs["max_epochs"] > 0:
            with torch.random.fork_rng(devices=[]):
                module, history = train_module(module, X_train, **train_kwargs)
        return FittedBackbone(module.cpu().eval(), history)
    if backbone.startswith("pretrained:"):
        from ..pretrained import load_pretrained

        module, spec = load_pretrained(backbone.split(":", 1)[1])
        if tuple(spec.input_shape) != tuple(input_shape):
            raise ValueError(f"{backbone!r} expects input_shape {spec.input_shape}, got {tuple(input_shape)}.")
        return FittedBackbone(module.eval(), [], spec.metadata())
    if int(train_kwargs["max_epochs"]) < 1:
        raise ValueError(
            f"{who}: backbone={backbone!r} is trained from scratch and needs max_epochs >= 1, got "
            f"{train_kwargs['max_epochs']}. To use a module that is already trained, pass it as backbone= "
            "with max_epochs=0, or a shipped one as 'pretrained:<name>'."
        )
    kind = BACKBONES[backbone]
    params = dict(params or {})
    build, kwargs = kind.spec(tuple(input_shape), params)
    kwargs_all = {**train_kwargs, **kind.train_kwargs(params)}
    state, history = _memory(memory).cache(train_state)((build, kwargs), X_train, kwargs_all)
    module = build(**kwargs)
    module.load_state_dict(state)
    return FittedBackbone(module.eval(), history)


def _mutated(build, kwargs: dict, rate: float, kind: str) -> torch.nn.Module:
    """``MutatedInput(build(**kwargs), rate, kind)``: module-level, so that ``joblib.Memory`` keys on it."""
    from .mutation import MutatedInput

    return MutatedInput(build(**kwargs), rate, kind)


def fit_mutated_backbone(
    backbone: str | torch.nn.Module,
    X_train: np.ndarray,
    *,
    rate: float,
    input_shape: tuple[int, ...],
    params: dict | None,
    train_kwargs: dict,
    memory=None,
) -> FittedBackbone:
    """Train a fresh copy of ``backbone`` on ``X_train`` with its inputs mutated at ``rate``.

    The background model of Ren et al.'s likelihood ratio: the module is wrapped in
    :class:`~dgmood.backbones.mutation.MutatedInput` (fresh mutations per batch,
    training mode only) and trained by :func:`~dgmood.backbones.training.train_module`
    with ``train_kwargs``; the returned module is the unwrapped one, scored on clean inputs.

    Parameters
    ----------
    backbone : a family name of :data:`BACKBONES` (built with ``params``; cached by
        ``memory`` like :func:`fit_backbone`) or an untrained module (deep-copied, never moved).
    rate : share of entries mutated, in (0, 1): 8-bit pixels when ``input_shape`` is (C, H, W)
        (:func:`~dgmood.backbones.mutation.mutate_pixels`), else features of rows
        (:func:`~dgmood.backbones.mutation.mutate_rows`).
    """
    kind = "pixels" if len(input_shape) == 3 else "rows"
    if isinstance(backbone, torch.nn.Module):
        from .mutation import MutatedInput

        with torch.random.fork_rng(devices=[]):
            wrapped, history = train_module(MutatedInput(copy.deepcopy(backbone).cpu(), rate, kind), X_train,
                                            **train_kwargs)
        return FittedBackbone(wrapped.module.cpu().eval(), history)
    family = BACKBONES[backbone]
    params = dict(params or {})
    build, kwargs = family.spec(tuple(input_shape), params)
    builder = (_mutated, dict(build=build, kwargs=kwargs, rate=float(rate), kind=kind))
    state, history = _memory(memory).cache(train_state)(builder, X_train,
                                                        {**train_kwargs, **family.train_kwargs(params)})
    module = _mutated(build, kwargs, rate, kind)
    module.load_state_dict(state)
    return FittedBackbone(module.module.eval(), history)
