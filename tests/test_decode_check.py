"""benchmarks/gpu/decode_check.py (make test-gpu): which record it compares against, its 10 % line, and its skips.
The measuring itself needs a GPU; here the committed records and the script's own process are real."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("decode_check", ROOT / "benchmarks" / "gpu" / "decode_check.py")
dc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dc)

H100 = "NVIDIA H100 80GB HBM3"
GPTQ = "llama-8b GPTQ · quantdeploy engine"
AWQ = "llama-8b AWQ · quantdeploy engine"


def record(path: Path, gpu: str, created: str, speeds: dict[str, float]) -> None:
    path.write_text(json.dumps({
        "created": created, "config": {"prompt_tokens": 512, "new_tokens": 256, "repeat": 3},
        "environment": {"gpus": [{"index": 0, "name": gpu}]},
        "results": [{"model": m, "decode_tok_s": v} for m, v in speeds.items()]}))


def test_the_committed_h200_record_is_the_engines_defaults():
    found = dc.records_for("NVIDIA H200")
    # h200.json (defaults) is newer than h200-transformers.json (tuned GPTQ variants): its rows are the ones checked
    assert found[GPTQ].decode_tok_s == pytest.approx(553.17) and found[GPTQ].file.name == "h200.json"
    assert found[AWQ].decode_tok_s == pytest.approx(544.146)
    assert found[GPTQ].config["new_tokens"] == 256
    names = {r.name for r in dc.rows(ROOT / "build" / "gpu-models") if r.key in ("gptq", "awq")}
    assert names == {GPTQ, AWQ}  # bench_all's row names are the records' model names


def test_newest_record_of_the_same_gpu_wins(tmp_path):
    record(tmp_path / "a.json", H100, "2026-12-01T00:00:00", {GPTQ: 400.0, AWQ: 410.0})
    record(tmp_path / "b.json", H100, "2026-12-05T00:00:00", {GPTQ: 450.0})
    record(tmp_path / "c.json", "NVIDIA H200", "2026-12-09T00:00:00", {GPTQ: 550.0})
    found = dc.records_for(H100, tmp_path)
    assert (found[GPTQ].decode_tok_s, found[AWQ].decode_tok_s) == (450.0, 410.0)
    assert found[GPTQ].file.name == "b.json"


def test_skips_without_a_gpu_or_without_a_record(tmp_path):
    todo = [r for r in dc.rows(tmp_path / "models") if r.key in ("gptq", "awq")]
    pairs, why = dc.plan(None, todo, tmp_path)
    assert pairs == [] and why.startswith("skip: no CUDA GPU")
    record(tmp_path / "h200.json", "NVIDIA H200", "2026-12-02T00:00:00", {GPTQ: 553.0})
    pairs, why = dc.plan(H100, todo, tmp_path)
    assert pairs == [] and why.startswith(f"skip: no record for {H100}")
    assert "records exist for: NVIDIA H200" in why and "benchmarks/gpu/run.sh" in why
    pairs, why = dc.plan("NVIDIA H200", todo, tmp_path)  # only the rows the record has
    assert why == "" and [(row.key, rec.decode_tok_s) for row, rec in pairs] == [("gptq", 553.0)]


@pytest.mark.parametrize("measured, ok", [(495.0, True), (450.0, True), (449.0, False), (None, False)])
def test_a_row_fails_more_than_ten_percent_below_its_record(measured, ok):
    rec = dc.Recorded(500.0, {}, Path("h200.json"), "2026-12-02T08:18:04")
    passed, line = dc.verdict(GPTQ, measured, rec)
    assert passed is ok
    assert line.startswith("ok" if ok else "FAIL") and GPTQ in line


def test_the_script_skips_with_one_line_when_torch_sees_no_gpu():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    p = subprocess.run([sys.executable, "benchmarks/gpu/decode_check.py"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines() == ["skip: no CUDA GPU here (torch sees none), so there is no decode speed "
                                             "to check"]
