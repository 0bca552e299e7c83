"""The skorch trainer: schedules by progress, resumable checkpoints, time budget."""

import numpy as np
import pytest
import torch

from dgmood.backbones.flows import TabularFlow
from dgmood.backbones.training import train_module

X = np.random.default_rng(0).normal(size=(1000, 2)).astype(np.float32)


def test_progress_schedule_moves_within_the_first_epoch():
    seen = []

    def lr(p):
        seen.append(p)
        return 1e-3

    train_module(TabularFlow(2, n_layers=1, hidden=4), X, input_shape=(2,), max_epochs=3, batch_size=100,
                 schedules={"lr": lr}, patience=None, validation_fraction=0.1)
    per_epoch = 900 // 100
    assert len(seen) == 3 * per_epoch
    assert seen[0] == 0.0 and seen[1] > 0.0  # not stuck at 0 during epoch 1 (zero learning rate)
    assert np.all(np.diff(seen) > 0) and seen[-1] < 1.0


def test_module_attribute_schedule_is_applied():
    module = TabularFlow(2, n_layers=1, hidden=4)
    module.temperature = 0.0
    train_module(module, X, input_shape=(2,), max_epochs=2, batch_size=500, patience=None,
                 schedules={"temperature": lambda p: 10 * p}, validation_fraction=None)
    assert 0.0 < module.temperature < 10.0


def test_checkpoint_resume_counts_epochs(tmp_path):
    kw = dict(input_shape=(2,), batch_size=200, patience=None, checkpoint_dir=tmp_path, random_state=0)
    _, h1 = train_module(TabularFlow(2, n_layers=1, hidden=4), X, max_epochs=2, **kw)
    m2, h2 = train_module(TabularFlow(2, n_layers=1, hidden=4), X, max_epochs=3, **kw)
    assert len(h1) == 2 and len(h2) == 3  # one more epoch, history carried over
    assert h2[0]["train_loss"] == h1[0]["train_loss"]
    m3, h3 = train_module(TabularFlow(2, n_layers=1, hidden=4), X, max_epochs=3, **kw)
    assert len(h3) == 3  # nothing left: restored, not retrained
    for k, v in m2.state_dict().items():
        assert torch.equal(v, m3.state_dict()[k])


def test_time_budget_stops_training():
    _, history = train_module(TabularFlow(2, n_layers=1, hidden=4), X, input_shape=(2,), max_epochs=50,
                              time_budget=1e-6, patience=None)
    assert len(history) == 1


@pytest.mark.parametrize("n_rows", [130, 135, 142, 160])
def test_a_training_split_under_two_batches_still_trains(n_rows):
    """drop_last is decided on skorch's training split: 135 rows at batch 128 (121 after the 10 %
    validation split) once left no training batch and failed with KeyError 'train_loss'."""
    X = np.random.default_rng(0).normal(size=(n_rows, 2)).astype(np.float32)
    _, history = train_module(TabularFlow(2, n_layers=1, hidden=4), X, input_shape=(2,), max_epochs=1,
                              batch_size=128)
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])


def test_a_detector_fits_150_tabular_rows():
    """The user-visible form: fit holds out calibration rows first, so 150 rows reached the trainer
    as about 135 and crashed with KeyError 'train_loss'."""
    from dgmood import LikelihoodDetector

    X150 = np.random.default_rng(1).normal(size=(150, 3))
    det = LikelihoodDetector(backbone="flow", max_epochs=1, random_state=0).fit(X150)
    assert len(det.history_) == 1 and np.all(np.isfinite(det.score_samples(X150)))


def test_warns_when_training_ends_with_the_validation_loss_still_improving():
    from sklearn.exceptions import ConvergenceWarning

    with pytest.warns(ConvergenceWarning, match="still improving"):
        train_module(TabularFlow(2, n_layers=1, hidden=4), X, input_shape=(2,), max_epochs=2)


def test_default_epochs_on_tabular_rows_run_to_early_stopping():
    """Issue 13: the default stopped tabular training at a fixed 20 epochs, undertrained, with no sign.
    max_epochs="auto" allows 200 for tabular rows and early stopping ends the run."""
    from dgmood import LikelihoodDetector

    rng = np.random.default_rng(0)
    X2 = rng.normal(size=(400, 2)) @ np.array([[1.0, 0.9], [0.0, 0.4]])
    det = LikelihoodDetector(backbone_params={"hidden": 8, "n_layers": 2}, random_state=0).fit(X2)
    assert det.max_epochs == "auto" and 20 < len(det.history_) < 200  # past the old cap, stopped early


def test_weight_average_is_the_exponential_moving_average_of_the_steps():
    """avg_1 = theta_1, avg_k = d avg_(k-1) + (1 - d) theta_k; validation batches do not count."""
    from types import SimpleNamespace

    from dgmood.backbones.training import WeightAverage

    module = torch.nn.Linear(2, 1)
    net = SimpleNamespace(module_=module)
    cb = WeightAverage(decay=0.75)
    cb.on_train_begin(net)
    thetas = [torch.full((1, 2), v) for v in (1.0, 3.0, -2.0)]
    for theta in thetas:
        with torch.no_grad():
            module.weight.copy_(theta)
        cb.on_batch_end(net, training=True)
        with torch.no_grad():
            module.weight.add_(100.0)
        cb.on_batch_end(net, training=False)  # a validation batch: ignored
    cb.on_train_end(net)
    want = thetas[0]
    for theta in thetas[1:]:
        want = 0.75 * want + 0.25 * theta
    torch.testing.assert_close(module.weight.detach(), want)
