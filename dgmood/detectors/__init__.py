"""One estimator per module; each a thin scikit-learn layer over a torch backbone."""

from .hvae_llr import HVAELikelihoodRatioDetector
from .input_complexity import InputComplexityDetector
from .likelihood import LikelihoodDetector, TypicalityDetector
from .lid_likelihood import LIDLikelihoodDetector
from .likelihood_ratio import LikelihoodRatioDetector

__all__ = ["HVAELikelihoodRatioDetector", "InputComplexityDetector", "LIDLikelihoodDetector", "LikelihoodDetector",
           "LikelihoodRatioDetector", "TypicalityDetector"]
