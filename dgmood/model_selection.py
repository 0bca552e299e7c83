"""Scorers for model selection on labelled data, ``y = +1`` for ID and ``-1`` for OOD.

:func:`make_ood_scorer` turns a metric of :mod:`dgmood.metrics` (OOD as the
positive class) into a ``scorer(estimator, X, y)`` for
:class:`~sklearn.model_selection.GridSearchCV` and friends. Labels follow
``predict`` of outlier detectors. :class:`IDTrainKFold` splits labelled data
so that no OOD row reaches a training fold and every test fold holds both
classes. :mod:`dgmood.metrics` re-exports :func:`make_ood_scorer`.

A search that cannot leak OOD rows into any fit, the final refit included::

    from sklearn.model_selection import GridSearchCV
    from dgmood.model_selection import IDTrainKFold, make_ood_scorer

    search = GridSearchCV(detector, {"contamination": [0.01, 0.05]},
                          scoring=make_ood_scorer("balanced_accuracy"), cv=IDTrainKFold(3))
    search.fit(X, y, sample_weight=(y == 1))  # y: +1 ID, -1 OOD; weight 0 keeps OOD rows out of fit

The splitter keeps OOD rows out of the folds' fits; ``sample_weight`` keeps
them out of the refit on all of ``X``, which ``GridSearchCV`` makes with
every row.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from numpy.typing import ArrayLike
from sklearn.model_selection import StratifiedKFold

__all__ = ["make_ood_scorer", "IDTrainKFold"]


def _metric_table() -> dict:
    # imported on use: dgmood.metrics re-exports make_ood_scorer from this module,
    # so a module-level import would be circular
    from .metrics import METRICS

    return METRICS


def _split_by_label(y_true: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    labels = set(np.unique(y).tolist())
    if not labels <= {1, -1}:
        raise ValueError(
            "make_ood_scorer expects y with +1 for in-distribution and -1 for "
            f"OOD samples; got labels {sorted(labels, key=str)}."
        )
    if labels != {1, -1}:
        raise ValueError(
            "make_ood_scorer needs both classes in every evaluated split (+1 ID "
            f"and -1 OOD); got only {sorted(labels)}. Use a stratified CV "
            "splitter, e.g. StratifiedKFold."
        )
    if y.shape[0] != s.shape[0]:
        raise ValueError(
            f"y has {y.shape[0]} labels but the estimator returned {s.shape[0]} scores."
        )
    return s[y == 1], s[y == -1]


def _balanced_accuracy(y, pred) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return balanced_accuracy_score(y, pred)


# metrics of the thresholded decision (``predict``): these depend on ``offset_``,
# so they are the ones to use when searching over ``contamination``
_DECISION_METRICS = {"balanced_accuracy": _balanced_accuracy}


class _OODScorer:
    """Picklable ``scorer(estimator, X, y)``; see :func:`make_ood_scorer`."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self._fn, greater_is_better = _metric_table().get(metric, (None, True))
        self._sign = 1.0 if greater_is_better else -1.0

    def __call__(self, estimator, X: ArrayLike, y: ArrayLike) -> float:
        if self.metric in _DECISION_METRICS:
            y = np.asarray(y)
            _split_by_label(y, np.zeros(len(y)))  # validates the labels
            return float(_DECISION_METRICS[self.metric](y, estimator.predict(X)))
        scores = estimator.score_samples(X)
        s_id, s_ood = _split_by_label(y, scores)
        return self._sign * float(self._fn(s_id, s_ood))

    def __repr__(self) -> str:
        return f"make_ood_scorer(metric={self.metric!r})"


def make_ood_scorer(metric: str = "auroc") -> Callable[..., float]:
    """Scorer for :class:`~sklearn.model_selection.GridSearchCV` on labelled ID/OOD data.

    The scorer ``scorer(estimator, X, y)`` calls ``estimator.score_samples(X)``
    (higher = more ID), splits the scores with ``y`` (``+1`` = ID, ``-1`` =
    OOD, as ``predict`` of outlier detectors) and evaluates ``metric`` with OOD
    as the positive class. For ``"fpr80"`` / ``"fpr95"`` it returns the
    *negated* FPR (as sklearn's ``neg_*`` scorers), so a search that maximises
    the score minimises the FPR. These ranking metrics do not depend on the
    threshold: to tune ``contamination`` (which only moves ``offset_``) use
    ``"balanced_accuracy"``, computed from ``estimator.predict(X)``.

    It is a plain callable rather than :func:`sklearn.metrics.make_scorer`:
    scikit-learn 1.9 does not accept ``response_method="score_samples"``.

    Use a stratified splitter (e.g. ``cv=StratifiedKFold(5)``): a detector
    is not a classifier, so an integer ``cv`` gives unstratified ``KFold``
    folds, which may hold a single class.

    Parameters
    ----------
    metric : {"auroc", "auprc_out", "auprc_in", "fpr80", "fpr95", "balanced_accuracy"}, default="auroc"

    Returns
    -------
    scorer : callable ``scorer(estimator, X, y) -> float``

    Raises
    ------
    ValueError
        At scoring time, when ``y`` holds labels other than {+1, -1} or only
        one of them.
    """
    valid = sorted(_metric_table()) + sorted(_DECISION_METRICS)
    if not isinstance(metric, str) or metric not in valid:
        raise ValueError(f"metric must be one of {valid}; got {metric!r}.")
    return _OODScorer(metric)


class IDTrainKFold:
    """K folds for detectors on labelled data: training folds hold ID rows only, test folds both classes.

    Stratified K-fold over ``y`` (+1 ID, -1 OOD; sklearn's
    :class:`~sklearn.model_selection.StratifiedKFold`), then every OOD row is
    dropped from the training indices: a detector is fitted on
    in-distribution data, and every test fold has ID and OOD rows for the
    scorer. Pass ``sample_weight=(y == 1)`` to the search's ``fit`` as well,
    so the final refit on all rows also leaves the OOD rows out.

    Parameters
    ----------
    n_splits : int, default=5
    shuffle : bool, default=True
    random_state : int, RandomState instance or None, default=0
    """

    def __init__(self, n_splits: int = 5, shuffle: bool = True, random_state=0):
        self.n_splits, self.shuffle, self.random_state = int(n_splits), bool(shuffle), random_state

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        return self.n_splits

    def split(self, X, y=None, groups=None):
        """Yield ``(train, test)`` index arrays; ``train`` holds only rows with ``y == +1``."""
        if y is None:
            raise ValueError("IDTrainKFold needs y (+1 ID, -1 OOD) to keep OOD rows out of training folds.")
        y = np.asarray(y).ravel()
        labels = set(np.unique(y).tolist())
        if labels != {1, -1}:
            raise ValueError(
                f"IDTrainKFold needs both classes, +1 (ID) and -1 (OOD), in y; got {sorted(labels, key=str)}."
            )
        counts = min(int((y == 1).sum()), int((y == -1).sum()))
        if counts < self.n_splits:
            raise ValueError(f"IDTrainKFold(n_splits={self.n_splits}) needs at least {self.n_splits} rows of each "
                             f"class; the smaller class has {counts}.")
        folds = StratifiedKFold(self.n_splits, shuffle=self.shuffle,
                                random_state=self.random_state if self.shuffle else None)
        for train, test in folds.split(np.zeros(len(y)), y):
            yield train[y[train] == 1], test

    def __repr__(self) -> str:
        return f"IDTrainKFold(n_splits={self.n_splits}, shuffle={self.shuffle}, random_state={self.random_state})"
