"""One GGUF model over several GPUs of one host, with llama.cpp's own split (`--tensor-split`, `--split-mode`).

llama.cpp places whole layers on the GPUs in proportion to the tensor split (`layer`, its default), or splits
each layer's weight rows across them (`row`), or keeps the model on one GPU (`none`). Without a tensor split it
divides the layers in proportion to each GPU's free memory. `device_map()` computes where the layers go as
llama.cpp's loader does (load_tensors in llama-model.cpp), so `bench` can report it.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

from ..errors import UsageError

# --split-mode NAME -> the llama_cpp constant it sets; the first is llama.cpp's default
SPLIT_MODES = {"layer": "LLAMA_SPLIT_MODE_LAYER", "row": "LLAMA_SPLIT_MODE_ROW", "none": "LLAMA_SPLIT_MODE_NONE"}
SPLIT_BY_FREE_MEMORY = "each GPU's free memory"  # what the map says when no --tensor-split was given


def parse_tensor_split(text: str) -> tuple[float, ...]:
    """'3,1' -> (3.0, 1.0): one proportion per GPU, in CUDA order; 0 leaves a GPU out."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) < 2 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise UsageError(f"--tensor-split takes a proportion per GPU, at least two, e.g. 3,1 or 1,1,1,1; got "
                         f"'{text}'")
    return parts


def format_tensor_split(split: tuple[float, ...] | list[float]) -> str:
    return ",".join(f"{p:g}" for p in split)


def check_split_mode(mode: str) -> str:
    if mode not in SPLIT_MODES:
        raise UsageError(f"unknown split mode '{mode}'; choose one of: {', '.join(SPLIT_MODES)}")
    return mode


def llama_kwargs(llama_cpp: Any, extra: dict[str, Any], gpus: int, gpu_build: bool) -> dict[str, Any]:
    """Llama(...) arguments for the split ModelSpec.extra asks for ({} when it asks for none). A split that names
    more GPUs than are visible, or a build without GPU offload, is an error here rather than a silent CPU run."""
    split = extra.get("tensor_split")
    mode = extra.get("split_mode")
    if split is None and mode is None:
        return {}
    asked = f"--tensor-split {format_tensor_split(split)}" if split else f"--split-mode {mode}"
    if not gpu_build:
        raise UsageError(f"{asked}: this llama-cpp-python build cannot offload to a GPU; rebuild it with "
                         'CMAKE_ARGS="-DGGML_CUDA=on" (or ./install.sh on the GPU machine)')
    if split and len(split) > gpus:
        raise UsageError(f"--tensor-split gives {len(split)} proportions but {gpus} GPU(s) are visible here; give "
                         "one per GPU (CUDA_VISIBLE_DEVICES picks which)")
    out: dict[str, Any] = {"split_mode": getattr(llama_cpp, SPLIT_MODES[check_split_mode(mode or "layer")])}
    if split:
        out["tensor_split"] = list(split)
    return out


def device_map(n_layer: int, n_gpu_layers: int, gpus: int, tensor_split: tuple[float, ...] | None,
               split_mode: str | None) -> dict[str, Any] | None:
    """Where the model sits when it spans several GPUs; None on one device. `layers` counts the n_layer
    repeating layers plus the output layer per device, as llama.cpp assigns them (the input embedding always stays
    on the CPU); `row` mode splits every offloaded layer by the proportions instead."""
    import numpy as np

    mode = split_mode or "layer"
    if gpus < 2 or n_gpu_layers == 0 or mode == "none":
        return None
    slots = n_layer + 1
    on_gpu = slots if n_gpu_layers < 0 else min(n_gpu_layers, slots)
    out: dict[str, Any] = {"split_mode": mode, "gpus": gpus, "layers_on_gpu": on_gpu}
    if not tensor_split:
        out["split"] = SPLIT_BY_FREE_MEMORY
        return out
    shares = (list(tensor_split) + [0.0] * gpus)[:gpus]
    total = float(sum(shares))
    out["split"] = {f"cuda:{i}": round(s / total, 4) for i, s in enumerate(shares)}
    if mode == "row":
        return out
    # llama.cpp: cumulative shares normalized in float32; slot il >= start goes to the first GPU whose cumulative
    # share is above (il - start) / on_gpu (std::upper_bound)
    cumulative = (np.cumsum(np.asarray(shares, dtype=np.float32), dtype=np.float32) / np.float32(total)).tolist()
    start = slots - on_gpu
    layers: dict[str, int] = {}
    for il in range(slots):
        where = "cpu" if il < start else \
            f"cuda:{bisect_right(cumulative, float(np.float32(il - start) / np.float32(on_gpu)))}"
        layers[where] = layers.get(where, 0) + 1
    out["layers"] = layers
    return out
