// Batch-1 W4A16 GEMV and dequantization for quantdeploy's "NK" layout (compiled at run time with NVRTC).
//
// Layout, per output row n (K contiguous, so each lane streams 16-byte loads):
//   q    uint32 [N, K/8]  word j holds k = 8j..8j+7, k offset i in nibble SLOT[i] = {0,4,1,5,2,6,3,7}, so that
//                         one AND/OR (lop3) yields the pairs (k0,k1) (k2,k3) (k4,k5) (k6,k7) as half2;
//   meta uint32 [N, G]    bits 0-15: the group's fp16 scale, bits 16-31: its integer zero point (0..16).
// W[n, k] = (q - zero) * scale. (q - zero) is exact in fp16 (the 0x6400 exponent trick, zero folded into the
// same subtraction), one lane's 32 products accumulate in half2, and the scale is applied once per 32 weights
// in fp32.
#include <cuda_fp16.h>

__device__ __forceinline__ unsigned and_or(unsigned a, unsigned b, unsigned c) {
    unsigned d;
    asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(d) : "r"(a), "r"(b), "r"(c));  // (a & b) | c
    return d;
}

__device__ __forceinline__ half2 as_h2(unsigned u) { return *reinterpret_cast<half2 *>(&u); }
__device__ __forceinline__ unsigned as_u(half2 h) { return *reinterpret_cast<unsigned *>(&h); }

// 8 weights (q - zero) of one word, in k order, as 4 half2.
__device__ __forceinline__ void dequant8(unsigned w, half2 zlo, half2 zhi, half2 out[4]) {
    const half2 sixteenth = as_h2(0x2c002c00u);  // 1/16
    out[0] = __hsub2(as_h2(and_or(w, 0x000f000fu, 0x64006400u)), zlo);
    out[1] = __hfma2(as_h2(and_or(w, 0x00f000f0u, 0x64006400u)), sixteenth, zhi);
    w >>= 8;
    out[2] = __hsub2(as_h2(and_or(w, 0x000f000fu, 0x64006400u)), zlo);
    out[3] = __hfma2(as_h2(and_or(w, 0x00f000f0u, 0x64006400u)), sixteenth, zhi);
}

__device__ __forceinline__ void zero_consts(unsigned meta, half2 &zlo, half2 &zhi, float &scale) {
    unsigned z = meta >> 16;
    zlo = as_h2((0x6400u + z) * 0x10001u);  // 1024 + z
    zhi = __float2half2_rn(-64.0f - (float)z);
    scale = __half2float(__ushort_as_half((unsigned short)(meta & 0xffffu)));
}

// R consecutive rows times one lane's 32-weight chunk, into acc (x chunk: 4 uint4 = 32 halves).
template <int R>
__device__ __forceinline__ void chunk_dot(const uint4 (&wv)[R], const unsigned (&mv)[R], const uint4 (&xv)[4],
                                          float (&acc)[R]) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
        half2 zlo, zhi;
        float scale;
        zero_consts(mv[r], zlo, zhi, scale);
        half2 part = __float2half2_rn(0.0f);
        const unsigned words[4] = {wv[r].x, wv[r].y, wv[r].z, wv[r].w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            half2 d[4];
            dequant8(words[i], zlo, zhi, d);
            const unsigned xs[4] = {xv[i].x, xv[i].y, xv[i].z, xv[i].w};
#pragma unroll
            for (int j = 0; j < 4; ++j) part = __hfma2(d[j], as_h2(xs[j]), part);
        }
        const float2 pf = __half22float2(part);
        acc[r] = fmaf(scale, pf.x + pf.y, acc[r]);
    }
}

// One warp computes R consecutive outputs (N % R == 0); lane l takes the 32-weight chunks l, l + 32, ... and loads
// U chunks of every row before it computes them (bytes in flight). K % 32 == 0; a group is 2^gshift chunks.
template <int R, int U>
__global__ void __launch_bounds__(128) qd_w4a16_gemv(const uint4 *__restrict__ q, const unsigned *__restrict__ meta,
                                                     const uint4 *__restrict__ x, half *__restrict__ y,
                                                     int N, int K, int G, int gshift) {
    const int lane = threadIdx.x & 31;
    const int n0 = ((blockIdx.x * blockDim.x + threadIdx.x) >> 5) * R;
    if (n0 >= N) return;
    const int chunks = K >> 5;
    const uint4 *qr = q + (size_t)n0 * chunks;
    const unsigned *mr = meta + (size_t)n0 * G;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.0f;
    int c = lane;
    for (; c + 32 * (U - 1) < chunks; c += 32 * U) {
        uint4 wv[U][R], xv[U][4];
        unsigned mv[U][R];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int cu = c + 32 * u;
#pragma unroll
            for (int r = 0; r < R; ++r) {
                wv[u][r] = __ldcs(qr + r * chunks + cu);
                mv[u][r] = __ldg(mr + r * G + (cu >> gshift));
            }
#pragma unroll
            for (int i = 0; i < 4; ++i) xv[u][i] = __ldg(x + cu * 4 + i);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) chunk_dot<R>(wv[u], mv[u], xv[u], acc);
    }
    for (; c < chunks; c += 32) {
        uint4 wv[R], xv[4];
        unsigned mv[R];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            wv[r] = __ldcs(qr + r * chunks + c);
            mv[r] = __ldg(mr + r * G + (c >> gshift));
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) xv[i] = __ldg(x + c * 4 + i);
        chunk_dot<R>(wv, mv, xv, acc);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        float v = acc[r];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) y[n0 + r] = __float2half_rn(v);
    }
}

// Dense W [N, K] in fp16 for prompts (then one cuBLAS matmul): one thread per word, one 16-byte store.
__global__ void qd_w4a16_dequant(const unsigned *__restrict__ q, const unsigned *__restrict__ meta,
                                 uint4 *__restrict__ out, int N, int K, int G) {
    const long long words = (long long)N * (K >> 3);
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= words) return;
    const int per_row = K >> 3;
    const int n = (int)(i / per_row), j = (int)(i % per_row);
    const unsigned m = meta[(size_t)n * G + (j * 8) / (K / G)];
    half2 zlo, zhi;
    float scale;
    zero_consts(m, zlo, zhi, scale);
    half2 d[4];
    dequant8(q[i], zlo, zhi, d);
    const half2 s = __float2half2_rn(scale);
    uint4 o;
    o.x = as_u(__hmul2(d[0], s));
    o.y = as_u(__hmul2(d[1], s));
    o.z = as_u(__hmul2(d[2], s));
    o.w = as_u(__hmul2(d[3], s));
    out[i] = o;
}
