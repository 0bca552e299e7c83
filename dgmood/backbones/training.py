"""Unsupervised training of backbones through skorch.

Every backbone's ``forward(x)`` returns a per-sample loss in nats (e.g.
``-log p(x)`` for a flow, the free-bits ELBO loss for an HVAE);
:class:`UnsupervisedNet` minimizes its mean. The epoch loop, validation split,
progress bar, early stopping, checkpoints and LR schedule are skorch's.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from skorch import NeuralNet
from skorch.callbacks import (
    Callback,
    Checkpoint,
    EarlyStopping,
    GradientNormClipping,
    LoadInitState,
    ProgressBar,
)
from skorch.dataset import ValidSplit

from .device import resolve_device

__all__ = [
    "UnsupervisedNet",
    "TimeBudget",
    "ProgressSchedule",
    "WeightAverage",
    "train_module",
    "resolve_device",
]


class UnsupervisedNet(NeuralNet):
    """skorch ``NeuralNet`` whose module returns per-sample losses; the loss is their mean.

    A non-finite loss stops training with :class:`FloatingPointError` instead of
    producing a model that scores NaN.
    """

    def __init__(self, module, *args, criterion=torch.nn.Identity, **kwargs):
        super().__init__(module, *args, criterion=criterion, **kwargs)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        loss = y_pred.mean()
        if not torch.isfinite(loss):
            phase = "training" if training else "validation"
            raise FloatingPointError(
                f"The {phase} loss became {loss.item()} at epoch {len(self.history)}; "
                "lower the learning rate (lr) or check the input data for extreme values."
            )
        return loss

    def get_iterator(self, dataset, training=False):
        """The training iterator drops a last partial batch only when the training split holds more than
        one batch: decided on the split skorch made, not on the data before its validation split (a
        training set a little over one batch would otherwise leave no batch at all)."""
        if not training:
            return super().get_iterator(dataset, training)
        kwargs = self.get_params_for("iterator_train")
        kwargs.setdefault("batch_size", self.batch_size)
        kwargs["drop_last"] = len(dataset) > kwargs["batch_size"]
        return self.iterator_train(dataset, **kwargs)


class TimeBudget(Callback):
    """Stop training after the epoch during which ``seconds`` of wall time have passed."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_begin(self, net, **kwargs):
        self.start_ = time.monotonic()

    def on_epoch_end(self, net, **kwargs):
        if time.monotonic() - self.start_ >= self.seconds:
            raise KeyboardInterrupt  # skorch ends fit() cleanly on this


class ProgressSchedule(Callback):
    """Set module attributes from training progress ``p`` in [0, 1] before each batch.

    ``p = max(epoch / max_epochs, elapsed / time_budget)`` (whichever budget ends
    training first), so a schedule written in fractions of training (e.g. KL
    warm-up over the first 20 %) holds whether training is bounded by epochs or
    by time. ``schedules`` maps an attribute name of ``net.module_`` (or
    ``"lr"``, the optimizer's learning rate) to a function of ``p``.
    """

    def __init__(self, schedules: dict[str, Callable[[float], float]], time_budget: float | None = None):
        self.schedules = schedules
        self.time_budget = time_budget

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self.start_ = time.monotonic()
        self.epoch_ = 1
        self.batches_per_epoch_ = None
        self.batch_ = 0
        self.epoch_start_batch_ = 0

    def on_epoch_begin(self, net, dataset_train=None, **kwargs):
        self.epoch_start_batch_ = self.batch_
        self.epoch_ = len(net.history)  # current epoch, 1-based, counting resumed epochs
        if dataset_train is not None and self.batches_per_epoch_ is None:
            self.batches_per_epoch_ = max(len(dataset_train) // net.batch_size, 1)

    def on_epoch_end(self, net, **kwargs):
        self.batches_per_epoch_ = max(self.batch_ - self.epoch_start_batch_, 1)

    def progress(self, net) -> float:
        frac_epoch = 0.0
        if self.batches_per_epoch_:
            frac_epoch = (self.batch_ - self.epoch_start_batch_) / self.batches_per_epoch_
        total = getattr(net, "total_epochs_", None) or net.max_epochs
        p = (self.epoch_ - 1 + frac_epoch) / max(total, 1)
        if self.time_budget:
            p = max(p, (time.monotonic() - self.start_) / self.time_budget)
        return float(min(max(p, 0.0), 1.0))

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        if not training:
            return
        p = self.progress(net)
        for name, fn in self.schedules.items():
            if name == "lr":  # the optimizer's learning rate
                for group in net.optimizer_.param_groups:
                    group["lr"] = float(fn(p))
            else:
                setattr(net.module_, name, float(fn(p)))
        self.batch_ += 1


class WeightAverage(Callback):
    r"""Exponential moving average of the module's parameters over training steps; copied into the
    module when training ends (diffusion models sample and score better with it).

    :math:`\bar\theta \leftarrow d\,\bar\theta + (1 - d)\,\theta` after every optimizer
    step (``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn(decay)``);
    buffers are copied as they are. A resumed run restarts the average from the
    checkpoint's weights (the average is not checkpointed).
    """

    def __init__(self, decay: float = 0.999):
        self.decay = decay

    def on_train_begin(self, net, **kwargs):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.average_ = AveragedModel(net.module_, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=False)

    def on_batch_end(self, net, batch=None, training=False, **kwargs):
        if training:
            self.average_.update_parameters(net.module_)

    def on_train_end(self, net, **kwargs):
        with torch.no_grad():
            for target, source in zip(net.module_.parameters(), self.average_.module.parameters()):
                target.copy_(source)


def _as_float_array(X: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    return X.reshape(len(X), *input_shape)


def train_module(
    module: torch.nn.Module,
    X: np.ndarray,
    *,
    input_shape: tuple[int, ...],
    max_epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 128,
    device: str | torch.device = "auto",
    validation_fraction: float | None = 0.1,
    patience: int | None = 5,
    checkpoint_dir: str | Path | None = None,
    time_budget: float | None = None,
    schedules: dict[str, Callable[[float], float]] | None = None,
    clip_grad_norm: float | None = 100.0,
    ema_decay: float | None = None,
    weight_decay: float = 0.0,
    verbose: int = 0,
    random_state: int = 0,
) -> tuple[torch.nn.Module, list[dict]]:
    """Train ``module`` on ``X`` (floats in the module's input range) with skorch.

    Parameters
    ----------
    module : nn.Module whose ``forward`` returns per-sample losses.
    X : array of shape ``(n, prod(input_shape))`` or ``(n, *input_shape)``.
    validation_fraction : held-out share for ``valid_loss`` and early stopping
        (None: no validation split).
    patience : early-stopping patience in epochs on ``valid_loss`` (None: off).
    checkpoint_dir : write parameters, optimizer and history there after every
        epoch, and resume from them when they exist (skorch ``Checkpoint`` +
        ``LoadInitState``); ``max_epochs`` counts the resumed epochs too.
    time_budget : seconds after which training stops at the end of an epoch.
    schedules : module attributes set from training progress
        (see :class:`ProgressSchedule`).
    ema_decay : if set, the returned module holds the exponential moving average of the
        parameters with this decay per step (:class:`WeightAverage`).
    weight_decay : L2 penalty of Adam (``torch.optim.Adam(weight_decay=...)``: ``weight_decay * w``
        added to each gradient); 0 (default) none.
    verbose : 0 silent; 1 a progress bar per epoch and the epoch table.

    Returns
    -------
    module : the trained module (in eval mode, on ``device``).
    history : skorch's history as a list of per-epoch dicts (batches dropped).
    """
    torch.manual_seed(random_state)  # callers fork the RNG (torch.random.fork_rng); numpy's is untouched
    dev = resolve_device(device)
    data = _as_float_array(X, input_shape)
    use_valid = bool(validation_fraction) and len(data) >= 10
    callbacks: list = []
    if verbose:
        callbacks.append(ProgressBar())
    if clip_grad_norm:
        callbacks.append(GradientNormClipping(clip_grad_norm))
    if use_valid and patience:
        callbacks.append(EarlyStopping(patience=patience, load_best=True))
    if schedules:
        callbacks.append(ProgressSchedule(schedules, time_budget))
    if time_budget:
        callbacks.append(TimeBudget(time_budget))
    if ema_decay:
        callbacks.append(WeightAverage(ema_decay))
    done = 0
    if checkpoint_dir is not None:
        # every epoch (monitor=None), so a killed run resumes where it stopped
        checkpoint = Checkpoint(dirname=str(checkpoint_dir), monitor=None, f_criterion=None, load_best=False)
        callbacks += [checkpoint, LoadInitState(checkpoint)]
        history_file = Path(checkpoint_dir) / "history.json"
        if history_file.is_file():
            import json

            done = len(json.loads(history_file.read_text()))
    net = UnsupervisedNet(
        module,
        max_epochs=max(max_epochs - done, 0),
        lr=lr,
        batch_size=batch_size,
        optimizer=torch.optim.Adam,
        optimizer__weight_decay=float(weight_decay),
        iterator_train__shuffle=True,
        train_split=ValidSplit(validation_fraction, stratified=False, random_state=random_state)
        if use_valid
        else None,
        callbacks=callbacks,
        device=str(dev),
        verbose=int(verbose),
    )
    net.total_epochs_ = max_epochs
    if net.max_epochs > 0:
        net.fit(data, None)
    else:  # nothing left to train: just restore the checkpoint
        net.initialize()
        for cb in callbacks:
            if isinstance(cb, LoadInitState):
                cb.on_train_begin(net)
    train_loss = net.history[-1, "train_loss"] if len(net.history) else math.nan
    if not math.isfinite(train_loss):
        raise FloatingPointError("Training ended with a non-finite loss; lower lr.")
    history = [{k: v for k, v in row.items() if k != "batches"} for row in net.history]
    if use_valid and max_epochs >= 2 and net.max_epochs > 0 and len(history) >= max_epochs \
            and history[-1].get("valid_loss_best"):
        warnings.warn(
            f"Training ran all max_epochs={max_epochs} epochs and the validation loss was still improving "
            f"at the last one ({history[-1]['valid_loss']:.4g}): the backbone may be undertrained; raise "
            "max_epochs (early stopping ends training once the validation loss stops improving).",
            ConvergenceWarning,
            stacklevel=2,
        )
    module = net.module_
    module.eval()
    return module, history
