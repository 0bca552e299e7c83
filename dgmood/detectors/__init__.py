"""One estimator per module; each a thin scikit-learn layer over a torch backbone."""

from .likelihood import LikelihoodDetector, TypicalityDetector

__all__ = ["LikelihoodDetector", "TypicalityDetector"]
