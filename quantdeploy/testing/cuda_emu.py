"""Run one of quantdeploy's CUDA kernels (engine/kernels/*.cu) on the CPU, so that tests check the kernels' own
source, not only a Python reference, on machines without a GPU (cuda_emu/cuda_fp16.h emulates the part of CUDA
they use, mma.sync and cp.async included). It checks what a kernel computes, not its speed, races or bounds.

    y = run(SOURCE, "qd_marlin_gemv<8, 1, 2, 1, 0, -2>", grid=2, threads=64,
            args=[q, s, zp, x, Out(torch.float16, 128), 128, 256])

A tensor argument is a pointer to a copy of its bytes, an Out(dtype, n) a zeroed output of n elements (run returns
the outputs, in order), an int an int. The program is compiled with g++ (C++20, -DQD_CUDA_EMU) once per kernel
instance and argument kinds and cached under ~/.cache/quantdeploy/cuda-emu.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SHIM = Path(__file__).with_name("cuda_emu")
CACHE = Path.home() / ".cache" / "quantdeploy" / "cuda-emu"
CXX = ["g++", "-std=c++20", "-O1", "-pthread", "-DQD_CUDA_EMU"]

_MAIN = """#include <cuda_fp16.h>
#include "{source}"
#include <cstdio>
#include <cstdlib>
#include <string>

struct AnyPtr {{  // converts to the kernel's pointer parameter types
    void *p;
    template <class T>
    operator T *() const {{ return static_cast<T *>(p); }}
}};

static std::vector<uint4> read(const std::string &path) {{
    FILE *f = std::fopen(path.c_str(), "rb");
    std::fseek(f, 0, SEEK_END);
    const long n = std::ftell(f);
    std::fseek(f, 0, SEEK_SET);
    std::vector<uint4> v((n + 15) / 16);
    if (n && std::fread(v.data(), 1, n, f) != (size_t)n) std::exit(3);
    std::fclose(f);
    return v;
}}

int main(int argc, char **argv) {{
    const std::string dir = argv[1];
    const unsigned grid = std::atoi(argv[2]), threads = std::atoi(argv[3]);
    std::vector<std::vector<uint4>> bufs;
    for (int i = 0; i < {n_ptr}; ++i) bufs.push_back(read(dir + "/" + std::to_string(i) + ".bin"));
    qd_emu::launch(grid, threads, [&] {{ {kernel}({call}); }});
    for (int i = 0; i < {n_ptr}; ++i) {{
        FILE *f = std::fopen((dir + "/" + std::to_string(i) + ".out").c_str(), "wb");
        std::fwrite(bufs[i].data(), 16, bufs[i].size(), f);
        std::fclose(f);
    }}
    return 0;
}}
"""


@dataclass
class Out:
    dtype: torch.dtype
    n: int


@functools.lru_cache(maxsize=1)
def available() -> tuple[bool, str]:
    """(whether kernels can run here, why not): a g++ with C++20's std::barrier and _Float16."""
    if shutil.which("g++") is None:
        return False, "no g++ on this machine"
    with tempfile.TemporaryDirectory() as d:
        probe = Path(d) / "probe.cpp"
        probe.write_text("#include <cuda_fp16.h>\nint main() { half h = (half)1.5f; return (int)(float)h - 1; }\n")
        r = subprocess.run(CXX + [f"-I{SHIM}", str(probe), "-o", str(Path(d) / "probe")], capture_output=True,
                           text=True)
        if r.returncode:
            return False, f"g++ cannot build the emulation (C++20 and _Float16 needed): {r.stderr.splitlines()[:1]}"
    return True, ""


def _program(source: Path, kernel: str, kinds: str) -> Path:
    """The compiled program for one kernel instance; kinds: "p" (pointer) or "i" (int) per argument."""
    n_ptr = kinds.count("p")
    call, p, i = [], 0, 4
    for kind in kinds:
        if kind == "p":
            call.append(f"AnyPtr{{bufs[{p}].data()}}")
            p += 1
        else:
            call.append(f"std::atoi(argv[{i}])")
            i += 1
    text = _MAIN.format(source=source.name, n_ptr=n_ptr, kernel=kernel, call=", ".join(call))
    deps = "".join(f.read_text() for f in sorted(source.parent.glob("*.cu*"))) + (SHIM / "cuda_fp16.h").read_text()
    key = hashlib.sha256((text + deps + " ".join(CXX)).encode()).hexdigest()[:16]
    exe = CACHE / f"{key}.bin"
    if not exe.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        src = CACHE / f"{key}.cpp"
        src.write_text(text)
        tmp = exe.with_suffix(f".{os.getpid()}.tmp")
        r = subprocess.run(CXX + [f"-I{SHIM}", f"-I{source.parent}", str(src), "-o", str(tmp)], capture_output=True,
                           text=True)
        if r.returncode:
            raise RuntimeError(f"g++ failed on {kernel}:\n{r.stderr[-4000:]}")
        tmp.replace(exe)
    return exe


def run(source: Path, kernel: str, grid: int, threads: int, args: list) -> list[torch.Tensor]:
    """Launch `kernel` (a template instance of `source`) on `grid` blocks of `threads`; the Out arguments back."""
    kinds = "".join("i" if isinstance(a, int) else "p" for a in args)
    exe = _program(source, kernel, kinds)
    with tempfile.TemporaryDirectory() as d:
        ptrs = [a for a in args if not isinstance(a, int)]
        for i, a in enumerate(ptrs):
            data = np.zeros(a.n, dtype=torch.empty(0, dtype=a.dtype).numpy().dtype) if isinstance(a, Out) \
                else a.detach().cpu().contiguous().numpy()
            data.tofile(Path(d) / f"{i}.bin")
        ints = [str(a) for a in args if isinstance(a, int)]
        r = subprocess.run([str(exe), d, str(grid), str(threads), *ints], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"{kernel} failed on the CPU emulation (exit {r.returncode}): {r.stderr[-2000:]}")
        outs = []
        for i, a in enumerate(ptrs):
            if isinstance(a, Out):
                raw = np.fromfile(Path(d) / f"{i}.out", dtype=torch.empty(0, dtype=a.dtype).numpy().dtype)
                outs.append(torch.from_numpy(raw[: a.n].copy()))
        return outs
