"""The doctor checks. Each reads facts only through Probes and returns a Check; a failed or warned check carries
the exact command or step that fixes it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from ..models import DEFAULT_MODEL, NOT_INSTALLED
from .probes import SMOKE_CODE, Probes

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
TORCH_INDEX_TAGS = ((11, 8), (12, 1), (12, 4), (12, 6), (12, 8), (12, 9), (13, 0))  # download.pytorch.org/whl/cuXY
NVCC_MIN = (12, 8)  # gptqmodel.utils.cpp.is_nvcc_compatible
LLAMA_CUDA_FIX = ('CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python '
                  "(or ./install.sh, which detects the GPU)")
GPTQ_EXTRA_INSTALL = "pip install 'quantdeploy[gptq]'"
LLAMA_CPU_FIX = ('CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" pip install '
                 "--force-reinstall --no-cache-dir llama-cpp-python (or ./install.sh)")


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail | skip
    summary: str
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ver(s: str | None) -> tuple[int, ...]:
    out = []
    for part in str(s or "").split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def torch_install_cmd(max_cuda: str | None) -> str:
    """pip command for the newest torch CUDA build a driver supporting `max_cuda` can run."""
    have = _ver(max_cuda)[:2]
    tags = [t for t in TORCH_INDEX_TAGS if not have or t <= have] or [TORCH_INDEX_TAGS[0]]
    major, minor = tags[-1]
    return f"pip install --force-reinstall torch --index-url https://download.pytorch.org/whl/cu{major}{minor}"


def gpus(p: Probes) -> list[dict[str, Any]]:
    """GPUs torch can use, else the ones the driver lists (capability may be None)."""
    t = p.get("torch") or {}
    if t.get("devices"):
        return t["devices"]
    drv = p.get("nvidia") or {}
    return list(drv.get("gpus") or [])


def _gpu_names(gs: list[dict[str, Any]]) -> str:
    names = sorted({g.get("name") or "GPU" for g in gs})
    return ", ".join(names) if len(gs) == 1 else f"{len(gs)} GPUs ({', '.join(names)})"


# --- checks ------------------------------------------------------------------------------------------------

def check_torch_cuda(p: Probes) -> Check:
    t, drv = p.get("torch"), p.get("nvidia")
    if t is None:  # a light install (GGUF only) has no torch: nothing is broken
        return Check("torch-cuda", SKIP, "torch is not installed: GPTQ/AWQ models need it "
                     f"({GPTQ_EXTRA_INSTALL})")
    v = t.get("version")
    if v is None:
        return Check("torch-cuda", FAIL, f"torch fails to import: {t.get('error')}", "pip install --force-reinstall torch")
    if not drv or not drv.get("gpus"):
        return Check("torch-cuda", SKIP, f"torch {v}: no NVIDIA driver or GPU here, everything runs on the CPU",
                     details={"torch": t})
    names = _gpu_names(drv["gpus"])
    d, dc = drv.get("driver"), drv.get("cuda")
    details = {"torch": t, "driver": drv}
    if not t.get("cuda"):
        return Check("torch-cuda", FAIL, f"torch {v} is a CPU-only build but {names} is present "
                     f"(driver {d}, CUDA {dc})", torch_install_cmd(dc), details)
    if not t.get("cuda_available"):
        if dc and _ver(t["cuda"])[:2] > _ver(dc)[:2]:
            return Check("torch-cuda", FAIL, f"torch {v} is built for CUDA {t['cuda']} but driver {d} supports up "
                         f"to CUDA {dc}: torch cannot use the GPU",
                         f"upgrade the NVIDIA driver to one for CUDA {t['cuda']}+, or install a torch built for the "
                         f"driver: {torch_install_cmd(dc)}", details)
        return Check("torch-cuda", FAIL, f"torch {v} (CUDA {t['cuda']}) cannot use {names}: "
                     f"{t.get('error') or 'torch.cuda.is_available() is False'}",
                     "check that `nvidia-smi` works and CUDA_VISIBLE_DEVICES does not hide the GPUs; then "
                     + torch_install_cmd(dc), details)
    return Check("torch-cuda", OK, f"torch {v} (CUDA {t['cuda']}) uses {len(t.get('devices') or [])} GPU(s) on "
                 f"driver {d} (CUDA {dc})", details=details)


def check_compute_capability(p: Probes) -> Check:
    from ..backends.kernels import KERNELS, GptqmodelKernel, Target

    gs = gpus(p)
    if not gs:
        return Check("compute-capability", SKIP, "no GPU: the GPTQ/AWQ CPU kernels are used")
    per_gpu, worst = [], None
    for g in gs:
        cap = tuple(g["capability"]) if g.get("capability") else None
        kern = {}
        for fmt, table in KERNELS.items():
            for k in table:  # gptqmodel's GPU kernels (the engine's: the engine-gemv check)
                if isinstance(k, GptqmodelKernel) and k.cuda:
                    ok, why = k.can_implement(None, Target("cuda:0", cap))
                    kern[f"{fmt}:{k.name}"] = "yes" if ok else why
        per_gpu.append({"name": g.get("name"), "capability": ".".join(map(str, cap)) if cap else None,
                        "kernels": kern})
        if cap is not None and (worst is None or cap < worst[0]):
            worst = (cap, g.get("name"))
    details = {"gpus": per_gpu}
    if worst is None:
        return Check("compute-capability", WARN, "the GPUs' compute capability is unknown (torch cannot see them)",
                     "fix the torch-cuda check first", details)
    cap, name = worst
    sm = ".".join(map(str, cap))
    runnable = sorted({k.split(":")[1] for k, v in per_gpu[0]["kernels"].items() if v == "yes"})
    if cap < (6, 0):
        return Check("compute-capability", FAIL, f"{name} is sm {sm}: no GPTQ/AWQ GPU kernel supports it (6.0+)",
                     "use GGUF on this GPU (llama.cpp supports it) or a newer GPU for GPTQ/AWQ", details)
    if cap < (8, 0):
        return Check("compute-capability", WARN, f"{name} is sm {sm}: Marlin needs 8.0+, so GPTQ/AWQ use "
                     f"{', '.join(runnable)}", "nothing to fix; for Marlin's batch-1 speed use an Ampere or newer "
                     "GPU", details)
    return Check("compute-capability", OK, f"{name} is sm {sm}: {', '.join(runnable)} can run", details=details)


def check_nvcc(p: Probes) -> Check:
    gs = gpus(p)
    if not gs:
        return Check("nvcc", SKIP, "no GPU: gptqmodel's CUDA kernels are not needed")
    n, jit = p.get("nvcc"), p.get("jit_kernels") or {}
    compiled = sorted(k for k, v in jit.items() if v)
    tc = (p.get("torch") or {}).get("cuda")
    fix = (f"install the CUDA toolkit {'.'.join(map(str, NVCC_MIN))}+ matching torch's CUDA {tc or ''} and put "
           "nvcc on PATH (or set CUDA_HOME), e.g. `conda install -c nvidia cuda-nvcc` or the distro's "
           "cuda-nvcc package")
    details = {"nvcc": n, "compiled": jit}
    done = f"already compiled: {', '.join(compiled)}" if compiled else "none compiled yet"
    if n is None:
        if any(k.startswith("marlin") for k in compiled):
            return Check("nvcc", WARN, f"nvcc not found; {done}, other kernels cannot be built", fix, details)
        return Check("nvcc", FAIL, "nvcc not found: gptqmodel compiles its CUDA kernels (Marlin, ExLlamaV2) with "
                     "nvcc on first use", fix, details)
    if n.get("version") and _ver(n["version"])[:2] < NVCC_MIN:
        return Check("nvcc", FAIL, f"nvcc {n['version']} is older than {'.'.join(map(str, NVCC_MIN))}, which "
                     "gptqmodel's JIT kernels need", fix, details)
    if tc and n.get("version") and _ver(tc)[:1] != _ver(n["version"])[:1]:
        return Check("nvcc", WARN, f"nvcc {n['version']} but torch is built for CUDA {tc}: JIT builds may fail",
                     fix, details)
    first = "" if compiled else (" (Marlin compiles at the first GPTQ/AWQ load on transformers or serving more than 8 "
                                 "sequences on the fast engine: minutes)")
    return Check("nvcc", OK, f"nvcc {n.get('version')} at {n.get('path')}; {done}{first}", details=details)


def check_engine_gemv(p: Probes) -> Check:
    if not gpus(p):
        return Check("engine-gemv", SKIP, "no GPU: the fast engine's CUDA GEMV is not needed")
    r = p.get("engine_gemv")
    if r is None:
        return Check("engine-gemv", SKIP, "torch sees no GPU (see torch-cuda)")
    if r.get("ok"):
        return Check("engine-gemv", OK, f"NVRTC compiles the fast engine's CUDA GEMV for sm {r['arch']}", details=r)
    return Check("engine-gemv", WARN, f"the fast engine's CUDA GEMV does not compile ({r.get('error')}): GPTQ/AWQ "
                 "decode falls back to the engine's Triton GEMV, about half as fast on an H200",
                 "pip install --force-reinstall torch (its CUDA wheels bring libnvrtc)", r)


def check_machete_offline(p: Probes) -> Check:
    hopper = [g for g in gpus(p) if g.get("capability") and g["capability"][0] == 9]
    if not hopper:
        return Check("machete-offline", SKIP, "no Hopper GPU: gptqmodel's AUTO backend does not pick Machete")
    s = p.get("settings")
    if p.get("cutlass_cached"):
        return Check("machete-offline", OK, "CUTLASS source is cached: Machete can build offline")
    if s.hf_offline:
        online, detail = False, "HF_HUB_OFFLINE is set"
    else:
        online, detail = p.get("reachable", "https://github.com", 3.0)
    if online:
        return Check("machete-offline", OK, "github.com is reachable: Machete can download CUTLASS on first use "
                     "(quantdeploy picks Marlin anyway)")
    if (s.engine.kernel or "").lower() == "machete":
        return Check("machete-offline", FAIL, f"QUANTDEPLOY_KERNEL=machete on an offline Hopper ({detail}): "
                     "Machete downloads CUTLASS on first use and fails with URLError",
                     "unset QUANTDEPLOY_KERNEL (quantdeploy then picks marlin), or fetch CUTLASS v4.7.1 into "
                     "gptqmodel's cache (~/.cache/gptqmodel/cutlass) on a machine that is online")
    return Check("machete-offline", WARN, f"offline Hopper ({detail}): gptqmodel's AUTO backend picks Machete, "
                 "which downloads CUTLASS on first use and fails here",
                 "quantdeploy passes marlin explicitly: do not use --kernel machete here; in your own code pass "
                 "backend='marlin' to GPTQConfig / AwqConfig")


def check_llama_offload(p: Probes) -> Check:
    from ..backends.gguf import INSTALL_HINT

    info, gs = p.get("llama_cpp"), gpus(p)
    if info is None:
        return Check("llama-offload", FAIL, "llama-cpp-python is not installed: GGUF models cannot load",
                     LLAMA_CUDA_FIX if gs else INSTALL_HINT)
    if info.get("error"):
        return Check("llama-offload", FAIL, f"llama-cpp-python fails to import: {info['error']}",
                     LLAMA_CUDA_FIX if gs else LLAMA_CPU_FIX)
    v = info.get("version")
    if gs and not info.get("gpu_offload"):
        return Check("llama-offload", FAIL, f"llama-cpp-python {v} is a CPU-only build but {_gpu_names(gs)} is "
                     "present: GGUF models run on the CPU", LLAMA_CUDA_FIX, dict(info))
    if gs:
        return Check("llama-offload", OK, f"llama-cpp-python {v} can offload GGUF layers to the GPU", details=info)
    kind = "CUDA build" if info.get("gpu_offload") else "CPU build"
    return Check("llama-offload", OK, f"llama-cpp-python {v}: {kind}, no GPU here", details=info)


def check_gguf_smoke(p: Probes) -> Check:
    if p.get("llama_cpp") is None:
        return Check("gguf-smoke", SKIP, "llama-cpp-python is not installed")
    r = p.get("gguf_smoke")
    amx = any(f.startswith("amx") for f in p.get("cpu_flags") or [])
    details = dict(r)
    if r.get("timeout"):
        return Check("gguf-smoke", FAIL, f"evaluating a quantized GGUF hung for {r.get('seconds')} s",
                     f"rebuild llama-cpp-python without native CPU flags: {LLAMA_CPU_FIX}", details)
    if r.get("signal"):
        cpu = " on a CPU with AMX (native llama.cpp builds crash there)" if amx else ""
        return Check("gguf-smoke", FAIL, f"llama.cpp crashed ({r['signal']}) evaluating a quantized GGUF{cpu}",
                     f"rebuild llama-cpp-python without native CPU flags: {LLAMA_CPU_FIX}", details)
    if r.get("returncode"):
        err = (r.get("stderr") or "").strip().splitlines()
        last = err[-1] if err else f"exit code {r['returncode']}"
        if NOT_INSTALLED in last:
            return Check("gguf-smoke", SKIP, f"{NOT_INSTALLED} ({DEFAULT_MODEL.install_command})", details=details)
        return Check("gguf-smoke", FAIL, f"evaluating a quantized GGUF failed: {last[:200]}",
                     f'see the whole error: python -c "{SMOKE_CODE}"', details)
    return Check("gguf-smoke", OK, f"evaluated the default model's {DEFAULT_MODEL.name.rpartition(':')[2]} GGUF in a "
                 f"subprocess ({r.get('seconds')} s)", details=details)


_TRACKED = ("torch", "transformers", "optimum", "gptqmodel", "huggingface-hub", "gguf", "llama-cpp-python")


def check_versions(p: Probes) -> Check:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version

    reqs, have = p.get("requirements"), p.get("versions")
    have = {canonicalize_name(k): v for k, v in have.items()}
    if not reqs:
        return Check("versions", WARN, "quantdeploy's package metadata is missing (not pip-installed?)",
                     "./install.sh (or pip install .)")
    bad, fixes, good = [], [], []
    for line in reqs:
        try:
            r = Requirement(line)
        except InvalidRequirement:
            continue
        name = canonicalize_name(r.name)
        if name not in _TRACKED:
            continue
        optional = r.marker is not None and "extra" in str(r.marker)  # an extra's: checked when installed
        v = have.get(name)
        if v is None:
            if not optional:
                bad.append(f"{r.name} is missing")
                fixes.append(f"'{r.name}{r.specifier}'")
            continue
        try:
            fits = r.specifier.contains(Version(v), prereleases=True)
        except InvalidVersion:
            fits = True
        if fits:
            good.append(f"{r.name} {v}")
        else:
            bad.append(f"{r.name} {v} (needs {r.specifier})")
            fixes.append(f"'{r.name}{r.specifier}'")
    details = {"installed": have, "required": reqs}
    if bad:
        return Check("versions", FAIL, "versions that do not work together: " + "; ".join(bad),
                     "pip install " + " ".join(dict.fromkeys(fixes)), details)
    return Check("versions", OK, ", ".join(good) + ": as quantdeploy requires", details=details)


def check_disk(p: Probes) -> Check:
    s = p.get("settings")
    r = p.get("disk_free", s.models_dir)
    if r is None:
        return Check("disk", WARN, f"cannot read free space for {s.models_dir}", "check that QUANTDEPLOY_HOME exists")
    where, free = r
    gb = free / 1e9
    fix = (f"free space on {where} or point QUANTDEPLOY_HOME at a larger disk (an 8B 4-bit model needs ~5 GB; "
           "`quantdeploy rm` deletes pulled models)")
    details = {"path": str(where), "free_bytes": free, "store": str(s.models_dir)}
    if gb < 2:
        return Check("disk", FAIL, f"only {gb:.1f} GB free at {where} (model store {s.models_dir})", fix, details)
    if gb < 10:
        return Check("disk", WARN, f"{gb:.1f} GB free at {where}: room for one or two small models", fix, details)
    return Check("disk", OK, f"{gb:.0f} GB free for the model store ({s.models_dir})", details=details)


def check_hub(p: Probes) -> Check:
    s = p.get("settings")
    if s.hf_offline:
        return Check("hub", SKIP, "HF_HUB_OFFLINE is set: pulls use only what is already in the store")
    endpoint = (s.hf_endpoint or "https://huggingface.co").rstrip("/")
    ok, detail = p.get("reachable", endpoint + "/api/models?limit=1", 3.0)
    if ok:
        return Check("hub", OK, f"{endpoint} answers ({detail})", details={"endpoint": endpoint})
    return Check("hub", WARN, f"cannot reach {endpoint} ({detail}): `quantdeploy pull` will fail; local models "
                 "still work", "check the network or proxy (HTTPS_PROXY), set HF_ENDPOINT to a reachable mirror, "
                 "or export HF_HUB_OFFLINE=1 to work offline", {"endpoint": endpoint})


def check_hf_token(p: Probes) -> Check:
    s = p.get("settings")
    src = p.get("hf_token", s)
    if src:
        return Check("hf-token", OK, f"Hugging Face token found ({src}); gated models can be pulled")
    return Check("hf-token", WARN, "no Hugging Face token: gated or private repos (e.g. meta-llama) answer 401",
                 "huggingface-cli login, or export HF_TOKEN=hf_... (public models need none)")


def check_backends(p: Probes) -> Check:
    rows = p.get("backends")
    down = [r for r in rows if not r.get("available")]
    details = {"backends": rows}
    if down:
        return Check("backends", WARN, "unavailable: " + "; ".join(f"{r['format']} ({r['backend']})" for r in down),
                     " / ".join(r["reason"] for r in down), details)
    return Check("backends", OK, ", ".join(f"{r['format']} ({r['backend']})" for r in rows) + " ready",
                 details=details)


CHECKS: dict[str, Callable[[Probes], Check]] = {
    "torch-cuda": check_torch_cuda,
    "compute-capability": check_compute_capability,
    "nvcc": check_nvcc,
    "engine-gemv": check_engine_gemv,
    "machete-offline": check_machete_offline,
    "llama-offload": check_llama_offload,
    "gguf-smoke": check_gguf_smoke,
    "versions": check_versions,
    "backends": check_backends,
    "disk": check_disk,
    "hub": check_hub,
    "hf-token": check_hf_token,
}
