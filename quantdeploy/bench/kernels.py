"""Evidence of what really ran: a per-layer kernel map, profiler evidence on CUDA, the known slow fallbacks.

`verify()` is a pure function of the backend's kernel_report() (plus the profile and the GPU count), so every
fallback rule is tested on CPU with made-up reports. `profile_decode()` is the only part that needs a GPU:
torch.profiler (CUPTI) sees every CUDA kernel launched in the process, llama.cpp's ggml kernels included.
"""

from __future__ import annotations

import sys

from typing import Any

CUPTI_USED = False  # set once torch.profiler has traced CUDA in this process (see cli._exit)
# Kernels that turn the weights back into floats: a fallback sign at batch 1, or load-time work.
NOT_A_GEMM = ("dequant", "reconstruct", "repack", "permute")

LLAMA_CUDA_FIX = ('rebuild llama-cpp-python with CUDA: CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall '
                  "--no-cache-dir llama-cpp-python (or ./install.sh on the GPU machine)")
GPU_KERNEL_FIX = ("use a GPU kernel: --kernel marlin (compute capability 8.0+) or --kernel exllama_v2; "
                  "`quantdeploy doctor` lists the kernels this GPU can run")
# gptqmodel's dequantize-then-matmul classes (TorchLinear, AwqTorchLinear, TorchFusedLinear, TorchAtenLinear,
# TorchCpuAvx512Linear): fine on a CPU, the slow fallback on a GPU. TritonV2Linear subclasses TorchLinear but is not.
_TORCH_MARK = "Torch"


def quant_gemm_patterns() -> tuple[str, ...]:
    """Substrings (lower case) of kernel / op names that are quantized matrix multiplies: every registered
    backend's `kernel_patterns` (gptqmodel's Marlin, ExLlama, AWQ kernels, llama.cpp's mul_mat_vec_q, ...)."""
    from ..registry import kernel_patterns

    return kernel_patterns()


def is_quant_gemm(name: str, patterns: tuple[str, ...] | None = None) -> bool:
    n = name.lower()
    return any(p in n for p in patterns or quant_gemm_patterns()) and not any(p in n for p in NOT_A_GEMM)


def _short(name: str, n: int = 140) -> str:
    return name if len(name) <= n else name[: n - 3] + "..."


def summarize_profile(kernels: list[tuple[str, float, int]], ops: list[tuple[str, int]] | None = None,
                      *, tokens: int = 0, top: int = 15) -> dict[str, Any]:
    """kernels: (name, GPU time in µs, calls) per CUDA kernel; ops: (name, calls) per host-side op."""
    total = sum(t for _, t, _ in kernels)
    patterns = quant_gemm_patterns()
    quant = [(n, t, c) for n, t, c in kernels if is_quant_gemm(n, patterns)]
    quant_t = sum(t for _, t, _ in quant)
    rows = sorted(kernels, key=lambda r: -r[1])[:top]
    return {
        "tokens": tokens,
        "gpu_time_us": round(total, 1),
        "quant_gemm_share": round(quant_t / total, 4) if total else 0.0,
        "quant_kernels": sorted({_short(n) for n, _, _ in quant}),
        "quant_ops": sorted({n for n, _ in (ops or []) if is_quant_gemm(n, patterns)}),
        "dequant_kernels": sorted({_short(n) for n, _, _ in kernels if "dequant" in n.lower()}),
        "top_kernels": [{"name": _short(n), "time_us": round(t, 1), "calls": c,
                         "quant_gemm": is_quant_gemm(n, patterns)} for n, t, c in rows],
    }


def profile_decode(model, prompt_ids: list[int], tokens: int = 16) -> dict[str, Any] | None:
    """Profile `tokens` decode steps (prefill and the first token stay outside) on CUDA; None on the CPU."""
    if not str(model.device).startswith("cuda"):
        return None
    if getattr(model, "format", "") == "gguf" and "torch" not in sys.modules:
        # torch's CUDA libraries loaded beside llama.cpp's CUDA build crash the process (seen on an H200):
        # GGUF evidence is llama.cpp's own (layers offloaded, GPU build, native eval timer)
        return None
    # the fast engine: profile eager steps (the same kernels), so each one shows under its own name
    engine = getattr(model, "engine", None)
    engine = engine if hasattr(engine, "use_graph") else None
    saved = engine.use_graph if engine is not None else None
    try:
        import torch
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        from ..backends.base import GenerationParams

        if engine is not None:
            engine.use_graph = False
        gen = model.generate(list(prompt_ids), GenerationParams(max_tokens=tokens + 1, temperature=0,
                                                                 ignore_eos=True, seed=0))
        it = iter(gen)
        next(it, None)
        torch.cuda.synchronize()
        global CUPTI_USED
        CUPTI_USED = True  # the CLI then skips the exit-time teardown that crashes in CUPTI (cli/__init__.py)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in it:
                pass
            torch.cuda.synchronize()
        kernels, ops = [], []
        for e in prof.key_averages():
            if e.device_type == DeviceType.CUDA:
                t = getattr(e, "self_device_time_total", None) or getattr(e, "device_time_total", 0) or 0
                kernels.append((e.key, float(t), int(e.count)))
            else:
                ops.append((e.key, int(e.count)))
        out = summarize_profile(kernels, ops, tokens=max(0, gen.usage.completion_tokens - 1))
        if not kernels:
            out["error"] = "the profiler saw no CUDA kernel (CUPTI unavailable?)"
        return out
    except Exception as e:  # evidence is best effort: a broken profiler must not lose the timings
        return {"error": f"profiling failed: {type(e).__name__}: {str(e)[:200]}"}
    finally:
        if engine is not None:
            engine.use_graph = saved


def kernel_map(report: dict[str, Any]) -> dict[str, str]:
    """Layer (type) -> what runs it. GGUF: llama.cpp offloads the last N repeating blocks, then the output."""
    if report.get("format") != "gguf":
        return dict(report.get("layers") or {})
    total = int(report.get("layers_total") or 0)  # blocks + output layer
    blocks = max(0, total - 1)
    off = int(report.get("layers_offloaded") or 0)
    gpu_blocks = min(off, blocks)
    first_gpu = blocks - gpu_blocks
    out: dict[str, str] = {}
    quant = report.get("quant") or "?"
    if first_gpu > 0:
        out[f"blk.0-{first_gpu - 1}"] = f"ggml CPU ({quant})"
    if gpu_blocks:
        out[f"blk.{first_gpu}-{blocks - 1}"] = f"ggml CUDA ({quant})"
    out["output"] = "ggml CUDA" if off > blocks else "ggml CPU"
    return out


def _fallback(fid: str, message: str, fix: str) -> dict[str, str]:
    return {"id": fid, "message": message, "fix": fix}


def verify(report: dict[str, Any], *, device: str, gpus: int, profile: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    """{"gpu_kernels_in_use", "reason", "fallbacks": [{"id", "message", "fix"}]} from the evidence."""
    fmt = report.get("format")
    on_gpu = str(device).startswith("cuda")
    fallbacks: list[dict[str, str]] = []
    kernel = report.get("kernel") or "?"
    if fmt == "gguf":
        total = int(report.get("layers_total") or 0)
        off = int(report.get("layers_offloaded") or 0)
        quant = str(report.get("quant") or "")
        if quant.upper() in ("F32", "F16", "BF16"):
            fallbacks.append(_fallback("gguf-not-quantized", f"this GGUF holds {quant} weights: nothing is quantized",
                                       "use a quantized file (e.g. Q4_K_M) of the same model"))
        if gpus and not report.get("gpu_build"):
            fallbacks.append(_fallback("llama-cpu-only-build", f"{gpus} GPU(s) present but llama-cpp-python was built "
                                       "without GPU offload: every layer runs on the CPU", LLAMA_CUDA_FIX))
        elif gpus and off == 0:
            fallbacks.append(_fallback("gguf-zero-offload", f"0 of {total} layers offloaded to the GPU: llama.cpp "
                                       "runs the whole model on the CPU",
                                       "offload every layer: drop --gpu-layers 0 / --device cpu (or pass "
                                       "--gpu-layers -1)"))
        elif 0 < off < total:
            fallbacks.append(_fallback("gguf-partial-offload", f"only {off} of {total} layers offloaded: the rest "
                                       "runs on the CPU and sets the speed",
                                       "offload every layer (--gpu-layers -1) on a GPU with enough free memory, "
                                       "or pick a smaller quant"))
        in_use = bool(report.get("gpu_build")) and total > 0 and off >= total
        if in_use:
            reason = f"all {total} layers offloaded (llama.cpp CUDA build)"
        elif not gpus and not on_gpu:
            reason = f"no CUDA GPU here: llama.cpp runs on the CPU ({kernel})"
        else:
            reason = fallbacks[-1]["message"] if fallbacks else f"{off} of {total} layers offloaded"
    else:
        layers = report.get("layers") or {}
        classes = list(report.get("quant_linear_classes") or [])
        proj = {k: v for k, v in layers.items() if k != "lm_head"}
        if proj and all(v.split(".")[-1] in ("Linear", "Linear8bitLt") for v in proj.values()):
            fallbacks.append(_fallback("full-precision-weights", "the projection layers are plain nn.Linear: the "
                                       "weights were dequantized to full precision (what transformers' gguf_file= "
                                       "loader does)", "load the .gguf with quantdeploy (llama.cpp backend) or use "
                                       "a GPTQ/AWQ checkpoint"))
        torch_classes = [c for c in classes if _TORCH_MARK in c]
        if on_gpu and torch_classes:
            fallbacks.append(_fallback("torch-dequant-on-gpu", f"{', '.join(torch_classes)} on {device}: the torch "
                                       "path dequantizes the weights and runs a float matmul every step (slow)",
                                       GPU_KERNEL_FIX))
        if gpus and not on_gpu:
            fallbacks.append(_fallback("cpu-with-gpu-present", f"{gpus} GPU(s) present but the model runs on the CPU",
                                       "run on the GPU: --device cuda; if torch cannot see the GPU, "
                                       "`quantdeploy doctor` names the fix"))
        in_use = on_gpu and bool(report.get("gpu")) and not fallbacks
        names = ", ".join(classes) or "no quantized layer"
        if in_use:
            reason = f"{names} ({kernel}) on {device}"
        elif not gpus and not on_gpu:
            reason = f"no CUDA GPU here: {names} ({kernel}) runs on the CPU"
        else:
            reason = fallbacks[-1]["message"] if fallbacks else f"{names} ({kernel}) is not a GPU kernel"
    if on_gpu and profile and not profile.get("error"):
        share = float(profile.get("quant_gemm_share") or 0.0)
        if share <= 0.0:
            fallbacks.append(_fallback("no-quant-kernel-in-profile", "the profiler saw no quantized GEMM kernel "
                                       "during decode" + (f" (dequantize kernels ran: "
                                       f"{', '.join(profile['dequant_kernels'][:3])})"
                                       if profile.get("dequant_kernels") else ""), GPU_KERNEL_FIX))
            in_use, reason = False, fallbacks[-1]["message"]
        elif in_use:
            names = ", ".join((profile.get("quant_ops") or profile.get("quant_kernels") or [])[:3])
            reason += f"; profiler: {share:.0%} of decode GPU time in quantized GEMM kernels ({names})"
    return {"gpu_kernels_in_use": bool(in_use), "reason": reason, "fallbacks": fallbacks}


def evidence_names(result: dict[str, Any]) -> list[str]:
    """Every name --require-kernel matches against: kernel, layer classes, profiled kernels and ops."""
    k = result.get("kernels") or {}
    names = [str(result.get("kernel") or "")] + list(k.get("quant_linear_classes") or [])
    names += [str(v) for v in (k.get("map") or {}).values()]
    prof = k.get("profile") or {}
    names += list(prof.get("quant_kernels") or []) + list(prof.get("quant_ops") or [])
    names += [r["name"] for r in prof.get("top_kernels") or []]
    return [n for n in names if n]


def kernel_required(name: str, result: dict[str, Any]) -> bool:
    """Case-insensitive substring match of NAME in the evidence (marlin matches gptq_marlin_gemm)."""
    want = name.lower()
    return any(want in n.lower() for n in evidence_names(result))
