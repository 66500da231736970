"""Which step makes llama.cpp's CUDA build abort (`free(): invalid pointer`) inside quantdeploy? Each variant runs
in its own process with faulthandler on; prints its exit code and the tail of its output.

    python3 benchmarks/gpu/gguf_crash.py MODEL.gguf
"""

from __future__ import annotations

import subprocess
import sys

PLAIN = """
import llama_cpp
llm = llama_cpp.Llama(model_path=P, n_gpu_layers=-1, verbose=False{extra})
toks = llm.tokenize(b"The capital of France is")
llm.eval(toks)
print("OK", llm.n_ctx())
"""

VARIANTS = {
    "plain": PLAIN.format(extra=""),
    "flash+ctx8192+threads+seed": PLAIN.format(extra=", flash_attn=True, n_ctx=8192, n_batch=512, n_threads=8, "
                                              "seed=0xFFFFFFFF"),
    "cuInit-ctypes-first": "from quantdeploy.backends.hw import cuda_device_count; print(cuda_device_count())\n"
                           + PLAIN.format(extra=""),
    "log-callback-first": "import quantdeploy.backends.gguf as g; g._llama_cpp()\n" + PLAIN.format(extra=""),
    "import-quantdeploy-cli-first": "import quantdeploy.cli\n" + PLAIN.format(extra=""),
    "torch-cuda-first": "import torch; torch.zeros(1, device='cuda')\n" + PLAIN.format(extra=""),
    "quantdeploy.load": "import quantdeploy\nm = quantdeploy.load(P, device='cuda')\n"
                        "print('OK', ''.join(m.generate('The capital of France is', "
                        "quantdeploy.GenerationParams(max_tokens=8, temperature=0))))\n",
}


def run(name: str, code: str, path: str) -> None:
    p = subprocess.run([sys.executable, "-X", "faulthandler", "-c", f"P = {path!r}\n" + code],
                       capture_output=True, text=True, timeout=300)
    tail = (p.stdout + p.stderr).strip().splitlines()[-8:]
    print(f"== {name}: rc={p.returncode}")
    for line in tail:
        print("   ", line[:200])


def main() -> None:
    path = sys.argv[1]
    for name, code in VARIANTS.items():
        run(name, code, path)
    cli = [sys.executable, "-X", "faulthandler", "-m", "quantdeploy", "bench", path, "--device", "cuda",
           "--new-tokens", "16", "--prompt-tokens", "32", "--repeat", "1", "--no-warm-load"]
    p = subprocess.run(cli, capture_output=True, text=True, timeout=300, env=dict(__import__("os").environ,
                                                                                   QUANTDEPLOY_DEBUG="1"))
    print(f"== quantdeploy bench --device cuda: rc={p.returncode}")
    for line in (p.stdout + p.stderr).strip().splitlines()[-25:]:
        print("   ", line[:200])


if __name__ == "__main__":
    main()
