"""Kernel evidence rules, table-driven: each known fallback is named with its fix, GPU use needs evidence.

The reports are shaped like the backends' real kernel_report() output (GGUF and HF rows below mirror what
the embedded GGUF and the GPTQ fixture report on this machine, plus their GPU counterparts)."""

from __future__ import annotations

import pytest

from quantdeploy.bench.kernels import (is_quant_gemm, kernel_map, kernel_required, summarize_profile, verify)

GGUF_CPU = {"backend": "llama.cpp", "format": "gguf", "device": "cpu", "kernel": "llama.cpp-cpu", "gpu_build": False,
            "gpu": False, "layers_total": 19, "layers_offloaded": 0, "quant": "Q4_K_M", "layers": {"all": "ggml CPU"}}
GGUF_GPU = dict(GGUF_CPU, device="cuda:0", kernel="llama.cpp-cuda", gpu_build=True, gpu=True, layers_offloaded=19)
HF_LAYERS = {p: "MarlinLinear" for p in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                               "down_proj")} | {"lm_head": "Linear"}
HF_MARLIN = {"backend": "transformers+gptqmodel", "format": "gptq", "device": "cuda:0", "kernel": "marlin",
             "quant_linear_classes": ["MarlinLinear"], "layers": HF_LAYERS, "gpu": True}
HF_TORCH_GPU = dict(HF_MARLIN, kernel="torch", quant_linear_classes=["TorchLinear"], gpu=False,
                    layers={k: ("Linear" if k == "lm_head" else "TorchLinear") for k in HF_LAYERS})
HF_CPU = dict(HF_MARLIN, device="cpu", kernel="cpu", quant_linear_classes=["TorchCpuAvx512Linear"], gpu=False,
              layers={k: ("Linear" if k == "lm_head" else "TorchCpuAvx512Linear") for k in HF_LAYERS})
HF_DEQUANTIZED = dict(HF_CPU, device="cuda:0", quant_linear_classes=[], gpu=False,
                      layers={k: "Linear" for k in HF_LAYERS})
PROFILE_MARLIN = summarize_profile([("void marlin::Marlin<__half, 4, 256>(...)", 3400.0, 224),
                                    ("gemv2T_kernel_val<float>", 240.0, 1), ("elementwise_kernel", 1700.0, 1200)],
                                   [("gptqmodel_marlin_fp16::gptq_marlin_gemm", 224), ("aten::add", 300)], tokens=16)
PROFILE_DEQUANT = summarize_profile([("dequantize_block_q4_K", 900.0, 64), ("sm90_xmma_gemm_f16f16", 2000.0, 64)],
                                    [("aten::mm", 64)], tokens=16)


@pytest.mark.parametrize("name,report,device,gpus,profile,in_use,fallback,reason_has,fix_has", [
    ("gguf on a CPU-only machine", GGUF_CPU, "cpu", 0, None, False, None, "no CUDA GPU here", None),
    ("gguf, CPU-only llama build, GPU present", GGUF_CPU, "cpu", 1, None, False, "llama-cpu-only-build",
     "built without GPU offload", "-DGGML_CUDA=on"),
    ("gguf, 0 layers offloaded", dict(GGUF_CPU, gpu_build=True), "cpu", 1, None, False, "gguf-zero-offload",
     "0 of 19 layers", "--gpu-layers"),
    ("gguf, partial offload", dict(GGUF_GPU, layers_offloaded=10), "cuda:0", 1, None, False,
     "gguf-partial-offload", "only 10 of 19", "--gpu-layers -1"),
    ("gguf, all offloaded", GGUF_GPU, "cuda:0", 1, None, True, None, "all 19 layers offloaded", None),
    ("gguf F16 file", dict(GGUF_GPU, quant="F16"), "cuda:0", 1, None, True, "gguf-not-quantized", "all 19",
     "Q4_K_M"),
    ("gptq marlin on GPU", HF_MARLIN, "cuda:0", 1, None, True, None, "MarlinLinear", None),
    ("gptq marlin with profiler proof", HF_MARLIN, "cuda:0", 1, PROFILE_MARLIN, True, None,
     "gptq_marlin_gemm", None),
    ("gptq marlin class but no quant kernel ran", HF_MARLIN, "cuda:0", 1, PROFILE_DEQUANT, False,
     "no-quant-kernel-in-profile", "no quantized GEMM kernel", "--kernel marlin"),
    ("torch dequant path on a GPU", HF_TORCH_GPU, "cuda:0", 1, None, False, "torch-dequant-on-gpu",
     "TorchLinear", "--kernel marlin"),
    ("awq torch path on a GPU", dict(HF_TORCH_GPU, format="awq", quant_linear_classes=["AwqTorchLinear"]), "cuda:0",
     1, None, False, "torch-dequant-on-gpu", "AwqTorchLinear", "--kernel marlin"),
    ("gptq triton on GPU (subclass of TorchLinear, not the fallback)",
     dict(HF_MARLIN, kernel="triton", quant_linear_classes=["TritonV2Linear"]), "cuda:0", 1, None, True, None,
     "TritonV2Linear", None),
    ("quantdeploy's fast engine on GPU", dict(HF_MARLIN, backend="quantdeploy-engine", kernel="triton-w4a16-gemv",
                                               quant_linear_classes=["triton-w4a16-gemv"],
                                               layers={"qkv_proj": "W4A16 GEMV (Triton), fused qkv_proj"}),
     "cuda:0", 1, summarize_profile([("_w4a16_gemv", 900.0, 64), ("elementwise_kernel", 300.0, 400)]), True, None,
     "75% of decode GPU time", None),
    ("gptq on CPU, no GPU", HF_CPU, "cpu", 0, None, False, None, "no CUDA GPU here: TorchCpuAvx512Linear", None),
    ("gptq on CPU although a GPU is present", HF_CPU, "cpu", 2, None, False, "cpu-with-gpu-present",
     "2 GPU(s) present", "--device cuda"),
    ("dequantized to full precision (transformers gguf_file)", HF_DEQUANTIZED, "cuda:0", 1, None, False,
     "full-precision-weights", "dequantized to full precision", "llama.cpp backend"),
])
def test_verify(name, report, device, gpus, profile, in_use, fallback, reason_has, fix_has):
    v = verify(report, device=device, gpus=gpus, profile=profile)
    assert v["gpu_kernels_in_use"] is in_use, (name, v)
    assert reason_has in v["reason"], (name, v["reason"])
    ids = [f["id"] for f in v["fallbacks"]]
    if fallback is None:
        assert ids == [], (name, ids)
    else:
        assert fallback in ids, (name, ids)
        fb = next(f for f in v["fallbacks"] if f["id"] == fallback)
        assert fix_has in fb["fix"], (name, fb)
        assert fb["message"]


def test_profile_summary_counts_only_quantized_gemms():
    assert PROFILE_MARLIN["quant_kernels"] == ["void marlin::Marlin<__half, 4, 256>(...)"]
    assert PROFILE_MARLIN["quant_ops"] == ["gptqmodel_marlin_fp16::gptq_marlin_gemm"]
    assert PROFILE_MARLIN["quant_gemm_share"] == pytest.approx(3400 / 5340, abs=1e-3)
    assert PROFILE_DEQUANT["quant_gemm_share"] == 0.0
    assert PROFILE_DEQUANT["dequant_kernels"] == ["dequantize_block_q4_K"]
    assert summarize_profile([])["quant_gemm_share"] == 0.0


@pytest.mark.parametrize("name,quant", [
    ("gptq_marlin_gemm", True), ("void marlin::Marlin<...>", True), ("gemm_half_q_half_gptq_4bit_kernel", True),
    ("mul_mat_vec_q<GGML_TYPE_Q4_K, 1>", True), ("_gptq_gemv_kernel", True), ("machete_mm", True),
    ("dequantize_block_q4_K", False), ("awq_marlin_repack_kernel", False), ("reconstruct_exllama_kernel", False),
    ("ampere_fp16_s16816gemm_fp16_128x128", False), ("gemv2T_kernel_val", False), ("elementwise_kernel", False),
    # quantdeploy's CUDA GEMV as the profiler names it on the H200; its prompt-time dequantization is not a GEMM
    ("void qd_w4a16_gemv<2, 4>(uint4 const*, unsigned int const*, uint4 const*, __half*, int, int, int, int)", True),
    ("void qd_w4a16_gemv_sk<8, 1, 0>(uint4 const*, unsigned int const*, uint4 const*, __half*, int, int, int, int)",
     True),
    ("qd_w4a16_dequant(unsigned int const*, unsigned int const*, uint4*, int, int, int)", False),
])
def test_quant_gemm_names(name, quant):
    assert is_quant_gemm(name) is quant


def test_gguf_kernel_map_follows_llama_offload_order():
    assert kernel_map(GGUF_CPU) == {"blk.0-17": "ggml CPU (Q4_K_M)", "output": "ggml CPU"}
    assert kernel_map(GGUF_GPU) == {"blk.0-17": "ggml CUDA (Q4_K_M)", "output": "ggml CUDA"}
    assert kernel_map(dict(GGUF_GPU, layers_offloaded=5)) == {
        "blk.0-12": "ggml CPU (Q4_K_M)", "blk.13-17": "ggml CUDA (Q4_K_M)", "output": "ggml CPU"}
    assert kernel_map(HF_MARLIN) == HF_LAYERS


def test_require_kernel_matches_any_evidence_case_insensitively():
    result = {"kernel": "marlin", "kernels": {"quant_linear_classes": ["MarlinLinear"], "map": HF_LAYERS,
                                             "profile": PROFILE_MARLIN}}
    for name in ("marlin", "MARLIN", "gptq_marlin_gemm", "MarlinLinear"):
        assert kernel_required(name, result), name
    for name in ("exllama", "machete", "llama.cpp-cuda"):
        assert not kernel_required(name, result), name
