r"""Input complexity (Serra et al., "Input complexity and out-of-distribution detection with
likelihood-based generative models", ICLR 2020).

A generative model's codelength of an image mixes what is specific to the
training data with how complex the image is in general; a lossless
compressor measures the latter alone. Their difference,

.. math:: S(x) = \mathrm{bpd}(x) - C(x) / D,

is large when the model needs many more bits than a generic compressor:
:math:`\mathrm{bpd}(x) = -\log p(v)/(D \ln 2) + 8` is the model's codelength of
the 8-bit image (:func:`~dgmood.backbones.flows.bits_per_dim`; both terms
measure the same discrete :math:`x`) and :math:`C(x)` its compressed size in
bits (:func:`~dgmood.compression.compressed_bits`). High :math:`S` = OOD, so
``score_samples`` is :math:`-S`.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils._param_validation import StrOptions

from ..backbones.flows import bits_per_dim
from ..compression import CODECS, available_codecs, compressed_bits, require_codec
from ..metrics import auroc
from .likelihood import LikelihoodDetector

__all__ = ["InputComplexityDetector"]


class InputComplexityDetector(LikelihoodDetector):
    r"""Input-complexity score on a flow: :math:`-S(x) = C(x)/D - \mathrm{bpd}(x)` (Serra et al., 2020).

    Parameters
    ----------
    compressor : {"png", "zlib", "jpeg2000", "webp", "ensemble"}, default="png"
        The lossless codec giving :math:`C(x)` (:mod:`dgmood.compression`):
        PNG at level 9 by default (Serra et al.'s best single codec were
        PNG, JPEG 2000 and FLIF; FLIF is not on PyPI); "ensemble" takes the
        smallest of the codecs installed; JPEG 2000 and WebP need ``imagecodecs``.
    Other parameters as :class:`~dgmood.LikelihoodDetector`. Images only
    (``input_shape`` (C, H, W), 8-bit pixels): a compressor needs pixels.
    A hierarchical VAE's Bernoulli bound on binarized images is refused (no
    :meth:`log_prob` of the 8-bit image).

    Attributes
    ----------
    compressor_ : tuple of str
        The codecs used (more than one for "ensemble").
    Others as :class:`~dgmood.LikelihoodDetector`.
    """

    _parameter_constraints = {**LikelihoodDetector._parameter_constraints, "compressor": [StrOptions(set(CODECS))]}

    def __init__(
        self,
        backbone="flow",
        *,
        compressor="png",
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
        super().__init__(backbone, backbone_params=backbone_params, input_shape=input_shape,
                         data_range=data_range, contamination=contamination,
                         validation_fraction=validation_fraction, device=device, batch_size=batch_size,
                         max_epochs=max_epochs, lr=lr, memory=memory, random_state=random_state, verbose=verbose)
        self.compressor = compressor

    def _check_settings(self) -> None:
        require_codec(self.compressor)

    def _fit_backbone(self, X_train):
        """Images only: refused before any training."""
        if len(self.input_shape_) != 3 or self.data_range_ == "real":
            raise ValueError(
                "InputComplexityDetector scores images: it needs input_shape (C, H, W) and 8-bit pixels "
                f"(uint8, or floats k/255 with data_range='unit'); got input_shape {self.input_shape_} and "
                f"data_range {self.data_range_!r}."
            )
        super()._fit_backbone(X_train)

    def _prepare(self, X_train, X_cal):
        self.compressor_ = available_codecs() if self.compressor == "ensemble" else (self.compressor,)

    def _batch_components(self, module, xb, generators, n_valid):
        log_prob = module.log_prob(xb, generator=generators[0], shared_noise=True)
        pixels = torch.round(xb[:n_valid] * 255.0).to(torch.uint8).cpu().numpy()
        d = int(np.prod(self.input_shape_))
        c_bits = compressed_bits(pixels.reshape(n_valid, -1), self.input_shape_, self.compressor)
        return {"bits_per_dim": bits_per_dim(log_prob, d)[:n_valid],
                "complexity_bpd": torch.as_tensor(c_bits / d, dtype=torch.float64)}

    def _score_from_components(self, components):
        return components["complexity_bpd"] - components["bits_per_dim"]

    def benchmark_fields(self, components_id, components_ood):
        """AUROC of the model's bits/dim alone (the likelihood) and of the compressed size alone, and the codec."""
        return {
            "likelihood_auroc": auroc(-components_id["bits_per_dim"], -components_ood["bits_per_dim"]),
            "complexity_auroc": auroc(components_id["complexity_bpd"], components_ood["complexity_bpd"]),
            "compressor": list(self.compressor_),
            "mean_bits_per_dim_id": float(np.mean(components_id["bits_per_dim"])),
            "mean_complexity_bpd_id": float(np.mean(components_id["complexity_bpd"])),
        }
