"""doctor: every check against faked environment probes (healthy H100 box, broken variants), the exact fix of
each failure, and the real command on this machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import assert_clean_error, run_cli
from quantdeploy.doctor import CHECKS, Probes, render_text, run_doctor
from quantdeploy.errors import UsageError
from quantdeploy.settings import EngineConfig, Settings

H100 = {"name": "NVIDIA H100 80GB HBM3", "capability": [9, 0]}
REQS = ["gguf>=0.10", "huggingface_hub>=1.0", "llama-cpp-python>=0.3.9; extra == \"gguf\"",
        "torch<=2.14.1,>=2.6; extra == \"gptq\"", "transformers<6,>=5.0; extra == \"gptq\"",
        "optimum>=2.0; extra == \"gptq\"", "gptqmodel==7.7.0; extra == \"gptq\"",
        "quantdeploy[gptq]; extra == \"awq\"", "pytest>=8; extra == \"test\""]
VERSIONS = {"torch": "2.14.1", "transformers": "5.23.0", "optimum": "2.3.0", "gptqmodel": "7.7.0",
            "huggingface_hub": "1.3.0", "gguf": "0.19.0", "llama-cpp-python": "0.3.36", "numpy": "2.4.6"}


def healthy(**over) -> Probes:
    """A GPU machine where everything works; override a probe to break one thing."""
    base = dict(
        settings=lambda: Settings(home=Path("/srv/qd")),
        torch=lambda: {"version": "2.14.1", "cuda": "13.0", "cuda_available": True, "devices": [H100]},
        nvidia=lambda: {"driver": "580.65", "cuda": "13.0", "gpus": [H100]},
        nvcc=lambda: {"path": "/usr/local/cuda/bin/nvcc", "version": "13.0"},
        engine_gemv=lambda: {"ok": True, "arch": "90"},
        jit_kernels=lambda: {"marlin_fp16": True, "marlin_bf16": False, "exllamav2": False},
        cutlass_cached=lambda: False,
        llama_cpp=lambda: {"version": "0.3.36", "gpu_offload": True},
        gguf_smoke=lambda: {"returncode": 0, "signal": None, "seconds": 1.2, "timeout": False, "stderr": ""},
        versions=lambda: dict(VERSIONS),
        requirements=lambda: list(REQS),
        disk_free=lambda path: (Path("/srv"), 500 * 10**9),
        reachable=lambda url, timeout: (True, "HTTP 200"),
        hf_token=lambda settings: "HF_TOKEN",
        backends=lambda: [{"format": f, "backend": b, "available": True, "reason": ""}
                          for f, b in (("awq", "gptqmodel-awq"), ("gguf", "llama.cpp"), ("gptq", "gptqmodel"))],
        cpu_flags=lambda: ["avx2", "avx512f", "amx_tile"],
    )
    base.update(over)
    return Probes(**base)


def cpu_box(**over) -> Probes:
    return healthy(torch=lambda: {"version": "2.14.1", "cuda": "13.0", "cuda_available": False, "devices": []},
                   nvidia=lambda: None, llama_cpp=lambda: {"version": "0.3.36", "gpu_offload": False}, **over)


def one(probes: Probes, name: str):
    (c,) = run_doctor(probes, only=[name])
    return c


def test_healthy_gpu_machine_passes_everything():
    checks = run_doctor(healthy())
    assert [c.name for c in checks] == list(CHECKS)
    assert {c.name: c.status for c in checks if c.status != "ok"} == {}
    text = render_text(checks)
    assert "0 failed, 0 warnings" in text and "fix:" not in text
    assert "sm 9.0" in one(healthy(), "compute-capability").summary


def test_cpu_machine_skips_the_gpu_checks():
    status = {c.name: c.status for c in run_doctor(cpu_box())}
    assert status == {"torch-cuda": "skip", "compute-capability": "skip", "nvcc": "skip", "engine-gemv": "skip",
                      "machete-offline": "skip",
                      "llama-offload": "ok", "gguf-smoke": "ok", "versions": "ok", "backends": "ok", "disk": "ok",
                      "hub": "ok", "hf-token": "ok"}


# (probe overrides, check, status, words in the summary, words in the fix)
CASES = [
    ("cpu-only torch on a GPU box", dict(torch=lambda: {"version": "2.14.1", "cuda": None, "cuda_available": False,
                                                        "devices": []},
                                         nvidia=lambda: {"driver": "550.54", "cuda": "12.4", "gpus": [H100]}),
     "torch-cuda", "fail", ["CPU-only build", "H100"], ["pip install --force-reinstall torch", "whl/cu124"]),
    ("torch newer than the driver", dict(torch=lambda: {"version": "2.14.1", "cuda": "13.0", "cuda_available": False,
                                                         "devices": []},
                                         nvidia=lambda: {"driver": "550.54", "cuda": "12.4", "gpus": [H100]}),
     "torch-cuda", "fail", ["CUDA 13.0", "up to CUDA 12.4"], ["upgrade the NVIDIA driver", "whl/cu124"]),
    ("torch missing (a GGUF-only install)", dict(torch=lambda: None), "torch-cuda", "skip",
     ["not installed", "pip install 'quantdeploy[gptq]'"], []),
    ("T4: no Marlin", dict(torch=lambda: {"version": "2.14.1", "cuda": "13.0", "cuda_available": True,
                                          "devices": [{"name": "Tesla T4", "capability": [7, 5]}]}),
     "compute-capability", "warn", ["Tesla T4", "Marlin needs 8.0", "exllama_v2"], ["Ampere"]),
    ("Maxwell: no GPU kernel", dict(torch=lambda: {"version": "2.14.1", "cuda": "13.0", "cuda_available": True,
                                                   "devices": [{"name": "GTX 980", "capability": [5, 2]}]}),
     "compute-capability", "fail", ["sm 5.2"], ["GGUF"]),
    ("no nvcc, nothing compiled", dict(nvcc=lambda: None, jit_kernels=lambda: {"marlin_fp16": False}),
     "nvcc", "fail", ["nvcc not found", "Marlin"], ["CUDA toolkit", "nvcc on PATH"]),
    ("no nvcc, marlin compiled", dict(nvcc=lambda: None), "nvcc", "warn", ["already compiled: marlin_fp16"],
     ["nvcc"]),
    ("nvcc too old", dict(nvcc=lambda: {"path": "/usr/bin/nvcc", "version": "12.4"}), "nvcc", "fail",
     ["12.4", "older than 12.8"], ["CUDA toolkit 12.8+"]),
    ("no NVRTC for the engine's GEMV", dict(engine_gemv=lambda: {"ok": False, "arch": "90", "error":
                                                              "OSError: libnvrtc.so.13: cannot open shared object"}),
     "engine-gemv", "warn", ["libnvrtc", "falls back to the engine's Triton GEMV"], ["--force-reinstall torch"]),
    ("offline Hopper", dict(reachable=lambda url, timeout: (False, "Name or service not known")),
     "machete-offline", "warn", ["offline Hopper", "CUTLASS"], ["backend='marlin'"]),
    ("offline Hopper forcing machete", dict(reachable=lambda url, timeout: (False, "timed out"), settings=lambda:
                                            Settings(home=Path("/srv/qd"), engine=EngineConfig(kernel="machete"))),
     "machete-offline", "fail", ["QUANTDEPLOY_KERNEL=machete", "URLError"], ["unset QUANTDEPLOY_KERNEL"]),
    ("offline Hopper with CUTLASS cached", dict(reachable=lambda url, timeout: (False, "x"),
                                                cutlass_cached=lambda: True),
     "machete-offline", "ok", ["cached"], []),
    ("CPU-only llama build on a GPU box", dict(llama_cpp=lambda: {"version": "0.3.36", "gpu_offload": False}),
     "llama-offload", "fail", ["CPU-only build", "H100"], ['CMAKE_ARGS="-DGGML_CUDA=on"', "--force-reinstall"]),
    ("llama-cpp-python missing", dict(llama_cpp=lambda: None), "llama-offload", "fail", ["not installed"],
     ["-DGGML_CUDA=on"]),
    ("AMX segfault", dict(gguf_smoke=lambda: {"returncode": -11, "signal": "SIGSEGV", "seconds": 0.8,
                                              "timeout": False, "stderr": ""}),
     "gguf-smoke", "fail", ["crashed (SIGSEGV)", "AMX"], ["-DGGML_NATIVE=OFF", "--force-reinstall"]),
    ("GGUF eval hangs", dict(gguf_smoke=lambda: {"returncode": None, "signal": None, "seconds": 300,
                                                 "timeout": True, "stderr": ""}),
     "gguf-smoke", "fail", ["hung"], ["-DGGML_NATIVE=OFF"]),
    ("GGUF eval errors", dict(gguf_smoke=lambda: {"returncode": 1, "signal": None, "seconds": 2, "timeout": False,
                                                  "stderr": "Traceback...\nRuntimeError: bad things"}),
     "gguf-smoke", "fail", ["RuntimeError: bad things"], ["python -c"]),
    ("old transformers", dict(versions=lambda: dict(VERSIONS, transformers="4.57.1")), "versions", "fail",
     ["transformers 4.57.1 (needs <6,>=5.0)"], ["pip install 'transformers<6,>=5.0'"]),
    ("gptqmodel too old", dict(versions=lambda: dict(VERSIONS, gptqmodel="7.6.0")), "versions", "fail",
     ["gptqmodel 7.6.0 (needs ==7.7.0)"], ["pip install 'gptqmodel==7.7.0'"]),
    ("an extra not installed is no failure", dict(versions=lambda: dict(VERSIONS, gptqmodel=None, torch=None)),
     "versions", "ok", ["gguf 0.19.0"], []),
    ("a core dependency missing", dict(versions=lambda: dict(VERSIONS, gguf=None)), "versions", "fail",
     ["gguf is missing"], ["pip install 'gguf>=0.10'"]),
    ("disk nearly full", dict(disk_free=lambda path: (Path("/srv"), 1 * 10**9)), "disk", "fail", ["1.0 GB free"],
     ["QUANTDEPLOY_HOME"]),
    ("disk small", dict(disk_free=lambda path: (Path("/srv"), 6 * 10**9)), "disk", "warn", ["6.0 GB free"],
     ["QUANTDEPLOY_HOME"]),
    ("hub unreachable", dict(reachable=lambda url, timeout: (False, "timed out")), "hub", "warn",
     ["cannot reach https://huggingface.co", "timed out"], ["HF_ENDPOINT", "HF_HUB_OFFLINE=1"]),
    ("offline mode", dict(settings=lambda: Settings(home=Path("/srv/qd"), hf_offline=True)), "hub", "skip",
     ["HF_HUB_OFFLINE"], []),
    ("no token", dict(hf_token=lambda settings: None), "hf-token", "warn", ["no Hugging Face token"],
     ["huggingface-cli login", "HF_TOKEN"]),
    ("backend missing", dict(backends=lambda: [{"format": "gguf", "backend": "llama.cpp", "available": False,
                                                "reason": "llama-cpp-python is not installed; build it"}]),
     "backends", "warn", ["gguf (llama.cpp)"], ["llama-cpp-python is not installed"]),
]


@pytest.mark.parametrize("case,over,check,status,summary_has,fix_has", CASES, ids=[c[0] for c in CASES])
def test_check_with_faked_probes(case, over, check, status, summary_has, fix_has):
    c = one(healthy(**over), check)
    assert c.status == status, (case, c)
    for w in summary_has:
        assert w in c.summary, (case, w, c.summary)
    for w in fix_has:
        assert w in (c.fix or ""), (case, w, c.fix)
    if status in ("fail", "warn"):
        assert c.fix, case  # every problem says how to fix it
        assert f"fix: {c.fix}" in render_text([c])


def test_hub_probe_uses_the_configured_endpoint_with_a_short_timeout():
    seen = []
    probes = healthy(settings=lambda: Settings(home=Path("/srv/qd"), hf_endpoint="http://mirror.local:8080/"),
                     reachable=lambda url, timeout: seen.append((url, timeout)) or (True, "HTTP 200"))
    assert one(probes, "hub").status == "ok"
    assert seen == [("http://mirror.local:8080/api/models?limit=1", 3.0)]


def test_token_value_is_never_printed():
    probes = healthy(settings=lambda: Settings(home=Path("/srv/qd"), hf_token="hf_secret123"),
                     hf_token=lambda s: "HF_TOKEN" if s.hf_token else None)
    c = one(probes, "hf-token")
    assert c.status == "ok" and "hf_secret123" not in json.dumps(c.to_dict()) + render_text([c])


def test_a_broken_probe_does_not_hide_the_other_checks():
    def boom():
        raise RuntimeError("probe exploded")

    checks = run_doctor(healthy(nvcc=boom))
    by = {c.name: c for c in checks}
    assert by["nvcc"].status == "warn" and "probe exploded" in by["nvcc"].summary
    assert all(by[n].status == "ok" for n in CHECKS if n != "nvcc")


def test_probes_are_called_once_per_run():
    calls = []
    probes = healthy(torch=lambda: calls.append(1) or {"version": "2.14.1", "cuda": "13.0", "cuda_available": True,
                                                        "devices": [H100]})
    run_doctor(probes)
    assert len(calls) == 1


def test_unknown_check_is_a_usage_error():
    with pytest.raises(UsageError, match="choose from: torch-cuda"):
        run_doctor(healthy(), only=["gpu"])


def test_cli_exit_code_and_fix_lines_with_faked_probes(monkeypatch, capsys):
    import quantdeploy.doctor as doc
    from quantdeploy.cli import main

    monkeypatch.setattr(doc, "default_probes", lambda: healthy(
        llama_cpp=lambda: {"version": "0.3.36", "gpu_offload": False}))
    with pytest.raises(SystemExit) as e:
        main(["doctor"])
    out, err = capsys.readouterr()
    assert e.value.code == 1
    assert "FAIL  llama-offload" in out and 'fix: CMAKE_ARGS="-DGGML_CUDA=on"' in out
    assert err.strip() == "error: 1 check(s) failed: llama-offload (fixes above)"


def test_cli_json_on_this_machine(qd_home):
    proc = run_cli("doctor", "--json", "--check", "torch-cuda", "--check", "llama-offload", "--check",
                   "gguf-smoke", "--check", "versions", "--check", "disk", env={"QUANTDEPLOY_HOME": str(qd_home)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    by = {c["name"]: c for c in data["checks"]}
    assert list(by) == ["torch-cuda", "llama-offload", "gguf-smoke", "versions", "disk"] and data["ok"] is True
    assert by["gguf-smoke"]["status"] == "ok" and by["gguf-smoke"]["details"]["returncode"] == 0  # real subprocess
    assert by["versions"]["status"] == "ok" and "gptqmodel 7.7.0" in by["versions"]["summary"]
    assert by["torch-cuda"]["status"] in ("ok", "skip") and by["llama-offload"]["status"] == "ok"


def test_cli_unknown_check():
    assert_clean_error(run_cli("doctor", "--check", "nope"), "unknown check", "torch-cuda")
