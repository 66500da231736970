"""GGUF over several GPUs of one host (--tensor-split / --split-mode): the argument plumbing into llama.cpp and the
device map bench reports, checked on the CPU. The split itself needs GPUs (a CUDA llama.cpp build); on this
machine the options are refused with one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantdeploy.backends.base import ModelSpec
from quantdeploy.backends.gguf_split import device_map, llama_kwargs, parse_tensor_split
from quantdeploy.bench.concurrency import serve_args
from quantdeploy.bench.report import device_text
from quantdeploy.errors import UsageError

from conftest import assert_clean_error, run_cli


# llama.cpp's rule (load_tensors): n_layer repeating layers plus the output layer are the slots; slot il goes to
# the first GPU whose cumulative share exceeds il / slots
@pytest.mark.parametrize("n_layer, gpu_layers, gpus, split, mode, layers", [
    (18, -1, 2, (1, 1), None, {"cuda:0": 10, "cuda:1": 9}),
    (18, -1, 2, (3, 1), "layer", {"cuda:0": 15, "cuda:1": 4}),
    (32, -1, 4, (1, 1, 1, 1), None, {"cuda:0": 9, "cuda:1": 8, "cuda:2": 8, "cuda:3": 8}),
    (32, -1, 3, (1, 0, 1), None, {"cuda:0": 17, "cuda:2": 16}),  # a 0 leaves a GPU out
    (18, 10, 2, (1, 1), None, {"cpu": 9, "cuda:0": 5, "cuda:1": 5}),  # the first layers stay on the CPU
])
def test_device_map_places_layers_as_llama_cpp_does(n_layer, gpu_layers, gpus, split, mode, layers):
    m = device_map(n_layer, gpu_layers, gpus, split, mode)
    assert m["layers"] == layers and sum(layers.values()) == n_layer + 1


def test_device_map_other_splits():
    assert device_map(18, -1, 1, None, None) is None  # one GPU: nothing to map
    assert device_map(18, 0, 2, (1, 1), None) is None  # nothing offloaded
    assert device_map(18, -1, 2, (1, 1), "none") is None  # llama.cpp keeps it on one GPU
    row = device_map(18, -1, 2, (3, 1), "row")
    assert row["split"] == {"cuda:0": 0.75, "cuda:1": 0.25} and "layers" not in row
    assert device_map(18, -1, 2, None, None)["split"] == "each GPU's free memory"


@pytest.mark.parametrize("text", ["1", "1,x", "1,-1", "0,0", ""])
def test_bad_tensor_splits(text):
    with pytest.raises(UsageError, match="--tensor-split takes a proportion per GPU"):
        parse_tensor_split(text)


def test_llama_arguments():
    llama_cpp = pytest.importorskip("llama_cpp")
    assert llama_kwargs(llama_cpp, {}, 2, True) == {}
    assert llama_kwargs(llama_cpp, {"tensor_split": (3.0, 1.0)}, 2, True) == \
        {"split_mode": llama_cpp.LLAMA_SPLIT_MODE_LAYER, "tensor_split": [3.0, 1.0]}
    assert llama_kwargs(llama_cpp, {"split_mode": "row"}, 2, True) == {"split_mode": llama_cpp.LLAMA_SPLIT_MODE_ROW}
    with pytest.raises(UsageError, match="3 proportions but 2 GPU"):
        llama_kwargs(llama_cpp, {"tensor_split": (1.0, 1.0, 1.0)}, 2, True)
    with pytest.raises(UsageError, match="cannot offload to a GPU"):
        llama_kwargs(llama_cpp, {"tensor_split": (1.0, 1.0)}, 2, False)


def test_the_cli_checks_the_split_in_one_line(gguf_path, gptq_path):
    assert_clean_error(run_cli("chat", str(gguf_path), "--tensor-split", "1,x", "--prompt", "hi"),
                       "--tensor-split takes a proportion per GPU")
    assert_clean_error(run_cli("chat", str(gguf_path), "--split-mode", "diagonal", "--prompt", "hi"),
                       "unknown split mode 'diagonal'; choose one of: layer, row, none")
    assert_clean_error(run_cli("bench", str(gptq_path), "--tensor-split", "1,1"), "applies to GGUF models")
    # this machine's llama.cpp cannot split over GPUs: refused, not silently run on the CPU
    assert_clean_error(run_cli("chat", str(gguf_path), "--tensor-split", "1,1", "--prompt", "hi"),
                       "cannot offload to a GPU")


def test_bench_shows_the_device_map():
    m = device_map(18, -1, 2, (3, 1), None)
    assert device_text({"device": "cuda:0", "device_map": m}) == "cuda:0 15 + cuda:1 4 layers"
    assert device_text({"device": "cpu", "device_map": None}) == "cpu"
    spec = ModelSpec(path=Path("m.gguf"), format="gguf", extra={"tensor_split": (3.0, 1.0), "split_mode": "row"})
    args = serve_args(spec, 4, 8)  # bench --concurrency serves the model split the same way
    assert args[args.index("--tensor-split") + 1] == "3,1" and args[args.index("--split-mode") + 1] == "row"
