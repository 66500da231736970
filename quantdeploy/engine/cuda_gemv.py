"""quantdeploy's batch-1 W4A16 GEMV in CUDA C (kernels/w4a16.cu), compiled at run time with NVRTC.

NVRTC ships with torch's CUDA wheels (libnvrtc): no nvcc, no C++ extension build, a fraction of a second per
kernel. Launches go through the driver (cuLaunchKernel) on torch's current stream, so CUDA-graph capture records
them. The weights are repacked once at load into the "NK" layout the kernel streams with 16-byte loads
(nk_layout.py); prompts dequantize one weight at a time into a scratch fp16 matrix and run one cuBLAS matmul.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from . import cuda_driver, marlin, marlin_gemv, pdl, tuning
from .nk_layout import MetaForm, NKWeight, repack

log = logging.getLogger("quantdeploy.engine")

SOURCE = Path(__file__).with_name("kernels") / "w4a16.cu"
# (rows R, chunks loaded ahead per lane U, S): S = 1, one warp per R rows over all of K (qd_w4a16_gemv); S > 1, a
# block's S warps share R rows, an S-th of K each (qd_w4a16_gemv_sk); S = -B, persistent: B blocks per SM, each
# warp streams row group after row group with the next batch of weights in flight (qd_w4a16_gemv_ps).
# Tuned per GPU in the decode graph by benchmarks/gpu/graph_ab.py --sweep --save.
VARIANTS = ((1, 4, 1), (1, 8, 1), (2, 2, 1), (2, 4, 1), (4, 1, 1), (4, 2, 1), (4, 4, 1), (8, 1, 1), (8, 2, 1),
            (2, 1, 4), (4, 1, 4), (4, 2, 4), (8, 1, 4), (8, 2, 4), (16, 1, 4),
            (4, 1, 2), (8, 1, 2), (8, 1, 7), (4, 1, 8), (8, 1, 8), (4, 1, 14),
            (2, 2, -2), (4, 1, -2), (4, 2, -2), (8, 1, -2), (4, 1, -4), (8, 1, -4))
THREADS = 128  # threads per block, but for qd_w4a16_gemv_sk (32 S)


# --- compilation and launch ---------------------------------------------------------------------------------
def _include_dirs() -> list[str]:
    import nvidia

    dirs = []
    for base in getattr(nvidia, "__path__", []):
        dirs += [str(p) for p in Path(base).glob("*/include") if (p / "cuda_fp16.h").is_file()]
    return dirs


def compile_cubin(name: str, arch: str, source: Path = SOURCE) -> tuple[bytes, str]:
    """(cubin, mangled name) of one kernel of `source` (a file under kernels/, which may include its neighbours),
    e.g. name="qd_w4a16_gemv<4, 2, 0>", arch="90"."""
    try:
        inc = _include_dirs()
    except ImportError:
        inc = []
    return cuda_driver.compile_cubin(source.read_text(), name, arch, [str(source.parent)] + inc, ["-std=c++17"])


@functools.lru_cache(maxsize=None)
def _kernel(name: str, device_index: int, source: Path = SOURCE):
    major, minor = torch.cuda.get_device_capability(device_index)
    with torch.cuda.device(device_index):
        cubin, mangled = compile_cubin(name, f"{major}{minor}", source)
        return cuda_driver.load_function(cubin, mangled)


def resources(name: str, device_index: int = 0, source: Path = SOURCE) -> dict[str, int]:
    """A loaded kernel's registers per thread and local memory per thread (bytes spilled from registers)."""
    func = _kernel(name, device_index, source)
    lib, out = cuda_driver.driver(), {}
    for key, attr in (("registers", 4), ("local_bytes", 3)):  # CU_FUNC_ATTRIBUTE_NUM_REGS, _LOCAL_SIZE_BYTES
        v = ctypes.c_int()
        lib.cuFuncGetAttribute(ctypes.byref(v), attr, func)
        out[key] = v.value
    return out


class _Launch:
    """One kernel with its argument block kept alive: per call only the pointers change (a few microseconds of
    Python, not the ~30 of building ctypes arguments each time). pdl: launch with programmatic dependent launch
    (cuLaunchKernelEx), so the kernel overlaps the one before it (see pdl.py)."""

    def __init__(self, name: str, device: torch.device, n_ptr: int, ints: tuple[int, ...], pdl: bool = False,
                 threads: int = THREADS, source: Path = SOURCE):
        self.lib = cuda_driver.driver()
        self.func = _kernel(name, device.index or 0, source)
        self.ptrs = [ctypes.c_void_p() for _ in range(n_ptr)]
        self.ints = [ctypes.c_int(v) for v in ints]
        self.argv = (ctypes.c_void_p * (n_ptr + len(ints)))(
            *[ctypes.cast(ctypes.byref(a), ctypes.c_void_p) for a in self.ptrs + self.ints])
        self.config = None
        self.threads = threads
        if pdl:
            self.attr = cuda_driver.LaunchAttr(id=cuda_driver.PROGRAMMATIC_STREAM_SERIALIZATION)
            self.attr.value[0] = 1
            self.config = cuda_driver.LaunchConfig(block=(ctypes.c_uint * 3)(threads, 1, 1), num_attrs=1,
                                                   attrs=ctypes.pointer(self.attr))
            self.config.grid[1] = self.config.grid[2] = 1

    def set_int(self, i: int, value: int) -> None:
        """The i-th integer argument from now on (e.g. the batched kernel's token count)."""
        self.ints[i].value = value

    def __call__(self, grid: int, *tensors: torch.Tensor) -> None:
        for p, t in zip(self.ptrs, tensors):
            p.value = t.data_ptr()
        stream = torch.cuda.current_stream(tensors[0].device).cuda_stream
        if self.config is not None:
            self.config.grid[0] = grid
            self.config.stream = stream
            err = self.lib.cuLaunchKernelEx(ctypes.byref(self.config), self.func, self.argv, None)
        else:
            err = self.lib.cuLaunchKernel(self.func, grid, 1, 1, self.threads, 1, 1, 0, ctypes.c_void_p(stream),
                                          self.argv, None)
        if err:
            raise RuntimeError(f"cuLaunchKernel{'Ex' if self.config is not None else ''} failed with CUDA error {err}")


def available(device) -> tuple[bool, str]:
    """Whether the kernels compile and load on this device (NVRTC present, compute capability 7.0+)."""
    try:
        device = torch.device(device)
        if device.type != "cuda":
            return False, "not a CUDA device"
        if torch.cuda.get_device_capability(device) < (7, 0):
            return False, "needs compute capability 7.0+"
        ok, why = cuda_driver.check()
        if not ok:
            return False, why
        for name in ("qd_w4a16_gemv<2, 4, 0>", "qd_w4a16_gemv_sk<8, 1, 0>", dequant_name(MetaForm.WORDS)):
            _kernel(name, device.index or 0)
        return True, ""
    except Exception as e:  # no NVRTC, a driver too old for the cubin, ...
        return False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def default_variant(k: int, n: int) -> tuple[int, int, int]:
    """Without a tuned file: the best on an H200 in the 8B decode graph (benchmarks/results/gpu/graph-ab-h200.txt):
    4 rows per warp for a wide gate|up; 8 rows split over 4 warps for a long K (down) and a square o_proj; the
    persistent kernel, 4 blocks per SM, for a qkv wider than it is long (a tie with (2, 2, 1) there)."""
    if n >= 16384:
        return (4, 1, 1)
    return (4, 1, -4) if n > k and k < 8192 else (8, 1, 4)


def tuned_key(k: int, n: int, z: int) -> str:
    """A tuned file's key: the shape and the meta form (NKWeight.z) the variant was swept on. A variant swept on GPTQ's
    blocked scales is not the best for AWQ's zero point bytes (2026-12-02: AWQ 528-531 tok/s with GPTQ's variants,
    542-543 with the defaults; ab-awq-tuned-h200.txt), so each form reads only its own keys."""
    return f"{k}x{n}:{int(z)}"


def mma_tuned_key(k: int, n: int, form: MetaForm, tiles: int) -> str:
    """A tuned file's key for the batched kernel's (warps, rows) at a tile count (benchmarks/gpu/gemm_ab.py --save):
    the shape, the meta form (its name: a scales-only weight's zero point does not change the kernel's loads) and
    the tile count."""
    return f"mma:{k}x{n}:{MetaForm(form).name.lower()}:{tiles}"


def variant_for(k: int, n: int, z: int, tuned: dict) -> tuple[int, int, int]:
    """The variant for a weight: a tuned file's (its choices, `tuned`) for this shape and form, else the default."""
    v = tuned.get(tuned_key(k, n, z))
    return fit_variant(tuple(v) if v else default_variant(k, n), k, n)


def fit_variant(v, k: int, n: int) -> tuple[int, int, int]:
    """v made legal for this shape: split K over S warps only when K / 32 divides by S (else by 4), persistent
    only when K / 32 divides by 32 U; rows per warp divide N."""
    r, u, s = (tuple(v) + (1,))[:3]
    if s > 1 and (k // 32) % s:
        s = 4
    if (s > 1 and (k // 32) % s) or (s < 0 and (k // 32) % (32 * u)):
        r, u, s = 2, 4, 1
    while n % r:
        r //= 2
    return r, u, s


def kernel_name(r: int, u: int, s: int, act: int = 0, z: int = MetaForm.WORDS) -> str:
    """The kernel's template instance; the meta form's template argument (NKWeight.z), unless WORDS (the template's
    default), is its last argument."""
    z = f", {int(z)}" if z != MetaForm.WORDS else ""
    if s > 1 and (s != 4 or z):
        return f"qd_w4a16_gemv_sk<{r}, {u}, {act}, {s}{z}>"
    kind = "_sk" if s > 1 else "_ps" if s < 0 else ""
    return f"qd_w4a16_gemv{kind}<{r}, {u}, {act}{z}>"


def mma_name(tiles: int, warps: int, z: int = MetaForm.WORDS, rows: int = 1, stages: int = 0) -> str:
    """The batched kernel for up to 8 `tiles` tokens, K split over `warps` warps per block of `rows` tiles of 16
    rows; stages > 0: the weights through a ring of that many steps in shared memory."""
    if stages:
        return f"qd_w4a16_mma<{tiles}, {warps}, {int(z)}, {rows}, {stages}>"
    return f"qd_w4a16_mma<{tiles}, {warps}, {int(z)}{f', {rows}' if rows != 1 else ''}>"


MMA_STATIC_SMEM = 48 * 1024  # static shared memory a block may declare


def mma_smem(tiles: int, warps: int, rows: int, stages: int) -> int:
    """The batched kernel's shared memory per block: its warps' partial sums and, with stages, the weight ring."""
    return rows * tiles * 32 * 16 + (warps * stages * 2 * rows * 32 * 16 if stages else 0)


def fit_mma_stages(tiles: int, warps: int, rows: int, stages: int) -> int:
    """stages made legal: 0 (registers) where the ring would not fit a block's static shared memory."""
    return stages if stages and mma_smem(tiles, warps, rows, stages) <= MMA_STATIC_SMEM else 0


def mma_tiles(m: int) -> int:
    """Tiles of 8 tokens for m tokens, a power of two (one kernel per batch bucket)."""
    return 1 << max(0, (m - 1) // 8).bit_length()


def mma_warps(k: int) -> int:
    """Warps that split K per 16 rows: 8, fewer when K has under 16 steps of 128 (on an H100, 8 was the best or within
    a few percent of it for every 8B shape up to 64 tokens; benchmarks/gpu/gemm_ab.py)."""
    steps = -(-k // 128)
    return max(1, min(8, 1 << (max(1, steps // 2).bit_length() - 1)))


def mma_default(tiles: int, k: int, n: int) -> tuple[int, int, int]:
    """(warps splitting K, tiles of 16 rows per block, ring stages) for up to 8 `tiles` tokens, without a tuned file:
    the fastest or within a few percent of it for every 8B shape and both meta forms on an H100
    (benchmarks/results/gpu/h100-80gb-hbm3-gemm-ab.json). Up to 8 tokens one tile, K over 8 warps. From 16 tokens
    on, x loaded once feeds 2 or 4 tiles: 4 for a weight wider than it is long (at 32-64 tokens), with K over fewer
    warps for a wide gate|up (4 times wider than long: 2 warps, so that the blocks still fill the GPU). At 64 tokens
    the weights of a gate|up and of a weight longer than wide (down) go through a 2-step ring in shared memory, a
    gate|up with K over 4 warps (H100, scales only / zero points: gate|up 89.9 / 98.2 against 98.3 / 109.2 µs, down
    48.6 / 49.4 against 51.0 / 52.6; a square o was not faster: h100-80gb-hbm3-gemm-ab-ring.json)."""
    warps = mma_warps(k)
    if tiles <= 1:
        return warps, 1, 0
    wide = n >= 4 * k
    if tiles == 2:
        return ((min(warps, 4), 2) if wide else (warps, 1)) + (0,)
    if wide:
        return (min(warps, 4), 4, 2) if tiles == 8 else (min(warps, 2), 4, 0)
    if tiles == 4:
        return warps, 4 if n > k else 2, 0
    if n > k:
        return min(warps, 4), 2, 0
    return warps, 2, 2 if k > n else 0


def fit_mma_rows(rows: int, n: int) -> int:
    """rows made legal for N rows: halved until 16 rows times it divides N."""
    while rows > 1 and n % (16 * rows):
        rows //= 2
    return rows


def mma_max_tokens(form: MetaForm) -> int:
    """Up to how many tokens the batched kernel runs (one launch) before the Triton GEMM takes over: 64, where with
    2-4 tiles per block it beat the GEMM on every 8B shape in both meta forms (H100, gemm_ab.py; at 128 tokens the
    GEMM wins for scales-only weights)."""
    return MMA_TOKENS


def dequant_name(z: int = MetaForm.WORDS) -> str:
    return f"qd_w4a16_dequant<{int(z)}>"


def grid(n: int, r: int, s: int, sms: int) -> int:
    """Blocks (of THREADS, or 32 s for split K) for N rows in variant (r, ., s) on a GPU with `sms` multiprocessors."""
    if s > 1:
        return n // r
    warps = n // r
    blocks = (warps * 32 + THREADS - 1) // THREADS
    return min(blocks, sms * -s) if s < 0 else blocks


ACTS = {"silu": 1, "gelu_tanh": 2}
# Up to mma_max_tokens() tokens (the decode rows of a batch, short prompt chunks) a product runs as the tensor-core
# kernel qd_w4a16_mma on the packed weights, MMA_TOKENS per launch (compute capability 8.0+, N a multiple of 16); else
# up to GEMM_MAX_TOKENS as the Triton W4A16 GEMM (triton_gemm); longer prompts dequantize the weight once and run one
# cuBLAS matmul. A weight with a Marlin copy (engine/marlin.py) runs 2..GEMM_MAX_TOKENS tokens on Marlin instead.
MMA_TOKENS = 64
GEMM_MAX_TOKENS = 256


@functools.lru_cache(maxsize=8)
def _sms(device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


class CudaLinear:
    """y = x @ W for one NKWeight on CUDA: the GEMV for one token, dequantize + cuBLAS for prompts. A weight with
    interleaved gate|up rows (split) and an act: one token gets act(gate) * up [1, N/2] in the same kernel; prompts
    get the plain [M, N] projection (the caller applies the activation)."""

    def __init__(self, w: NKWeight, device, variant: tuple[int, ...] | None = None, act: str | None = None,
                 pdl_launch: bool | None = None, mma_tuned: dict[int, tuple[int, ...]] | None = None):
        """variant: None for the default; pdl_launch: None where the GPU has PDL (False: kernels timed alone);
        mma_tuned: the batched kernel's (warps, rows[, stages]) per tile count, from a tuned file (else the
        defaults)."""
        self.w = w
        self.mma_tuned = dict(mma_tuned or {})
        self.device = torch.device(device)
        self.act = act if w.split else None
        self.pdl = pdl.enabled(self.device) if pdl_launch is None else pdl_launch
        self.deq = _Launch(dequant_name(w.z), self.device, 3, (w.n, w.k, w.k // w.group_size, w.split))
        self.use(variant or variant_for(w.k, w.n, w.z, {}))
        self.mma_ok = w.n % 16 == 0 and torch.cuda.get_device_capability(self.device) >= (8, 0)
        self.mma_max = mma_max_tokens(w.form) if self.mma_ok else 0
        self.mma_launch: dict[tuple[int, int], _Launch] = {}
        self.marlin = None  # a MarlinLinear for 2..GEMM_MAX_TOKENS tokens (engine/marlin.py), made by CudaLinears

    def use(self, variant: tuple[int, ...]) -> None:
        """Launch the GEMV as `variant` (made legal for this weight) from now on."""
        w = self.w
        r, u, s = fit_variant(variant, w.k, w.n)
        if self.act and r % 2:
            r = 2
        gshift = (w.group_size // 32).bit_length() - 1
        name = kernel_name(r, u, s, ACTS[self.act] if self.act else 0, w.z)
        self.gemv = _Launch(name, self.device, 4, (w.n, w.k, w.k // w.group_size, gshift),
                            pdl=self.pdl, threads=32 * s if s > 1 else THREADS)
        sms = torch.cuda.get_device_properties(self.device).multi_processor_count if s < 0 else 0
        self.rows, self.split_k, self.variant, self.label = r, s, (r, u, s), name
        self.blocks = grid(w.n, r, s, sms)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w
        if w.perm is not None:
            x = x.index_select(-1, w.perm)
        if x.shape[0] == 1:
            x1 = x.reshape(-1)
            if x1.data_ptr() % 16:
                x1 = x1.clone()
            y = torch.empty(w.n // 2 if self.act else w.n, dtype=torch.float16, device=x.device)
            self.gemv(self.blocks, w.q, w.meta, x1, y)
            return y.unsqueeze(0)
        if self.marlin is not None and marlin.FROM_TOKENS <= x.shape[0] <= GEMM_MAX_TOKENS:
            return self.marlin(x)
        if x.shape[0] <= self.mma_max:
            return self.mma(x)
        if x.shape[0] <= GEMM_MAX_TOKENS:  # a batch of decode rows: the tensor-core GEMM on these same weights
            from .triton_gemm import gemm

            return gemm(x.half(), w, _sms(self.device))
        return F.linear(x, self.dense())

    def mma(self, x: torch.Tensor, warps: int | None = None, rows: int | None = None,
            stages: int | None = None) -> torch.Tensor:
        """x [M, K] (columns in the weight's order) @ W -> [M, N] fp16 in the original column order (a gate|up
        weight de-interleaved; the caller applies the activation). warps: K split over that many (default
        mma_choice); rows: tiles of 16 rows per block (default mma_choice); stages: the weights' ring in shared
        memory (0: none; dropped where it does not fit; default mma_choice's where warps and rows are the default's,
        else none)."""
        w = self.w
        m = x.shape[0]
        x = x.half().contiguous()
        if x.data_ptr() % 16:
            x = x.clone()
        y = torch.empty(m, w.n, dtype=torch.float16, device=x.device)
        for i in range(0, m, MMA_TOKENS):  # one launch per 64 tokens (the weights are read once per launch)
            part = min(MMA_TOKENS, m - i)
            tw, tr, tp = self.mma_choice(part)
            r = fit_mma_rows(rows or tr, w.n)
            s = warps or tw
            if stages is not None:
                p = fit_mma_stages(mma_tiles(part), s, r, stages)
            else:  # the choice's ring goes with the choice's warps and rows
                p = tp if (s, r) == (tw, tr) else 0
            self._mma_launch(part, s, r, p)(w.n // (16 * r), w.q, w.meta, x[i:i + part], y[i:i + part])
        return y

    def mma_choice(self, m: int) -> tuple[int, int, int]:
        """(warps, rows, stages) of the batched kernel for m tokens: the tuned file's for this tile count (stages 0
        where it names none), else the defaults (mma_default)."""
        w = self.w
        tiles = mma_tiles(m)
        tuned = self.mma_tuned.get(tiles)
        warps, rows, stages = (tuple(tuned) + (0,))[:3] if tuned else mma_default(tiles, w.k, w.n)
        warps, rows = max(1, min(8, int(warps))), fit_mma_rows(int(rows), w.n)
        return warps, rows, fit_mma_stages(tiles, warps, rows, int(stages))

    def _mma_launch(self, m: int, warps: int, rows: int = 1, stages: int = 0) -> _Launch:
        """The batched kernel's launch for m <= MMA_TOKENS tokens: one per (tile count, warps, rows, stages), its
        token count set to m (stages that fit the block's shared memory: fit_mma_stages)."""
        w = self.w
        key = (mma_tiles(m), warps, rows, stages)
        launch = self.mma_launch.get(key)
        if launch is None:
            gshift = (w.group_size // 32).bit_length() - 1
            launch = _Launch(mma_name(key[0], warps, w.z, rows, stages), self.device, 4,
                             (m, w.n, w.k, w.k // w.group_size, gshift, w.split), pdl=self.pdl, threads=32 * warps)
            self.mma_launch[key] = launch
        launch.set_int(0, m)
        return launch

    def dense(self) -> torch.Tensor:
        """The fp16 weight [N, K], rows in the original order."""
        w = self.w
        out = torch.empty(w.n, w.k, dtype=torch.float16, device=self.device)
        words = w.n * w.k // 8
        self.deq((words + THREADS - 1) // THREADS, w.q, w.meta, out)
        return out


class CudaLinears:
    """The engine's maker: one linear per fused weight (make), then finish(). tuned_dir: where the
    per-GPU tuned variants are (EngineConfig.tuned_dir; None: the defaults)."""

    kernel = "qd-w4a16-gemv"  # the name kernel reports show
    fuses_act = True  # make(w, act=...) takes the MLP activation into the gate|up GEMV

    def __init__(self, device, tuned_dir: Path | None = None, use_marlin: bool = False, marlin_note: str = "",
                 one_copy: bool = False):
        """use_marlin: also a Marlin copy of each weight it wins on (engine/marlin.py: choose); marlin_note: why not,
        for the kernel report; one_copy: Marlin's copy replaces ours where the Marlin-layout GEMV takes the weight
        (engine/marlin_gemv.py)."""
        self.device = torch.device(device)
        self.use_marlin, self.marlin_note, self.marlin_bytes, self.marlin_names = use_marlin, marlin_note, 0, set()
        self.one_copy, self.one_copy_names = one_copy, set()
        self.labels = set()
        self.tuned_file = tuning.tuned_file(tuned_dir, self.device, "cuda")
        self.tuned = tuning.read(self.tuned_file)
        self.tuned_shapes: set[str] = set()  # the tuned file's keys that some weight used

    def make(self, w, act: str | None = None) -> "CudaLinear | marlin_gemv.OneCopyLinear":
        """act (a gate|up weight): the GEMV also applies act(gate) * up for one token. With one_copy, a weight that
        gets a Marlin copy gets a OneCopyLinear on it and no NK copy."""
        act = act if act in ACTS and w.n % 2 == 0 else None
        name = marlin.product(w.k, w.n) if self.use_marlin else None
        why = marlin.fits(w) if name else None
        if name and why is None and self.one_copy and marlin_gemv.fits(w) is None:
            one = marlin_gemv.OneCopyLinear(marlin.MarlinLinear(w, self.device), w.group_size, self.device, act)
            self.marlin_bytes += one.nbytes()
            self.marlin_names.add(name)
            self.one_copy_names.add(name)
            self.labels.add(one.label)
            return one
        nk = repack(w, interleave=act is not None)
        key = tuned_key(nk.k, nk.n, nk.z)
        if key in self.tuned:
            self.tuned_shapes.add(key)
        keys = {t: mma_tuned_key(nk.k, nk.n, nk.form, t) for t in (1, 2, 4, 8)}
        mma = {t: tuple(self.tuned[k]) for t, k in keys.items() if k in self.tuned}
        if mma:
            self.tuned_shapes.add(f"mma {key}")
        lin = CudaLinear(nk, self.device, variant_for(nk.k, nk.n, nk.z, self.tuned), act=act, mma_tuned=mma)
        self.labels.add(lin.label)
        if name:
            if why is None:
                lin.marlin = marlin.MarlinLinear(w, self.device)
                self.marlin_bytes += lin.marlin.nbytes()
                self.marlin_names.add(name)
            else:
                self.marlin_note = f"off ({why})"
        return lin

    def batched_note(self) -> str:
        """Which products run on gptqmodel's Marlin in batches (and its copy's size), or why none: kernel reports."""
        if not self.marlin_bytes:
            return self.marlin_note or "off"
        if self.one_copy_names:
            return (f"gptqmodel Marlin for {', '.join(sorted(self.one_copy_names))} from {marlin.FROM_TOKENS} tokens, "
                    f"one token on the Marlin-layout GEMV: one copy of those weights "
                    f"({self.marlin_bytes / 2 ** 30:.2f} GiB)")
        return (f"gptqmodel Marlin for {', '.join(sorted(self.marlin_names))} from {marlin.FROM_TOKENS} to "
                f"{GEMM_MAX_TOKENS} tokens (a second copy of those weights: {self.marlin_bytes / 2 ** 30:.2f} GiB)")

    def tuning_note(self) -> str:
        """Which tuned file chose variants, for kernel reports: its path and the shapes it set, or why none did."""
        if self.tuned_file is None:
            return "off (QUANTDEPLOY_TUNED_GEMV=0): built-in variants"
        if not self.tuned_shapes:
            why = "no tuned file" if not self.tuned else "no shape of this model in it"
            return f"built-in variants ({why}: {self.tuned_file})"
        return f"{self.tuned_file} ({', '.join(sorted(self.tuned_shapes))})"

    def finish(self, max_tokens: int) -> None:
        log.info("CUDA W4A16 GEMV variants in use: %s; tuning: %s", ", ".join(sorted(self.labels)), self.tuning_note())
