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
