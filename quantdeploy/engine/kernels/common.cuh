// Helpers the W4A16 kernels share (w4a16.cu, marlin_gemv.cu); NVRTC finds this file through the include path the
// engine passes (cuda_gemv.compile_cubin).
#pragma once
#include <cuda_fp16.h>

__device__ __forceinline__ unsigned and_or(unsigned a, unsigned b, unsigned c) {
#ifdef QD_CUDA_EMU  // the CPU emulation the tests run kernels on (quantdeploy/testing/cuda_emu.py)
    return (a & b) | c;
#else
    unsigned d;
    asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(d) : "r"(a), "r"(b), "r"(c));  // (a & b) | c
    return d;
#endif
}

// Programmatic dependent launch (sm_90+; no-ops when the kernel was launched without it): the GEMV lets the next
// kernel launch early, and streams its first weights before it waits for the previous kernel's output (x).
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ half2 as_h2(unsigned u) { return *reinterpret_cast<half2 *>(&u); }
__device__ __forceinline__ unsigned as_u(half2 h) { return *reinterpret_cast<unsigned *>(&h); }

// An integer zero point z as the constants a weight's dequantization subtracts: zlo = 1024 + z from a nibble's
// 0x6400 | q (1024 + q), zhi = -(64 + z) added to (0x6400 | q << 4) / 16 (both halves alike; integer ops only).
__device__ __forceinline__ void zero_consts(unsigned z, half2 &zlo, half2 &zhi) {
    zlo = as_h2((0x6400u + z) * 0x10001u);
    zhi = as_h2((0xd400u + (z << 4)) * 0x10001u);
}

// The 8 nibbles of a word, (q - zero) exact in fp16, as 4 half2: nibbles (0, 4), (1, 5) with the first zero point's
// constants, (2, 6), (3, 7) with the second's (zero_consts). In the NK layout both are the row's, and the pairs are
// k = 0..7 in order; in Marlin's, the two are two columns' (marlin_gemv.cu).
__device__ __forceinline__ void dequant8(unsigned w, half2 zlo0, half2 zhi0, half2 zlo1, half2 zhi1, half2 out[4]) {
    const half2 sixteenth = as_h2(0x2c002c00u);  // 1/16
    out[0] = __hsub2(as_h2(and_or(w, 0x000f000fu, 0x64006400u)), zlo0);
    out[1] = __hfma2(as_h2(and_or(w, 0x00f000f0u, 0x64006400u)), sixteenth, zhi0);
    w >>= 8;
    out[2] = __hsub2(as_h2(and_or(w, 0x000f000fu, 0x64006400u)), zlo1);
    out[3] = __hfma2(as_h2(and_or(w, 0x00f000f0u, 0x64006400u)), sixteenth, zhi1);
}

// One zero point for all 8.
__device__ __forceinline__ void dequant8(unsigned w, half2 zlo, half2 zhi, half2 out[4]) {
    dequant8(w, zlo, zhi, zlo, zhi, out);
}

// act(gate) * up for the MLP's gate|up projection (ACT 1: SiLU, 2: GELU-tanh), rounded like the separate kernels:
// the projections to fp16, act to fp16, the product to fp16.
template <int ACT>
__device__ __forceinline__ half act_mul(float gate, float up) {
    const float g = __half2float(__float2half_rn(gate));
    const float u = __half2float(__float2half_rn(up));
    float a;
    if (ACT == 1) {
        a = g / (1.0f + expf(-g));
    } else {
        a = 0.5f * g * (1.0f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g)));
    }
    return __float2half_rn(__half2float(__float2half_rn(a)) * u);
}
