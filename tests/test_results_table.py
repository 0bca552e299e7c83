"""The committed reproduction table (benchmarks/results/table.md, table.json, docs/results_table.rst) is
rebuilt from benchmarks/results/*.json and benchmarks/published.json and must match them."""

import json
from pathlib import Path

from dgmood.report import load_published, load_results, markdown_table, report_rows, rst_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REGENERATE = "regenerate with: dgmood report --docs-table docs/results_table.rst"


def _rows():
    return report_rows(load_results(RESULTS), load_published(ROOT / "benchmarks" / "published.json"))


def test_committed_tables_match_the_benchmark_jsons():
    rows = _rows()
    assert len(rows) == len(list(RESULTS.glob("*_vs_*.json")))
    assert (ROOT / "docs" / "results_table.rst").read_text() == rst_table(rows), f"docs table stale: {REGENERATE}"
    assert (RESULTS / "table.md").read_text() == markdown_table(rows), f"table.md stale: {REGENERATE}"
    assert json.loads((RESULTS / "table.json").read_text()) == json.loads(json.dumps(rows)), REGENERATE


def test_every_registered_detector_has_a_fashion_mnist_row_and_scores_for_the_roc_figure():
    from dgmood.benchmark import DETECTORS

    rows = [r for r in _rows() if (r["id"], r["ood"]) == ("fashion_mnist", "mnist")]
    assert set(DETECTORS) <= {r["detector"] for r in rows}
    for name in DETECTORS:
        assert (RESULTS / "scores" / f"{name}_fashion_mnist_vs_mnist.npz").is_file(), name
    assert (RESULTS / "roc_fashion_mnist_vs_mnist.png").stat().st_size > 10_000
