"""dgmood: out-of-distribution detection with deep generative models, the scikit-learn way."""

from .detectors import (
    HVAELikelihoodRatioDetector,
    InputComplexityDetector,
    LIDLikelihoodDetector,
    LikelihoodDetector,
    LikelihoodRatioDetector,
    TypicalityDetector,
)

__version__ = "0.1.0"

__all__ = [
    "HVAELikelihoodRatioDetector",
    "InputComplexityDetector",
    "LIDLikelihoodDetector",
    "LikelihoodDetector",
    "LikelihoodRatioDetector",
    "TypicalityDetector",
    "__version__",
]
