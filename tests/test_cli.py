"""The command line on shipped weights, at small sizes."""

import json

from dgmood.cli import main


def test_benchmark_json(tmp_path, capsys):
    main(["benchmark", "--detector", "likelihood", "--n", "40", "--n-cal", "40", "--n-boot", "50",
          "--json", "--results-dir", str(tmp_path)])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("auroc", "auroc_ci", "auprc", "fpr95", "n_id", "n_ood", "likelihood_auroc", "backbone_sha256"):
        assert key in result
    assert result["n_id"] == result["n_ood"] == 40
    assert result["auroc_ci"][0] <= result["auroc"] <= result["auroc_ci"][1]
    assert result["auroc"] < 0.5  # the paradox, on the shipped flow
    assert json.loads((tmp_path / "likelihood_fashion_mnist_vs_mnist_n40.json").read_text()) == result


def test_demo_writes_table_and_figures(tmp_path, capsys):
    main(["demo", "--n", "40", "--n-cal", "40", "--n-hvae", "20", "--n-boot", "20",
          "--detectors", "likelihood", "hvae-llr", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "likelihood" in out and "hvae-llr" in out and "AUROC" in out
    assert (tmp_path / "likelihood_histograms.png").stat().st_size > 1000
    assert (tmp_path / "hvae_llr_per_k.png").stat().st_size > 1000


def test_lid_flow_benchmark_and_demo_figure(tmp_path, capsys, monkeypatch):
    from dgmood import benchmark

    # the demo has no n_steps flag: 8 Golub-Kahan steps instead of 35 keep this test cheap
    monkeypatch.setitem(benchmark.DETECTORS, "lid-flow",
                        ("LIDLikelihoodDetector", "pretrained:fmnist-flow", {"n_steps": 8}))
    main(["benchmark", "--detector", "lid-flow", "--n", "8", "--n-cal", "16", "--n-boot", "20", "--json",
          "--results-dir", str(tmp_path), "--param", "rule=joint", "--param", "batch_size=8"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["lid_method"] == "fast" and result["rule"] == "joint" and result["n_steps"] == 8
    for key in ("oracle_auroc", "likelihood_auroc", "lid_auroc", "log_tau", "lid_target"):
        assert isinstance(result[key], float)
    assert set(result["rule_aurocs"]) == {"min-cdf", "joint"}
    assert result["rule_aurocs"]["joint"] == result["auroc"]  # the detector's own rule, refitted alike
    main(["demo", "--n-lid", "8", "--n-cal-lid", "8", "--n-boot", "20", "--detectors", "lid-flow", "--out", str(tmp_path)])
    assert "lid-flow" in capsys.readouterr().out
    assert (tmp_path / "likelihood_vs_lid.png").stat().st_size > 1000


def test_benchmark_all_writes_a_result_and_scores_per_registered_detector_and_report_lists_them(
        tmp_path, capsys, monkeypatch):
    import numpy as np
    import pytest

    from dgmood import benchmark

    # a detector registered only here must appear in the report without edits to the table code
    monkeypatch.setitem(benchmark.DETECTORS, "test-only-likelihood", ("LikelihoodDetector", "pretrained:fmnist-flow", {}))
    # the diffusion's t0 grid search and 8 probes cost minutes on 2 cores: a fixed t0 and one probe here
    monkeypatch.setitem(benchmark.DETECTORS, "lid-diffusion",
                        ("LIDLikelihoodDetector", "pretrained:fmnist-diffusion", {"t0": 0.01, "n_probes": 1}))
    monkeypatch.setitem(benchmark.DETECTORS, "lid-flow",
                        ("LIDLikelihoodDetector", "pretrained:fmnist-flow", {"n_steps": 8}))
    monkeypatch.setitem(benchmark.DETECTORS, "hvae-llr",
                        ("HVAELikelihoodRatioDetector", "pretrained:fmnist-hvae", {"k": "auto", "n_samples": 2}))
    main(["benchmark", "--all", "--n", "8", "--n-cal", "16", "--n-boot", "20", "--json",
          "--results-dir", str(tmp_path), "--param", "batch_size=8"])
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["detector"] for r in lines] == sorted(benchmark.DETECTORS)
    for r in lines:
        assert (tmp_path / f"{r['detector']}_fashion_mnist_vs_mnist_n8.json").is_file()
        with np.load(tmp_path / "scores" / f"{r['detector']}_fashion_mnist_vs_mnist.npz") as f:
            assert f["score_id"].shape == f["score_ood"].shape == (8,)
            assert any(k.startswith("id_") for k in f.files)
        assert r["images_per_second"] > 0 and 0 < r["score_seconds"] <= r["seconds"]
    published = tmp_path / "published.json"
    published.write_text(json.dumps({"fashion_mnist_vs_mnist": {
        "test-only-likelihood": {"auroc": 0.123, "source": "a test's own data file"}}}))
    main(["report", "--results-dir", str(tmp_path), "--published", str(published)])
    table = (tmp_path / "table.md").read_text()
    for name in benchmark.DETECTORS:
        assert f"| {name} |" in table
    rows = {r["detector"]: r for r in json.loads((tmp_path / "table.json").read_text())}
    assert rows["test-only-likelihood"]["published_auroc"] == 0.123
    assert "a test's own data file" in table
    # every other figure comes from the data file alone: none is in this one
    assert all(r["published_auroc"] is None for name, r in rows.items() if name != "test-only-likelihood")
    assert (tmp_path / "roc_fashion_mnist_vs_mnist.png").stat().st_size > 10_000
    with pytest.raises(SystemExit, match="no published figures file"):
        main(["report", "--results-dir", str(tmp_path), "--published", str(tmp_path / "missing.json")])


def test_benchmark_cli_refuses_unknown_detectors_and_bad_user_data(tmp_path, capsys):
    import numpy as np
    import pytest

    from dgmood.benchmark import DETECTORS

    with pytest.raises(SystemExit):
        main(["benchmark", "--detector", "no-such-detector"])
    err = capsys.readouterr().err
    assert "invalid choice" in err and all(name in err for name in DETECTORS)
    ok = tmp_path / "id.npz"
    np.savez(ok, train=np.zeros((8, 64), np.uint8), test=np.zeros((4, 64), np.uint8))
    cases = [
        (["--id-path", str(ok)], "--id-path and --ood-path go together"),
        (["--id-path", str(ok), "--ood-path", str(ok)], "needs --input-shape"),
    ]
    no_test = tmp_path / "ood.npz"
    np.savez(no_test, images=np.zeros((4, 64), np.uint8))
    cases.append((["--id-path", str(ok), "--ood-path", str(no_test), "--input-shape", "1", "8", "8"],
                  r"ood.npz: no array 'test' \(found \['images'\]\)"))
    floats = tmp_path / "floats.npz"
    np.savez(floats, train=np.zeros((8, 64)), test=np.zeros((4, 64), np.uint8))
    cases.append((["--id-path", str(floats), "--ood-path", str(ok), "--input-shape", "1", "8", "8"],
                  r"floats.npz\['train'\]: expected uint8 pixels 0..255, got dtype float64"))
    cases.append((["--id-path", str(ok), "--ood-path", str(ok), "--input-shape", "1", "28", "28"],
                  r"id.npz\['train'\]: shape \(8, 64\) does not hold images of --input-shape \(1, 28, 28\)"))
    for extra, match in cases:
        with pytest.raises(SystemExit, match=match):
            main(["benchmark", "--detector", "likelihood", "--results-dir", str(tmp_path), *extra])


def test_benchmark_on_user_images_trains_the_backbone_family_by_fit(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    train = (rng.random((96, 1, 8, 8)) < 0.2).astype(np.uint8) * 255
    test_id = (rng.random((20, 64)) < 0.2).astype(np.uint8) * 255
    test_ood = rng.integers(0, 256, (20, 64), dtype=np.uint8)
    np.savez(tmp_path / "mine.npz", train=train, test=test_id)
    np.savez(tmp_path / "noise.npz", test=test_ood)
    main(["benchmark", "--detector", "likelihood", "--id-path", str(tmp_path / "mine.npz"),
          "--ood-path", str(tmp_path / "noise.npz"), "--input-shape", "1", "8", "8", "--n", "16", "--n-boot", "20",
          "--json", "--results-dir", str(tmp_path), "--param", "max_epochs=2", "--param", "batch_size=16",
          "--param", 'backbone_params={"n_levels": 1, "steps_per_level": 2, "hidden": 8}'])
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (r["id"], r["ood"], r["n_id"], r["n_ood"], r["backbone"]) == ("mine", "noise", 16, 16, "flow")
    assert r["n_calibration"] == 10  # fit holds out validation_fraction = 0.1 of the 96 training images
    assert r["auroc"] > 0.9  # i.i.d. noise against sparse binary images: far out of distribution
    assert (tmp_path / "scores" / "likelihood_mine_vs_noise.npz").is_file()
