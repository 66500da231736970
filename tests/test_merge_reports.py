"""benchmarks/gpu/merge_reports.py: reports of models benched in separate processes become one report, written by the
bench's own writer (the committed serving record stands in for each process's report)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "benchmarks" / "results" / "gpu" / "h100-80gb-hbm3-serving.json"


def test_two_processes_reports_become_one(tmp_path):
    first = json.loads(RECORD.read_text())
    second = json.loads(RECORD.read_text())
    for r in second["results"]:
        r["model"] = "gguf"
    second["rooflines"] = {"cuda:1": {"gbps": 1.0}}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(first))
    b.write_text(json.dumps(second))
    out = tmp_path / "all.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "merge_reports.py"), str(a), str(b),
                           "-o", str(out), "-o", str(tmp_path / "all.md"), "--command", "bash run-it.sh"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    merged = json.loads(out.read_text())
    assert [r["model"] for r in merged["results"]] == [r["model"] for r in first["results"]] + ["gguf"] * len(
        second["results"])
    assert merged["command"] == "bash run-it.sh"
    assert set(merged["rooflines"]) == set(first["rooflines"]) | {"cuda:1"}
    md = (tmp_path / "all.md").read_text()
    assert "gguf" in md and "bash run-it.sh" in md
