"""`quantdeploy bench` through the real CLI on the Gemma test GGUF: report schema, the three output formats,
gpu_kernels_in_use false on CPU with its reason, --require-gpu / --require-kernel exit codes, bad input."""

from __future__ import annotations

import json
import math

import pytest

from conftest import assert_clean_error, has_cuda, run_cli

pytestmark = pytest.mark.skipif(has_cuda(), reason="asserts CPU behaviour (no GPU kernels); GPU runs: docs/bench.md")

RESULT_KEYS = {"model", "format", "backend", "device", "kernel", "kernels", "gpu_kernels_in_use",
               "gpu_kernels_reason", "fallbacks", "load_s", "ttft_ms", "prefill_tok_s", "decode_tok_s", "spread",
               "warmup", "peak_memory_mb", "bytes_per_token", "achieved_gbps", "roofline_gbps",
               "roofline_fraction", "quality", "prompt_tokens", "new_tokens", "repeat"}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("qdhome")


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, home, gguf_path, reference_path):
    """One real bench of the Gemma GGUF, written as JSON, Markdown and HTML, with --quality against its reference."""
    out = tmp_path_factory.mktemp("bench")
    files = {s: out / f"report.{s}" for s in ("json", "md", "html")}
    args = ["bench", str(gguf_path), "--prompt-tokens", "24", "--new-tokens", "6", "--repeat", "2", "--quality",
            "--quality-tokens", "48", "--reference", str(reference_path)]
    for f in files.values():
        args += ["--output", str(f)]
    proc = run_cli(*args, env={"QUANTDEPLOY_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, files, json.loads(files["json"].read_text())


def test_report_schema(bench_run):
    _, _, rep = bench_run
    assert rep["schema"] == "quantdeploy.bench/1"
    assert rep["command"].startswith("quantdeploy bench")
    assert rep["config"]["prompt_tokens"] == 24 and rep["config"]["new_tokens"] == 6
    env = rep["environment"]
    for key in ("python", "platform", "cpu", "gpus", "driver", "cuda", "versions", "git", "llama_cpp_gpu_offload",
                "load_average"):
        assert key in env, key
    for pkg in ("torch", "transformers", "gptqmodel", "llama-cpp-python", "quantdeploy"):
        assert env["versions"][pkg], pkg
    assert env["cpu"]["cores"] >= 1 and env["gpus"] == []
    assert len(rep["results"]) == 1
    r = rep["results"][0]
    assert RESULT_KEYS <= set(r), RESULT_KEYS - set(r)
    assert (r["format"], r["backend"], r["device"], r["kernel"]) == ("gguf", "llama.cpp", "cpu", "llama.cpp-cpu")
    assert r["kernels"]["layers_offloaded"] == 0 and r["kernels"]["gpu_build"] is False
    assert r["kernels"]["map"] == {"blk.0-17": "ggml CPU (Q4_K_M)", "output": "ggml CPU"}
    assert rep["requirements"] == {"require_gpu": False, "require_kernel": [], "satisfied": True, "failures": []}


def test_cpu_run_reports_no_gpu_kernels_with_reason(bench_run):
    r = bench_run[2]["results"][0]
    assert r["gpu_kernels_in_use"] is False
    assert "no CUDA GPU" in r["gpu_kernels_reason"] and "CPU" in r["gpu_kernels_reason"]
    assert r["fallbacks"] == []  # a CPU-only machine is not a fallback
    assert r["kernels"]["profile"] is None  # the profiler runs on CUDA only


def test_timings_are_measured_over_repeats(bench_run):
    r = bench_run[2]["results"][0]
    assert r["load_s"]["cold"] > 0 and r["load_s"]["warm"] > 0
    for key in ("ttft_ms", "prefill_tok_s", "decode_tok_s"):
        s = r["spread"][key]
        assert len(s["values"]) == 2 and s["min"] <= s["median"] <= s["max"], key
        assert s["median"] == r[key] and r[key] > 0
    for ttft, prefill in zip(r["spread"]["ttft_ms"]["values"], r["spread"]["prefill_tok_s"]["values"]):
        assert prefill == pytest.approx(24 / (ttft / 1e3), rel=0.01)
    assert r["warmup"]["tokens"] == 6 and r["warmup"]["decode_tok_s"] > 0  # reported apart from the runs
    assert r["peak_memory_mb"]["host"] > 100 and r["peak_memory_mb"]["gpu"] is None


def test_bandwidth_and_roofline(bench_run, gguf_path):
    rep = bench_run[2]
    r = rep["results"][0]
    size = gguf_path.stat().st_size
    # Q4_K_M Gemma-3-270M: every tensor is read per token (the tied embedding by the lm_head), header excluded
    assert 0.9 * size < r["bytes_per_token"] < size
    assert r["bytes_per_token_detail"]["detail"]["tied_lm_head"] is True
    assert r["achieved_gbps"] == pytest.approx(r["bytes_per_token"] * r["decode_tok_s"] / 1e9, rel=0.01)
    roof = rep["rooflines"]["cpu"]
    assert roof["gbps"] > 0 and "copy" in roof["method"] and r["roofline_gbps"] == roof["gbps"]
    assert r["roofline_fraction"] == pytest.approx(r["achieved_gbps"] / roof["gbps"], rel=0.01)


def test_quality_against_the_reference(bench_run):
    q = bench_run[2]["results"][0]["quality"]
    assert q["tokens"] == 48 and 1 < q["perplexity"] < 1000
    # the reference is this very GGUF dequantized to float32: the distributions nearly match
    assert 0 <= q["kl_divergence"] < 0.05 and q["top1_agreement"] > 0.9
    assert q["reference_perplexity"] == pytest.approx(q["perplexity"], rel=0.05)


def test_markdown_and_html_reports(bench_run, gguf_path):
    proc, files, rep = bench_run
    md = files["md"].read_text()
    assert "| model | format | device | kernel | GPU kernels |" in md
    assert f"| {gguf_path.name} | gguf | cpu | llama.cpp-cpu | no |" in md
    assert "no CUDA GPU here" in md and "roofline cpu:" in md and rep["command"] in md
    assert proc.stdout == md  # the table printed is the Markdown report
    html = files["html"].read_text()
    assert html.startswith("<!doctype html>") and "<svg" in html and "<table>" in html
    assert f"roofline {rep['rooflines']['cpu']['gbps']} GB/s" in html  # the roofline mark in the chart
    assert "<script" not in html


def test_roofline_is_cached_per_device(home):
    from quantdeploy.bench.roofline import device_key

    entry = json.loads((home / "bench" / "roofline.json").read_text())[device_key("cpu")]
    assert entry["gbps"] > 0 and math.isfinite(entry["gbps"]) and entry["measured_at"]


def test_require_gpu_and_kernel_fail_on_cpu(tmp_path, home):
    out = tmp_path / "ci.json"
    proc = run_cli("bench", "--prompt-tokens", "8", "--new-tokens", "2", "--repeat", "1", "--no-warm-load",
                   "--require-gpu", "--require-kernel", "marlin", "--output", str(out),
                   env={"QUANTDEPLOY_HOME": str(home)})
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert_clean_error(proc, "requirement not met", "no GPU kernel in use", "kernel 'marlin' did not run")
    rep = json.loads(out.read_text())  # the evidence is still written for the CI job
    assert rep["requirements"]["satisfied"] is False and len(rep["requirements"]["failures"]) == 2


def test_require_kernel_passes_when_it_ran(bench_run):
    from quantdeploy.bench.runner import requirement_failures

    results = bench_run[2]["results"]
    assert requirement_failures(results, False, ["llama.cpp-cpu", "ggml"]) == []
    assert len(requirement_failures(results, True, [])) == 1


@pytest.mark.parametrize("args,needles", [
    (["--output", "{tmp}/report.txt"], ["unknown report format", ".json"]),
    (["--output", "{tmp}/missing/report.json"], ["does not exist"]),
    (["--new-tokens", "1"], ["--new-tokens"]),
    (["--repeat", "0"], ["--repeat"]),
    (["--reference", "{tmp}"], ["--quality"]),
    (["--quality", "--reference", "{tmp}/nope"], ["--reference", "no such directory"]),
    (["--quality", "--reference", "{tmp}"], ["--reference", "no config.json"]),
    (["--format", "gptq"], ["GGUF", "--format"]),
    (["{gguf}", "{gguf}", "--format", "gguf", "--format", "gguf", "--format", "gguf"], ["--format"]),
    (["--prompt-tokens", "40000", "--output", "{tmp}/r.json"], ["context", "--ctx"]),
])
def test_bad_input(tmp_path, gguf_path, home, args, needles):
    argv = [a.format(tmp=tmp_path, gguf=gguf_path) for a in args]
    proc = run_cli("bench", *argv, env={"QUANTDEPLOY_HOME": str(home)})
    assert_clean_error(proc, *needles)
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.txt"))  # nothing half-written


def test_gpu_layers_only_for_gguf(gptq_path, home):
    proc = run_cli("bench", str(gptq_path), "--gpu-layers", "0", env={"QUANTDEPLOY_HOME": str(home)})
    assert_clean_error(proc, "--gpu-layers", "GGUF")
