"""What every benchmark script records beside its numbers, and how it writes them."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch


def run_info(script: str, argv=None) -> dict:
    """Torch threads, the CPU, and the command line that reproduces the run (``argv``: main's, or sys.argv)."""
    args = sys.argv[1:] if argv is None else argv
    return {"threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
            "command": f"python benchmarks/{script} " + " ".join(args)}


def write_result(result: dict, out: str | Path, one_line: bool) -> None:
    """Write ``result`` as indented JSON to ``out`` and print it (one line with ``--json``)."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result) if one_line else json.dumps(result, indent=1))
