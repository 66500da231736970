"""The engine's fused Triton kernels (quantdeploy/engine/triton_ops.py), run by Triton's interpreter on the CPU:
each kernel against the torch ops it replaces (fp32 and fp16, Llama and Gemma-3 variants, GQA, sliding window),
and the whole fused decode step against the torch step on the real GPTQ fixture (same greedy tokens).
Fresh processes: the interpreter must be switched on before triton is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "interp"


def _interpret(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.getcwd())
    return subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True, env=env,
                          timeout=900)


def test_fused_kernels_match_torch_ops():
    proc = _interpret("fused_ops_check.py")
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("ok"), proc.stdout[-1500:] + proc.stderr[-2000:]


def test_batched_gemm_matches_the_packed_weights():
    proc = _interpret("gemm_check.py")
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("ok"), proc.stdout[-1500:] + proc.stderr[-2000:]


@pytest.mark.slow
def test_fused_decode_gives_the_torch_path_tokens(model_paths):
    proc = _interpret("fused_engine_check.py", str(model_paths["gptq"]))
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout[-1500:] + proc.stderr[-2000:]


def test_fused_kernels_compile_for_hopper():
    """Every Triton kernel of the engine. The interpreter is lenient about types (an int32/int64 loop-carried variable passed it and failed
    on the H200): compile every kernel for sm_90 here, no GPU needed."""
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from quantdeploy.engine import triton_gemm as TG
    from quantdeploy.engine import triton_gemv as G
    from quantdeploy.engine import triton_head as L
    from quantdeploy.engine import triton_ops as T

    f16, f32, i64 = "*fp16", "*fp32", "*i64"
    cases = [
        (T._add_rmsnorm, dict(x_ptr=f16, r_ptr=f16, rw_ptr=f16, w_ptr=f16, out_ptr=f16, N="i32", eps="fp32"),
         dict(HAS_RES=True, NORM_RES=True, GEMMA=True, BLOCK=4096)),
    ] + [
        (T._rope_cache, dict(qkv_ptr=f16, pos_ptr=i64, slot_ptr=i64, cos_ptr=f16, sin_ptr=f16, qw_ptr=f16, kw_ptr=f16,
                             q_ptr=f16, kc_ptr=f16, vc_ptr=f16, H="i32", KVH="i32", max_len="i32", stride="i32",
                             eps="fp32"),
         dict(D=128, HALF=64, QK_NORM=True, GEMMA=False, PAGED=paged)) for paged in (False, True)
    ] + [
        (T._paged_attn_split, dict(q_ptr=f16, kc_ptr=f16, vc_ptr=f16, pos_ptr=i64, tab_ptr="*i32", po_ptr=f32,
                                   pm_ptr=f32, pl_ptr=f32, scale="fp32", window="i32", chunk="i32",
                                   tab_stride="i32", KVH="i32", BS="i32"),
         dict(G=4, GP=16, D=128, BLOCK=32, SPLITS=8)),
        (T._attn_split, dict(q_ptr=f16, kc_ptr=f16, vc_ptr=f16, pos_ptr=i64, po_ptr=f32, pm_ptr=f32, pl_ptr=f32,
                             scale="fp32", window="i32", max_len="i32", chunk="i32"),
         dict(G=4, GP=16, D=128, BLOCK=64, SPLITS=16)),
        (T._attn_combine, dict(po_ptr=f32, pm_ptr=f32, pl_ptr=f32, out_ptr=f16), dict(G=4, GP=16, D=128, SPLITS=16,
                                                                                      SP=16)),
        (T._act_mul, dict(gu_ptr=f16, out_ptr=f16, I="i32"), dict(GELU=True, BLOCK=1024)),
        (L._int8_gemv, dict(x_ptr=f16, q_ptr="*i8", s_ptr=f32, out_ptr=f32, N="i32", K="i32"),
         dict(BLOCK_N=L.BLOCK_N, BLOCK_K=L.BLOCK_K)),
    ] + [(TG._w4a16_gemm, dict(x_ptr=f16, q_ptr="*i32", meta_ptr=meta, y_ptr=f32, M="i32", N="i32", K="i32",
                                G="i32", ZVAL="i32", split="i32"),
          dict(FORM=form, GROUP=128, BLOCK_M=bm, BLOCK_N=64, BLOCK_K=128, SPLIT_K=2, INTERLEAVED=True))
         for form, meta in ((0, "*i16"), (-5, "*i16"), (-1, "*i32")) for bm in (16, 64)
    ] + [(G._w4a16_gemv, dict(x_ptr=f16, q_ptr="*i32", s_ptr=f16, z_ptr=f16, y_ptr=f32, N="i32", K="i32",
                     groups_per_split="i32"), dict(GROUP=128, BLOCK_N=128, ATOMIC=True, HALF=half))
         for half in (False, True)]
    for fn, types, consts in cases:
        names = list(inspect.signature(fn.fn).parameters)
        sig = {n: types.get(n, "constexpr") for n in names}
        for pdl in ((False, True) if "PDL" in names else (None,)):  # without and with the PDL instructions
            c = dict(consts, PDL=pdl) if pdl is not None else consts
            triton.compile(ASTSource(fn=fn, signature=sig, constexprs=c), target=GPUTarget("cuda", 90, 32))
