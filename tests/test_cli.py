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


def test_lid_flow_benchmark_and_demo_figure(tmp_path, capsys):
    main(["benchmark", "--detector", "lid-flow", "--n", "12", "--n-cal", "24", "--n-boot", "20", "--json",
          "--results-dir", str(tmp_path), "--param", "rule=joint", "--param", "n_steps=8", "--param", "batch_size=12"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["lid_method"] == "fast" and result["rule"] == "joint" and result["n_steps"] == 8
    for key in ("oracle_auroc", "likelihood_auroc", "lid_auroc", "log_tau", "lid_target"):
        assert isinstance(result[key], float)
    assert set(result["rule_aurocs"]) == {"min-cdf", "joint"}
    assert result["rule_aurocs"]["joint"] == result["auroc"]  # the detector's own rule, refitted alike
    main(["demo", "--n-lid", "8", "--n-cal-lid", "8", "--n-boot", "20", "--detectors", "lid-flow", "--out", str(tmp_path)])
    assert "lid-flow" in capsys.readouterr().out
    assert (tmp_path / "likelihood_vs_lid.png").stat().st_size > 1000
