"""dgmood: out-of-distribution detection with deep generative models, the scikit-learn way."""

from .detectors import HVAELikelihoodRatioDetector, LIDLikelihoodDetector, LikelihoodDetector, TypicalityDetector

__version__ = "0.1.0"

__all__ = [
    "HVAELikelihoodRatioDetector",
    "LIDLikelihoodDetector",
    "LikelihoodDetector",
    "TypicalityDetector",
    "__version__",
]
