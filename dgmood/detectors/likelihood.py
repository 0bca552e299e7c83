r"""Likelihood baselines: :class:`LikelihoodDetector` and :class:`TypicalityDetector`.

* Likelihood: :math:`s(x) = \log p(x)` of a normalizing flow (nats). Trained on
  FashionMNIST it scores MNIST *higher* (Nalisnick et al., 2019, "Do deep
  generative models know what they don't know?"): the paradox the rest of
  dgmood fixes.
* Typicality (Nalisnick et al., 2019, "Detecting out-of-distribution inputs to
  deep generative models using typicality"):
  :math:`s(x) = -\left| -\log p(x) - \hat H \right|` with :math:`\hat H` the mean
  negative log-likelihood of held-out in-distribution data (a single-sample
  version of their test).
"""

from __future__ import annotations

import numpy as np

from ..backbones.protocols import DensityModel
from ..base import BaseDetector
from ..metrics import auroc

__all__ = ["LikelihoodDetector", "TypicalityDetector"]


class LikelihoodDetector(BaseDetector):
    r"""Out-of-distribution detection by a normalizing flow's log-likelihood.

    ``score_samples(X) = log p(x)`` in nats (higher = more in-distribution).

    Parameters
    ----------
    backbone : "flow", "pretrained:fmnist-flow" or an ``nn.Module``
        ``"flow"`` trains an image flow (when ``input_shape`` is (C, H, W)) or a
        tabular coupling flow; a module must follow
        :class:`~dgmood.backbones.protocols.DensityModel` (``input_shape`` and
        ``log_prob(x, generator=None, shared_noise=False)``), checked in ``fit``.
    backbone_params : dict, optional
        Architecture arguments of the flow (e.g. ``{"hidden": 64}``).
    input_shape : tuple, optional
        Shape of one image, e.g. (1, 28, 28); X stays flattened.
    data_range : {"auto", "uint8", "unit", "real"}
        "auto": uint8 arrays are 8-bit pixels, other images floats in [0, 1],
        tabular data any real values.
    contamination : "auto" or float in (0, 0.5]
        Share of held-out in-distribution data to flag (``offset_``).
    validation_fraction : float in (0, 1)
        Share of the fit data held out from the backbone to set ``offset_``.
    device : "auto", "cpu", "cuda", "cuda:N" or torch.device
    batch_size, max_epochs, lr : training and scoring settings. ``max_epochs="auto"`` (default): 200
        epochs for tabular rows, 20 for images, ended early once the loss on a
        10 % validation split stops improving (patience 5); a run that ends
        still improving warns (``ConvergenceWarning``).
    memory : None, str or joblib.Memory
        Cache of trained backbones (keyed by architecture, data and training
        settings): a grid over detector-only parameters trains once.
    random_state : int, RandomState or None
    verbose : int
        0 silent, 1 progress bars.

    Attributes
    ----------
    backbone_ : the fitted torch module (CPU)
    offset_ : float
    history_ : list of dict (per-epoch losses; empty for a pretrained backbone)
    calibration_scores_ : held-out scores used for ``offset_``
    """

    _backbone_names = ("flow",)
    _pretrained_kinds = frozenset({"flow"})
    _backbone_protocol = DensityModel

    def __init__(
        self,
        backbone="flow",
        *,
        backbone_params=None,
        input_shape=None,
        data_range="auto",
        contamination="auto",
        validation_fraction=0.1,
        device="auto",
        batch_size=128,
        max_epochs="auto",
        lr=1e-3,
        memory=None,
        random_state=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.backbone_params = backbone_params
        self.input_shape = input_shape
        self.data_range = data_range
        self.contamination = contamination
        self.validation_fraction = validation_fraction
        self.device = device
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.lr = lr
        self.memory = memory
        self.random_state = random_state
        self.verbose = verbose

    def _batch_components(self, module, xb, generators, n_valid):
        return {"log_prob": module.log_prob(xb, generator=generators[0], shared_noise=True)}

    def benchmark_fields(self, components_id, components_ood):
        """``likelihood_auroc``: the AUROC of :math:`\\log p` alone (OOD positive)."""
        return {"likelihood_auroc": auroc(components_id["log_prob"], components_ood["log_prob"])}

    def _score_from_components(self, components):
        return components["log_prob"]


class TypicalityDetector(LikelihoodDetector):
    r"""Typicality test on a flow (Nalisnick et al., 2019).

    :math:`s(x) = -|{-\log p(x)} - \hat H|`, :math:`\hat H` = mean negative
    log-likelihood of the held-out fit data (``entropy_``). Inputs that are
    *too likely* are flagged as well as unlikely ones. Same parameters as
    :class:`LikelihoodDetector`.

    Attributes
    ----------
    entropy_ : float
        :math:`\hat H` in nats.
    """

    def _calibrate(self, components):
        self.entropy_ = float(np.mean(-components["log_prob"]))

    def _score_from_components(self, components):
        return -np.abs(-components["log_prob"] - self.entropy_)
