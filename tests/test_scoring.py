"""Streaming a memory-mapped .npy through a fitted detector (dgmood score)."""

import joblib
import numpy as np

from dgmood import LikelihoodDetector
from dgmood.backbones.flows import TabularFlow
from dgmood.cli import main
from dgmood.scoring import score_file


def test_score_file_equals_score_samples_bit_for_bit(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(203, 3))
    det = LikelihoodDetector(backbone=TabularFlow(3, n_layers=1, hidden=4), max_epochs=0, batch_size=16,
                             random_state=0).fit(X[:50])
    np.save(tmp_path / "X.npy", X)
    score_file(det, tmp_path / "X.npy", tmp_path / "s.npy", labels_path=tmp_path / "y.npy", chunk_batches=2,
               progress=False)  # chunks of 32 rows: the scores must not notice
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), det.score_samples(X))
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), det.predict(X))
    joblib.dump(det, tmp_path / "model.joblib")
    assert main(["score", str(tmp_path / "model.joblib"), "--input", str(tmp_path / "X.npy"),
                 "--out", str(tmp_path / "cli.npy"), "--quiet"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "cli.npy"), det.score_samples(X))


def test_score_dask_on_a_two_worker_cluster_equals_in_memory():
    distributed = __import__("pytest").importorskip("distributed")
    import dask.array as da

    from dgmood.scoring import score_dask

    X = np.random.default_rng(1).normal(size=(203, 3))
    det = LikelihoodDetector(backbone=TabularFlow(3, n_layers=1, hidden=4), max_epochs=0, batch_size=16,
                             random_state=0).fit(X[:50])
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        scores = score_dask(det, da.from_array(X, chunks=(48, 3))).compute()
    np.testing.assert_array_equal(scores, det.score_samples(X))
