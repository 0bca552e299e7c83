"""The README's snippets run as printed (the LID one on fewer images, so it fits in a test's time)."""

import re
from pathlib import Path

import numpy as np
from PIL import Image

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def _block(marker: str) -> str:
    found = [b for b in BLOCKS if marker in b]
    assert len(found) == 1, f"README has {len(found)} python blocks with {marker!r}"
    return found[0]


def test_own_images_snippet(tmp_path, monkeypatch):
    from dgmood import LikelihoodDetector

    folder = tmp_path / "my_images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(np.clip(rng.normal(128, 40, (28, 28)), 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    scope = {"LikelihoodDetector": LikelihoodDetector}
    exec(_block('load_images("my_images/")'), scope)
    assert scope["shape"] == (1, 28, 28) and np.isfinite(scope["det"].score_samples(scope["X"][:2])).all()


def test_leak_free_grid_search_snippet():
    from dgmood import LikelihoodDetector

    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(size=(120, 3)), rng.normal(5.0, 1.0, size=(30, 3))]
    y = np.r_[np.ones(120, int), -np.ones(30, int)]
    scope = {"LikelihoodDetector": LikelihoodDetector, "X": X, "y": y}
    exec(_block("IDTrainKFold(3)"), scope)
    search = scope["search"]
    assert len(search.best_estimator_.calibration_scores_) == 12  # the refit's held-out 10 % of 120 ID rows
    assert search.best_score_ > 0.5


def test_shipped_lid_snippet():
    """The LID lines as printed, on fewer images and ``batch_size=8`` (scores do not depend on it).

    Every substitution must match exactly once, so an edit of the README that this
    test no longer follows fails here rather than passing on stale text.
    """
    from dgmood.datasets import load_mnist
    from dgmood.pretrained import heldout_images

    block = _block("# likelihood + LID")
    snippet = block[block.index("# likelihood + LID") :]
    smaller = {
        'LIDLikelihoodDetector("pretrained:fmnist-flow")': 'LIDLikelihoodDetector("pretrained:fmnist-flow", batch_size=8)',
        'heldout_images("fmnist-flow", 128)': 'heldout_images("fmnist-flow", 16)',
        "[:64]": "[:8]",
        'heldout_images("fmnist-flow", 256, random_state=1)': 'heldout_images("fmnist-flow", 12, random_state=1)',
    }
    for old, new in smaller.items():
        assert snippet.count(old) == 1, f"README LID snippet no longer contains {old!r}"
        snippet = snippet.replace(old, new)
    scope = {"heldout_images": heldout_images, "load_mnist": load_mnist}
    exec(snippet, scope)
    det, scores, labels = scope["det"], scope["scores"], scope["labels"]
    assert det.lid_method_ == "fast" and det.lid_target == "auto"  # the defaults the README promises
    assert scores.shape == (8,) and np.isfinite(scores).all()
    assert set(labels) <= {-1, 1}
    assert len(det.calibration_scores_) == 12  # set_threshold replaced the calibration set
    # MNIST is OOD for a FashionMNIST flow (AUROC ~0.98): it scores below typical held-out images.
    # (Labels alone are not asserted: 12 calibration images with random probes move the threshold.)
    assert scores.mean() < np.median(det.calibration_scores_)
