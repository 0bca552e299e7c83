"""A user's own images, from a folder to a fitted detector (issue 13)."""

import numpy as np
import pytest
from PIL import Image

from dgmood import LikelihoodDetector
from dgmood.datasets import load_images


def _write(folder, images, mode):
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"img_{i:03d}.png")


def test_rgb_folder_to_a_detector_on_3x32x32(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(60, 200, (1, 32, 32, 3))
    rgb = np.clip(base + rng.integers(-20, 20, (40, 32, 32, 3)), 0, 255).astype(np.uint8)
    _write(tmp_path / "rgb", rgb, "RGB")
    X, shape = load_images(tmp_path / "rgb")
    assert shape == (3, 32, 32) and X.dtype == np.uint8 and X.shape == (40, 3 * 32 * 32)
    np.testing.assert_array_equal(X[5].reshape(3, 32, 32), rgb[5].transpose(2, 0, 1))  # channels first
    det = LikelihoodDetector(backbone="flow", input_shape=shape, backbone_params={"hidden": 8, "steps_per_level": 1},
                             max_epochs=1, batch_size=16, random_state=0).fit(X)
    noise = rng.integers(0, 256, (4, 3 * 32 * 32), dtype=np.uint8)
    assert np.all(np.isfinite(det.score_samples(noise)))
    assert det.score_samples(X[:4].reshape(4, 3, 32, 32)).shape == (4,)  # image arrays accepted too


def test_grey_folder_and_errors(tmp_path):
    grey = np.random.default_rng(1).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    _write(tmp_path / "grey", grey, "L")
    X, shape = load_images(tmp_path / "grey")
    assert shape == (1, 28, 28)
    np.testing.assert_array_equal(X, grey.reshape(3, -1))
    assert load_images(tmp_path / "grey", channels=3)[1] == (3, 28, 28)
    Image.fromarray(grey[0][:20]).save(tmp_path / "grey" / "z_small.png")
    with pytest.raises(ValueError, match="different sizes"):
        load_images(tmp_path / "grey")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .png"):
        load_images(tmp_path / "empty")


def test_dgmood_train_on_own_data_then_load_by_path_or_name(tmp_path, monkeypatch):
    import json

    from dgmood import pretrained
    from dgmood.cli import main

    monkeypatch.setattr(pretrained, "REGISTRY", dict(pretrained.REGISTRY))  # registrations stay in this test
    rng = np.random.default_rng(0)
    X = np.clip(rng.normal(128, 30, (40, 3, 8, 8)), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "data.npz", X=X)
    args = ["train", "flow", "--data", str(tmp_path / "data.npz"), "--out", str(tmp_path / "out"), "--param",
            "hidden=4", "--param", "steps_per_level=1", "--batch-size", "16", "--quiet"]
    assert main([*args, "--max-epochs", "1"]) == 0
    path = tmp_path / "out" / "flow-3x8x8.pt"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["kind"] == "flow" and meta["input_shape"] == [3, 8, 8] and len(meta["heldout_train_indices"]) == 4
    assert meta["epochs"] == 1 and np.isfinite(meta["heldout_loss"]) and meta["command"].startswith("dgmood train")
    assert main([*args, "--max-epochs", "2"]) == 0  # resumes from the checkpoint: one more epoch
    assert json.loads(path.with_suffix(".json").read_text())["epochs"] == 2
    held = X.reshape(40, -1)[meta["heldout_train_indices"]]
    by_path = LikelihoodDetector(backbone=str(path), batch_size=4, random_state=0).fit(held)
    assert by_path.history_ == [] and np.all(np.isfinite(by_path.score_samples(X.reshape(40, -1))))
    pretrained.register("my-flow", path)
    by_name = LikelihoodDetector(backbone="pretrained:my-flow", batch_size=4, random_state=0).fit(held)
    np.testing.assert_array_equal(by_name.score_samples(held), by_path.score_samples(held))
    with pytest.raises(ValueError, match="inside the installed package"):
        main(["train", "flow", "--data", str(tmp_path / "data.npz"), "--out", str(pretrained._WEIGHTS), "--quiet"])


def test_dgmood_train_hvae_on_own_images_then_detect(tmp_path):
    import json

    from dgmood import HVAELikelihoodRatioDetector
    from dgmood.cli import main

    rng = np.random.default_rng(2)
    X = np.clip(rng.normal(100, 50, (40, 1, 8, 8)), 0, 255).astype(np.uint8)
    np.save(tmp_path / "data.npy", X)
    assert main(["train", "hvae", "--data", str(tmp_path / "data.npy"), "--out", str(tmp_path / "out"),
                 "--param", "channels=4", "--param", "blocks_per_stage=1", "--max-epochs", "1", "--batch-size", "16",
                 "--quiet"]) == 0
    path = tmp_path / "out" / "hvae-1x8x8.pt"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["kind"] == "hvae" and meta["architecture"]["channels"] == 4 and np.isfinite(meta["heldout_loss"])
    held = X.reshape(40, -1)[meta["heldout_train_indices"]]
    det = HVAELikelihoodRatioDetector(backbone=str(path), n_samples=1, n_skip_samples=1, batch_size=4,
                                      random_state=0).fit(held)
    assert det.tail_ == "upper" and np.all(np.isfinite(det.score_samples(X.reshape(40, -1))))
