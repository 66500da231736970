"""The one kernel chooser for GPTQ/AWQ (quantdeploy/backends/kernels.py): the order, each kernel's reason, one
disable list, forcing, the engine filter, and --kernel meaning the kernel whatever the engine. Rows that need no GPU
and no compiler: targets whose compute capability, shapes or architecture decide before any kernel is built."""

from __future__ import annotations

import pytest

from quantdeploy.backends.kernels import KERNELS, LayerConfig, Target, choose, survey
from quantdeploy.checkpoint import QuantConfig
from quantdeploy.errors import BackendUnavailable, UsageError

LLAMA = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "intermediate_size": 14336}


def layer(fmt="gptq", group=128, model_type="llama", bits=4):
    return LayerConfig.from_checkpoint(fmt, {**LLAMA, "model_type": model_type},
                                       QuantConfig(method=fmt, bits=bits, group_size=group))


CPU, T4, PASCAL, AMPERE, HOPPER = (Target("cpu"), Target("cuda:0", (7, 5)), Target("cuda:0", (6, 1)),
                                   Target("cuda:0", (8, 6)), Target("cuda:0", (9, 0)))


@pytest.mark.parametrize("fmt,lay,target,kw,want,why", [
    # the CPU: gptqmodel's CPU kernels, or the engine's float32 path when asked for or when they are disabled
    ("gptq", layer(), CPU, {}, "cpu", "skipped fast_cuda: needs a CUDA GPU (device is cpu)"),
    ("gptq", layer(), CPU, {"engine": "fast"}, "fast_torch", "fast_triton: needs a CUDA GPU"),
    ("awq", layer("awq"), CPU, {"disabled": ("cpu",)}, "fast_torch", "cpu: disabled by QUANTDEPLOY_DISABLED_KERNELS"),
    ("gptq", layer(), CPU, {"engine": "hf"}, "cpu", ""),
    # GPUs the engine's kernels cannot serve, and models they cannot take: the next kernel, with the reason
    ("gptq", layer(), PASCAL, {}, "exllama_v2", "fast_cuda: needs compute capability 7.0+ (this GPU is 6.1)"),
    ("gptq", layer(), PASCAL, {}, "exllama_v2", "marlin: needs compute capability 8.0+"),
    ("awq", layer("awq"), PASCAL, {}, "exllama_v2", "fast_triton: needs compute capability 7.0+"),
    ("gptq", layer(group=48), AMPERE, {}, "marlin", "fast_cuda: cannot take group size 48 with K 4096, 14336"),
    ("gptq", layer(group=48), AMPERE, {}, "marlin", "fast_triton: cannot take group size 48 with K 4096, 14336 (needs a power"),
    ("gptq", layer(model_type="mixtral"), HOPPER, {}, "marlin",
     "fast_cuda: the fast engine does not implement mixtral (a mixture-of-experts model)"),
    ("gptq", layer(bits=8), HOPPER, {}, "marlin", "fast_cuda: the fast engine's kernels unpack 4-bit weights"),
    ("gptq", layer(), T4, {"engine": "hf"}, "exllama_v2", "marlin: needs compute capability 8.0+ (this GPU is 7.5)"),
    # forced kernels
    ("gptq", layer(), CPU, {"forced": "fast_torch"}, "fast_torch", "forced with --kernel"),
    ("awq", layer("awq"), AMPERE, {"forced": "MARLIN", "forced_by": "QUANTDEPLOY_KERNEL"}, "marlin",
     "forced with QUANTDEPLOY_KERNEL"),
])
def test_the_first_kernel_that_can_run_wins(fmt, lay, target, kw, want, why):
    choice = choose(fmt, lay, target, **kw)
    assert choice.kernel.name == want, choice
    assert why in choice.reason, choice.reason
    assert choice.engine == ("fast" if want.startswith("fast_") else "hf")  # the kernel decides the engine


@pytest.mark.parametrize("fmt,lay,target,kw,error,needles", [
    ("gptq", layer(), CPU, {"forced": "cuda"}, UsageError, ["unknown kernel 'cuda' for gptq", "fast_cuda, fast_trit"]),
    ("awq", layer("awq"), AMPERE, {"forced": "triton"}, UsageError, ["unknown kernel 'triton' for awq", "gemm"]),
    ("gptq", layer(), CPU, {"forced": "marlin", "engine": "fast"}, UsageError,
     ["--kernel marlin runs on the transformers + gptqmodel (--engine hf), not --engine fast"]),
    ("gptq", layer(), CPU, {"forced": "fast_torch", "engine": "hf"}, UsageError,
     ["--kernel fast_torch runs on the quantdeploy fast engine (--engine fast), not --engine hf"]),
    ("gptq", layer(), CPU, {"forced": "marlin"}, BackendUnavailable,
     ["--kernel marlin cannot run this model on cpu: needs a CUDA GPU"]),
    ("gptq", layer(), CPU, {"disabled": ("marlln",)}, UsageError,
     ["QUANTDEPLOY_DISABLED_KERNELS: unknown kernel 'marlln'", "marlin"]),
    # nothing fits: one error with every kernel's reason
    ("gptq", layer(model_type="mixtral"), PASCAL, {"engine": "fast"}, BackendUnavailable,
     ["no gptq kernel can run this model on cuda:0", "fast_cuda: the fast engine does not implement mixtral (a mix",
      "fast_triton: the fast engine does not implement mixtral", "fast_torch: the fast engine does not implement mixt"]),
    ("awq", layer("awq"), CPU, {"disabled": ("cpu", "fast_torch", "torch")}, BackendUnavailable,
     ["fast_cuda: needs a CUDA GPU", "marlin: needs a CUDA GPU", "cpu: disabled", "fast_torch: disabled",
      "torch: disabled"]),
])
def test_refusals_say_why(fmt, lay, target, kw, error, needles):
    with pytest.raises(error) as e:
        choose(fmt, lay, target, **kw)
    for n in needles:
        assert n in str(e.value), (n, str(e.value))


def test_the_summary_says_why_the_fast_engine_was_passed_over():
    """The line chat / serve / bench print at load: the first kernel's engine, when none of its kernels can run the
    model, with the reason; nothing more when the order alone decided (the CPU's gptqmodel kernels before fast_torch)."""
    moe = choose("gptq", layer(model_type="mixtral"), HOPPER)
    assert moe.kernel.name == "marlin" and moe.summary == (
        "first kernel in order that can run it on cuda:0; not the quantdeploy fast engine: the fast engine does not "
        "implement mixtral (a mixture-of-experts model); it runs llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3, "
        "gemma3_text")
    assert "not the quantdeploy fast engine: needs compute capability 7.0+" in choose("gptq", layer(), PASCAL).summary
    assert choose("gptq", layer(), CPU).summary == "first kernel in order that can run it on cpu"


def test_a_gguf_says_where_llama_cpp_runs_it(gguf_path):
    """The runs-on line for GGUF: llama.cpp on the CPU here (this machine's llama-cpp-python is a CPU build, or it
    has no GPU, or --device cpu asked for it), with the reason."""
    from pathlib import Path

    from quantdeploy.backends.base import ModelSpec
    from quantdeploy.registry import get_backend

    backend = get_backend("gguf")
    what, why = backend.runs_on(ModelSpec(path=Path(gguf_path), format="gguf", device="cpu"))
    assert what == "llama.cpp (CPU)" and why in ("--device cpu", "no GPU here", "llama-cpp-python is a CPU build")
    what, why = backend.runs_on(ModelSpec(path=Path(gguf_path), format="gguf"))
    assert what in ("llama.cpp (CPU)", "llama.cpp (CUDA)") and why


def test_survey_asks_every_kernel_in_order():
    rows = survey("gptq", layer(), CPU)
    assert [r.name for r in rows] == [k.name for k in KERNELS["gptq"]]
    assert [r.name for r in rows if r.chosen] == ["cpu"]
    by = {r.name: r for r in rows}
    assert by["fast_torch"].ok and by["fast_torch"].engine == "quantdeploy fast engine"
    assert not by["marlin"].ok and by["marlin"].engine == "transformers + gptqmodel"
    assert by["torch"].ok and by["machete"].reason == "needs a CUDA GPU (device is cpu)"
    on_gpu = {r.name: r for r in survey("gptq", layer(), HOPPER)}  # torch dequantizes every step there
    assert on_gpu["torch"].ok and on_gpu["torch"].reason == "only when forced (--kernel)"
    forced = survey("gptq", layer(), CPU, forced="fast_torch")
    assert [r.name for r in forced if r.chosen] == ["fast_torch"]


def test_layer_config_reads_the_linears_of_a_nested_text_config():
    cfg = {"model_type": "gemma3", "text_config": {"hidden_size": 640, "num_attention_heads": 4, "head_dim": 256,
                                                   "intermediate_size": 2048}}
    lay = LayerConfig.from_checkpoint("gptq", cfg, QuantConfig(method="gptq", group_size=-1))
    assert lay.in_features == (640, 1024, 2048) and lay.model_type == "gemma3"
    assert lay.groups() == [(640, 640), (1024, 1024), (2048, 2048)]  # per channel: a group is all of K
    assert "fast_cuda: cannot take per-channel groups with K 640 (" in choose("gptq", lay, AMPERE).reason  # 20 x 32


def test_cli_shows_the_choice(gptq_path):
    """`inspect` says which kernel this model would run here and why the others would not; `backends` lists every
    kernel in order with the engine that runs it; an old engine-kernel name is an unknown kernel that lists the
    new ones."""
    import json

    from conftest import assert_clean_error, run_cli

    info = json.loads(run_cli("inspect", str(gptq_path), "--json").stdout)
    assert info["kernel"] == "cpu (transformers + gptqmodel)"
    assert info["runs_on"] == "transformers + gptqmodel (cpu kernel)" and "first kernel" in info["runs_on_why"]
    assert "fast_cuda (quantdeploy fast engine): needs a CUDA GPU (device is cpu)" in info["kernels"]
    rows = {r["format"]: r for r in json.loads(run_cli("backends", "--json").stdout)}
    gptq = rows["gptq"]
    assert gptq["engines"] == ["quantdeploy fast engine", "transformers + gptqmodel"]
    assert [k["name"] for k in gptq["kernels"]][:3] == ["fast_cuda", "fast_triton", "marlin"]
    assert [k["name"] for k in gptq["kernels"] if k["chosen"]] == ["cpu"]
    assert_clean_error(run_cli("chat", str(gptq_path), "--kernel", "cuda", "--prompt", "hi", "-n", "2"),
                       "unknown kernel 'cuda' for gptq", "fast_cuda")
    proc = run_cli("inspect", str(gptq_path), env={"QUANTDEPLOY_DISABLED_KERNELS": "cpu"})
    assert proc.returncode == 0 and "fast_torch (quantdeploy fast engine)" in proc.stdout
