"""The docs' results table is generated from benchmarks/results/*.json and must match them."""

from pathlib import Path

from dgmood.benchmark import results_table

ROOT = Path(__file__).resolve().parents[1]


def test_docs_results_table_matches_the_benchmark_jsons():
    table = results_table(ROOT / "benchmarks" / "results")
    assert table.count("   * - ``") == len(list((ROOT / "benchmarks" / "results").glob("*_vs_*.json")))
    committed = (ROOT / "docs" / "results_table.rst").read_text()
    assert committed == table, (
        "docs/results_table.rst is stale: regenerate it with\n"
        "python -c \"from dgmood.benchmark import results_table; print(results_table(), end='')\" "
        "> docs/results_table.rst"
    )
