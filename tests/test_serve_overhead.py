"""benchmarks/serve_overhead.py: the real server and scheduler over a simulated device, driven by the bench's
streaming clients; every request must come back whole and the record must say what ran."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_simulated_device_serves_every_client(tmp_path):
    out, md = tmp_path / "o.json", tmp_path / "o.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_overhead.py"), "--levels", "1,3",
                           "--new-tokens", "12", "--json", str(out), "--md", str(md)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert record["command"].startswith("python benchmarks/serve_overhead.py --levels 1,3")
    levels = record["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 3]
    assert all(lv["failed"] == 0 for lv in levels)
    assert [lv["output_tokens"] for lv in levels] == [12, 36]  # every token of every client streamed
    assert [lv["simulated_step_ms"] for lv in levels] == [1.881, 2.143]
    assert "| 3 |" in md.read_text()
