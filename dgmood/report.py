"""``dgmood report``: the reproduction table, rebuilt from stored benchmark results without rerunning.

Reads every ``<detector>_<id>_vs_<ood>_n<N>.json`` that :func:`dgmood.benchmark.run_benchmark`
wrote (``dgmood benchmark``), the published figures in ``benchmarks/published.json``
(each with its source; "-" where none) and the per-sample scores in
``scores/<detector>_<id>_vs_<ood>.npz``, and writes

* ``table.md`` and ``table.json``: detector, backbone, n, AUROC [95 % CI], AUPRC
  (OOD positive), FPR80, FPR95, images/s (scoring only) and the published figure;
* ``roc_<id>_vs_<ood>.png`` per data pair (:func:`dgmood.plotting.plot_roc`) from the scores;
* the reStructuredText version of the table for the docs (``docs/results_table.rst``).

Rows come from the files alone: a newly registered detector appears once it has a result.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["load_results", "load_published", "report_rows", "markdown_table", "rst_table", "write_report"]

COLUMNS = ["detector", "backbone", "ID -> OOD", "n ID + n OOD (calibration)", "AUROC [95 % CI]", "AUPRC",
           "FPR80", "FPR95", "images/s", "published AUROC", "published source", "file"]


def load_results(results_dir: str | Path) -> list[dict]:
    """Every benchmark JSON in ``results_dir`` (sorted by detector, data pair, then n), with its ``file`` name."""
    out = []
    for path in Path(results_dir).glob("*_vs_*.json"):
        r = json.loads(path.read_text())
        if "auroc" in r and "detector" in r:
            out.append({**r, "file": path.name})
    return sorted(out, key=lambda r: (r["detector"], r["id"], r["ood"], r["n_id"], r["file"]))


def load_published(path: str | Path) -> dict:
    """``{"<id>_vs_<ood>": {detector: {"auroc", "source", ...}}}`` from ``benchmarks/published.json``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no published figures file (expected benchmarks/published.json).")
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def report_rows(results: list[dict], published: dict) -> list[dict]:
    """One JSON-ready row per result, with the published figure of its (detector, data pair) if any."""
    rows = []
    for r in results:
        pub = published.get(f"{r['id']}_vs_{r['ood']}", {}).get(r["detector"], {})
        rows.append({
            "detector": r["detector"], "backbone": r.get("backbone"), "id": r["id"], "ood": r["ood"],
            "n_id": r["n_id"], "n_ood": r["n_ood"], "n_calibration": r.get("n_calibration"),
            "auroc": r["auroc"], "auroc_ci": r["auroc_ci"], "auprc": r["auprc"], "fpr80": r.get("fpr80"),
            "fpr95": r["fpr95"], "images_per_second": r.get("images_per_second"),
            "published_auroc": pub.get("auroc"), "published_approximate": bool(pub.get("approximate", False)),
            "published_what": pub.get("what"), "published_source": pub.get("source"), "file": r["file"],
        })
    return rows


def _cells(row: dict) -> list[str]:
    lo, hi = row["auroc_ci"]
    pub = row["published_auroc"]
    pub_s = "-" if pub is None else ("about " if row["published_approximate"] else "") + f"{pub:.3f}"
    if pub is not None and row["published_what"]:
        pub_s += f" ({row['published_what']})"
    return [row["detector"], str(row["backbone"]), f"{row['id']} -> {row['ood']}",
            f"{row['n_id']} + {row['n_ood']} ({_fmt(row['n_calibration'], 'd')})",
            f"{row['auroc']:.3f} [{lo:.3f}, {hi:.3f}]", _fmt(row["auprc"]), _fmt(row["fpr80"]),
            _fmt(row["fpr95"]), _fmt(row["images_per_second"], ".0f"), pub_s, row["published_source"] or "-",
            row["file"]]


def markdown_table(rows: list[dict]) -> str:
    """The rows as a GitHub-flavoured Markdown table."""
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(COLUMNS), line(["---"] * len(COLUMNS)), *(line(_cells(r)) for r in rows)]) + "\n"


def rst_table(rows: list[dict]) -> str:
    """The rows as a reStructuredText list-table (the docs' ``results_table.rst``)."""
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for cells in [COLUMNS, *(_cells(r) for r in rows)]:
        lines += [f"   * - {cells[0]}", *[f"     - {c}" for c in cells[1:]]]
    return "\n".join(lines) + "\n"


def roc_figure(results: list[dict], scores_dir: Path, id_name: str, ood_name: str, path: Path) -> Path | None:
    """ROC curves of every detector with stored scores for (``id_name``, ``ood_name``); None if none."""
    from .plotting import plot_roc

    curves = {}
    for r in results:
        npz = scores_dir / f"{r['detector']}_{id_name}_vs_{ood_name}.npz"
        if r["id"] == id_name and r["ood"] == ood_name and npz.is_file() and r["detector"] not in curves:
            with np.load(npz) as f:
                curves[r["detector"]] = (f["score_id"], f["score_ood"])
    if not curves:
        return None
    return plot_roc(dict(sorted(curves.items())), path)


def write_report(results_dir: str | Path = "benchmarks/results",
                 published_path: str | Path = "benchmarks/published.json",
                 docs_table: str | Path | None = None) -> dict[str, Path]:
    """Write ``table.md``, ``table.json`` and the ROC figures into ``results_dir`` (and the rst table to
    ``docs_table`` if given); returns the paths written by name."""
    results_dir = Path(results_dir)
    results = load_results(results_dir)
    if not results:
        raise FileNotFoundError(f"No benchmark results (*_vs_*.json) in {results_dir}; run dgmood benchmark first.")
    rows = report_rows(results, load_published(published_path))
    written = {"table.md": results_dir / "table.md", "table.json": results_dir / "table.json"}
    written["table.md"].write_text(markdown_table(rows))
    written["table.json"].write_text(json.dumps(rows, indent=1) + "\n")
    for id_name, ood_name in sorted({(r["id"], r["ood"]) for r in results}):
        name = f"roc_{id_name}_vs_{ood_name}.png"
        png = roc_figure(results, results_dir / "scores", id_name, ood_name, results_dir / name)
        if png is not None:
            written[name] = Path(png)
    if docs_table is not None:
        Path(docs_table).write_text(rst_table(rows))
        written["docs_table"] = Path(docs_table)
    return written
