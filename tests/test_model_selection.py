"""Model selection that cannot leak OOD rows into a fit (issue 13)."""

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV

from dgmood import LikelihoodDetector
from dgmood.backbones.flows import TabularFlow
from dgmood.model_selection import IDTrainKFold, make_ood_scorer

rng = np.random.default_rng(0)
X_ID, X_OOD = rng.normal(size=(60, 3)), rng.normal(6.0, 1.0, size=(30, 3))
X = np.concatenate([X_ID, X_OOD])
Y = np.r_[np.ones(60, int), -np.ones(30, int)]


def _detector():
    # an untrained module with max_epochs=0: all of fit's rows calibrate, so len(calibration_scores_)
    # counts the rows a fit used
    return LikelihoodDetector(backbone=TabularFlow(3, n_layers=1, hidden=4), max_epochs=0, batch_size=32,
                              random_state=0)


def test_sample_weight_zero_excludes_rows_from_fit():
    full = _detector().fit(X_ID)
    weighted = _detector().fit(X, sample_weight=(Y == 1))
    assert len(weighted.calibration_scores_) == 60
    np.testing.assert_array_equal(weighted.calibration_scores_, full.calibration_scores_)
    assert weighted.offset_ == full.offset_


@pytest.mark.parametrize("w, match", [(np.full(90, 0.5), "whole numbers: 0 excludes"), (np.r_[1, np.zeros(89)], "keeps 1 of 90 rows")])
def test_fractional_sample_weight_is_refused(w, match):
    with pytest.raises(ValueError, match=match):
        _detector().fit(X, sample_weight=w)


def test_grid_search_refit_and_folds_see_in_distribution_rows_only():
    seen = []

    def scorer(est, X_test, y_test):
        seen.append(len(est.calibration_scores_))
        return make_ood_scorer("auroc")(est, X_test, y_test)

    search = GridSearchCV(_detector(), {"contamination": [0.01, 0.1]}, scoring=scorer, cv=IDTrainKFold(3))
    search.fit(X, Y, sample_weight=(Y == 1))
    assert seen and all(n == 40 for n in seen)  # each fold fits on 2/3 of the 60 ID rows, no OOD row
    assert len(search.best_estimator_.calibration_scores_) == 60  # the refit: all ID rows, no OOD row
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))


def test_labelled_ood_rows_are_never_trained_on_silently():
    with pytest.raises(ValueError, match=r"labelling 30 row\(s\) -1 \(OOD\).*sample_weight=\(y == 1\)"):
        _detector().fit(X, Y)
    # the search with an integer cv used to "succeed" on fits that trained on OOD rows
    search = GridSearchCV(_detector(), {"contamination": [0.01, 0.1]}, scoring=make_ood_scorer(), cv=3)
    with pytest.raises(ValueError, match="would train on them"):  # the refit, if not already every fold
        search.fit(X, Y)
    _detector().fit(X, Y, sample_weight=(Y == 1))  # left out: fine
    _detector().fit(X, np.arange(90) % 3)  # other labels are ignored, as by sklearn's detectors


def test_id_train_kfold_splits():
    cv = IDTrainKFold(3, random_state=0)
    folds = list(cv.split(X, Y))
    assert len(folds) == cv.get_n_splits() == 3
    for train, test in folds:
        assert np.all(Y[train] == 1) and set(Y[test]) == {1, -1}
    assert sorted(np.concatenate([t for _, t in folds]).tolist()) == list(range(90))
    with pytest.raises(ValueError, match="needs both classes"):
        list(cv.split(X_ID, np.ones(60)))
    with pytest.raises(ValueError, match="needs y"):
        list(cv.split(X))


def test_memory_without_random_state_warns_that_nothing_is_reused(tmp_path):
    with pytest.warns(UserWarning, match="nothing will be reused"):
        LikelihoodDetector(backbone="flow", max_epochs=1, memory=str(tmp_path)).fit(X_ID)


def test_set_threshold_moves_only_the_offset():
    det = _detector().fit(X_ID[:30])
    before = det.score_samples(X_ID[30:])
    det.set_threshold(X_ID[30:], contamination=0.1)
    np.testing.assert_array_equal(det.score_samples(X_ID[30:]), before)  # backbone untouched
    assert np.mean(det.predict(X_ID[30:]) == -1) <= 0.1 and len(det.calibration_scores_) == 30
    with pytest.raises(ValueError, match="contamination"):
        det.set_threshold(X_ID, contamination=0.9)


def test_score_and_predict_is_one_pass_with_the_same_answers():
    det = _detector().fit(X_ID)
    scores, labels = det.score_and_predict(X)
    np.testing.assert_array_equal(scores, det.score_samples(X))
    np.testing.assert_array_equal(labels, det.predict(X))


def test_integer_sample_weight_counts_rows_as_copies():
    twice = _detector().fit(X_ID, sample_weight=np.r_[np.full(30, 2), np.zeros(30)])
    copies = _detector().fit(np.repeat(X_ID[:30], 2, axis=0))
    np.testing.assert_array_equal(twice.calibration_scores_, copies.calibration_scores_)
