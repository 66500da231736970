"""Merge `quantdeploy bench` JSON reports of models benched in separate processes into one report (llama.cpp's
CUDA build and torch's CUDA libraries can crash when one process loads both).

    python benchmarks/gpu/merge_reports.py A.json B.json ... -o OUT.json [-o OUT.md -o OUT.html] [--command TEXT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from quantdeploy.bench.report import write_report


def merge(reports: list[dict]) -> dict:
    """The first report with every other one's results and rooflines after its own."""
    out = json.loads(json.dumps(reports[0]))
    for r in reports[1:]:
        out["results"] += r["results"]
        out["rooflines"].update(r.get("rooflines") or {})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("reports", nargs="+", type=Path)
    ap.add_argument("-o", "--output", action="append", required=True, type=Path)
    ap.add_argument("--command", help="the command that made the reports (default: the first report's)")
    a = ap.parse_args()
    report = merge([json.loads(p.read_text()) for p in a.reports])
    if a.command:
        report["command"] = a.command
    for path in a.output:
        write_report(report, path)


if __name__ == "__main__":
    main()
