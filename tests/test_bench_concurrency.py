"""`bench --concurrency`: the default model's GGUF served by a real `quantdeploy serve` to 1 and 2 concurrent streaming
clients (JSON, Markdown and HTML with its charts), and the pieces: levels, prompts, statistics, server
arguments, failures as unmet requirements."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import assert_clean_error, run_cli
from quantdeploy.backends.base import ModelSpec
from quantdeploy.bench.concurrency import level_stats, make_prompts, parse_levels, percentile, serve_args
from quantdeploy.bench.runner import requirement_failures
from quantdeploy.bench.serving_report import line_chart
from quantdeploy.errors import UsageError
from quantdeploy.models import DEFAULT_MODEL


@pytest.fixture(scope="module")
def served_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-serving")
    files = {s: out / f"report.{s}" for s in ("json", "md", "html")}
    args = ["bench", "--concurrency", "2,1", "--prompt-tokens", "16", "--new-tokens", "4", "--repeat", "1",
            "--no-warm-load", "--requests-per-client", "2"]
    for f in files.values():
        args += ["-o", str(f)]
    proc = run_cli(*args, env={"QUANTDEPLOY_HOME": str(tmp_path_factory.mktemp("qdhome"))})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, files, json.loads(files["json"].read_text())


def test_each_level_is_measured_against_a_real_server(served_run):
    proc, _, rep = served_run
    assert rep["config"]["concurrency"] == [1, 2] and rep["config"]["requests_per_client"] == 2
    (r,) = rep["results"]
    assert r["decode_tok_s"] > 0  # the single-stream runs still ran
    s = r["serving"]
    assert s["max_concurrency"] == 2 and s["new_tokens"] == 4
    assert s["server_args"][s["server_args"].index("--max-concurrency") + 1] == "2"
    assert [lv["concurrency"] for lv in s["levels"]] == [1, 2]
    for lv in s["levels"]:
        n = lv["concurrency"]
        assert (lv["requests"], lv["failed"], lv["errors"]) == (2 * n, 0, [])
        assert lv["output_tokens"] == 2 * n * 4  # every request streamed exactly its 4 tokens
        assert lv["output_tok_s"] == pytest.approx(lv["output_tokens"] / lv["wall_s"], rel=0.01)
        assert 10 <= lv["prompt_tokens_mean"] <= 16
        assert 0 < lv["ttft_ms"]["p50"] <= lv["ttft_ms"]["p95"]
        assert 0 <= lv["itl_ms"]["p50"] <= lv["itl_ms"]["p95"] and lv["tpot_ms"]["p50"] > 0
    assert "serving: 2 clients:" in proc.stderr and rep["requirements"]["satisfied"]


def test_reports_show_the_levels(served_run):
    proc, files, rep = served_run
    md = files["md"].read_text()
    assert "## Serving: concurrent streaming clients" in md and md == proc.stdout
    table = [line for line in md.splitlines() if line.startswith(f"| {DEFAULT_MODEL.name}")]
    assert [row.split("|")[3].strip() for row in table[1:]] == ["1", "2"]  # after the single-stream row
    html = files["html"].read_text()
    charts = re.findall(r'<svg[^>]*aria-label="([^"]+)"', html)
    assert charts[1:] == ["aggregate output tokens/s", "time to first token, p95 (ms)"]
    assert html.count("<polyline") == 2 and "<script" not in html


@pytest.mark.parametrize("text, expect", [("1,8,32,64", [1, 8, 32, 64]), ("8, 1,8", [1, 8]), ("0", None),
                                          ("a,b", None), ("", None), ("4,-1", None)])
def test_levels(text, expect):
    if expect is None:
        with pytest.raises(UsageError, match="positive integers separated by commas"):
            parse_levels(text)
    else:
        assert parse_levels(text) == expect


def test_prompts_are_distinct_and_of_the_asked_length(gguf_model):
    prompts = make_prompts(gguf_model, 12, 24)
    assert len(set(prompts)) == 12 and len({p.split()[1] for p in prompts}) > 1  # not the same first words
    sizes = [len(gguf_model.tokenize(p, add_bos=True)) for p in prompts]
    assert all(20 <= n <= 24 for n in sizes), sizes


def test_statistics():
    assert percentile([4, 1, 3, 2], 0.5) == 2.5 and percentile([1, 2, 3, 4, 5], 0.95) == pytest.approx(4.8)
    ok = {"ttft": 0.1, "gaps": [0.01, 0.03], "tokens": 3, "prompt_tokens": 10, "tpot": 0.02}
    lv = level_stats(2, [ok, dict(ok, ttft=0.3), {"error": "HTTP 429: busy"}, {"error": "HTTP 429: busy"}], 2.0)
    assert (lv["requests"], lv["failed"], lv["errors"], lv["output_tokens"], lv["output_tok_s"]) == \
        (4, 2, ["HTTP 429: busy"], 6, 3.0)
    assert lv["ttft_ms"] == {"p50": 200.0, "p95": 290.0} and lv["itl_ms"]["p50"] == 20.0


def test_serve_args_load_what_the_spec_names():
    spec = ModelSpec(path=Path("/m/gptq"), format="gptq", device="cuda:1", kernel="marlin", n_ctx=4096,
                     engine="fast", allow_pickle=True, trust_remote_code=True, prompt_chunk=1024)
    args = serve_args(spec, 64, 128)
    pairs = dict(zip(args[1::2], args[2::2]))
    assert args[0] == "/m/gptq" and "--allow-pickle" in args and "--trust-remote-code" in args
    for k, v in {"--format": "gptq", "--device": "cuda:1", "--kernel": "marlin", "--ctx": "4096", "--engine": "fast",
                 "--max-concurrency": "64", "--max-queue": "128", "--prompt-chunk": "1024"}.items():
        assert args[args.index(k) + 1] == v, (k, pairs)


def test_failed_requests_are_an_unmet_requirement():
    result = {"model": "m", "format": "gguf", "kernel": "k", "gpu_kernels_in_use": True,
              "serving": {"levels": [{"concurrency": 8, "requests": 16, "failed": 0, "errors": []},
                                     {"concurrency": 32, "requests": 64, "failed": 3, "errors": ["HTTP 429: busy"]}]}}
    assert requirement_failures([result], False, []) == \
        ["m (gguf): 3 of 64 requests failed with 32 concurrent clients: HTTP 429: busy"]


def test_chart_draws_one_line_per_series_and_skips_missing_points():
    svg = line_chart([("a", [(1, 10.0), (8, 40.0), (32, 80.0)]), ("b", [(1, 5.0), (8, None), (32, 30.0)])], "t")
    lines = re.findall(r'<polyline points="([^"]+)"', svg)
    assert [len(p.split()) for p in lines] == [3, 2]
    assert re.findall(r'text-anchor="middle">(\d+)</text>', svg) == ["1", "8", "32"]
    assert line_chart([], "t") == ""


@pytest.mark.parametrize("args, needle", [
    (["--concurrency", "0"], "positive integers"),
    (["--concurrency", "1,x"], "positive integers"),
    (["--concurrency", "1", "--requests-per-client", "0"], "--requests-per-client must be a positive integer"),
    (["--concurrency", "1", "--gpu-layers", "0"], "--gpu-layers does not apply with --concurrency"),
])
def test_bad_options_fail_before_anything_runs(args, needle):
    proc = run_cli("bench", *args, timeout=120)
    assert_clean_error(proc, needle)
    assert proc.returncode == 2


def test_a_server_that_dies_at_start_is_named_with_its_exit_status(tmp_path):
    """A serve that dies while loading (a crash in native code prints no traceback) is one error with its exit
    status and its last line, not only the line it printed last."""
    from quantdeploy.bench.concurrency import serve_bench
    from quantdeploy.errors import QuantDeployError

    spec = ModelSpec(path=tmp_path / "missing.gguf", format="gguf", device="cpu", engine="auto")
    with pytest.raises(QuantDeployError) as e:
        serve_bench(spec, [1], 1, ["hi"], 4, api_key=None, log=lambda line: None)
    msg = str(e.value)
    assert "did not start for --concurrency: the server exited with 1; its last line: error: no such model" in msg, msg
