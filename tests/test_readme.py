"""The README's snippets run as printed (those that fit in a test's time; the LID one costs minutes)."""

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
