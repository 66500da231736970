// The part of CUDA that quantdeploy's kernels use, on the CPU, so that the tests run the kernels' own source without
// a GPU (quantdeploy/testing/cuda_emu.py): one std::thread per CUDA thread of a block, blocks one after another,
// __shared__ a static shared by the block's threads, shuffles and mma.sync through buffers between warp barriers
// (the kernels' inline PTX has a QD_CUDA_EMU branch calling qd_emu:: here). fp16 is the compiler's _Float16;
// __hfma2 rounds the fp32 fma to fp16 (the GPU rounds once: a last-bit difference at most). Not a performance
// model, and no memory or warp-divergence checks.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x = 0, y = 0, z = 0;
};
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
struct uint4 {
    unsigned x, y, z, w;
};
struct uint2 {
    unsigned x, y;
};
typedef _Float16 half;
struct half2 {
    half x, y;
};
struct float2 {
    float x, y;
};
struct float4 {
    float x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

// PTX prmt: byte i of the result is byte (selector nibble i & 7) of y:x, its sign replicated where the nibble's bit 3
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) {
        const unsigned sel = (s >> (4 * i)) & 15;
        unsigned b = (v >> (8 * (sel & 7))) & 0xff;
        if (sel & 8) b = (b & 0x80) ? 0xff : 0;
        r |= b << (8 * i);
    }
    return r;
}

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__
#define __shared__ static

inline half2 __hsub2(half2 a, half2 b) { return {(half)((float)a.x - (float)b.x), (half)((float)a.y - (float)b.y)}; }
inline half2 __hfma2(half2 a, half2 b, half2 c) {
    return {(half)std::fma((float)a.x, (float)b.x, (float)c.x), (half)std::fma((float)a.y, (float)b.y, (float)c.y)};
}
inline half2 __hmul2(half2 a, half2 b) { return {(half)((float)a.x * (float)b.x), (half)((float)a.y * (float)b.y)}; }
inline void __trap() { std::abort(); }
inline half2 __float2half2_rn(float f) { return {(half)f, (half)f}; }
inline float2 __half22float2(half2 h) { return {(float)h.x, (float)h.y}; }
inline float __low2float(half2 h) { return (float)h.x; }
inline float __high2float(half2 h) { return (float)h.y; }
inline half __float2half_rn(float f) { return (half)f; }
inline float __half2float(half h) { return (float)h; }
template <class T>
inline T __ldcs(const T *p) { return *p; }
template <class T>
inline T __ldg(const T *p) { return *p; }
template <class T>
inline T __ldca(const T *p) { return *p; }
template <class T>
inline T __ldcg(const T *p) { return *p; }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline unsigned atomicAdd(unsigned *p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_add(v); }

namespace qd_emu {
struct Fragments {
    unsigned a[4], b[2];
};
struct Block {
    std::unique_ptr<std::barrier<>> all;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    std::vector<float> lanes;
    std::vector<Fragments> frags;
};
inline Block *block;

// grid blocks of `threads` threads, each running kernel().
inline void launch(unsigned grid, unsigned threads, const std::function<void()> &kernel) {
    blockDim.x = threads;
    gridDim.x = grid;
    for (unsigned b = 0; b < grid; ++b) {
        Block blk;
        blk.all = std::make_unique<std::barrier<>>(threads);
        for (unsigned w = 0; w < (threads + 31) / 32; ++w) blk.warps.push_back(std::make_unique<std::barrier<>>(32));
        blk.lanes.resize(threads);
        blk.frags.resize(threads);
        block = &blk;
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < threads; ++t) ts.emplace_back([&, t, b] {
            threadIdx.x = t;
            blockIdx.x = b;
            kernel();
        });
        for (auto &th : ts) th.join();
    }
}
}  // namespace qd_emu

inline void __syncthreads() { qd_emu::block->all->arrive_and_wait(); }

// Every lane of the warp calls it together (no divergence at a shuffle in our kernels).
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    const int t = threadIdx.x, w = t / 32;
    qd_emu::block->lanes[t] = v;
    qd_emu::block->warps[w]->arrive_and_wait();
    const float r = qd_emu::block->lanes[w * 32 + ((t % 32) ^ lane_mask)];
    qd_emu::block->warps[w]->arrive_and_wait();
    return r;
}

namespace qd_emu {
inline float half_of(unsigned u, int i) {
    half h[2];
    std::memcpy(h, &u, 4);
    return (float)h[i];
}

// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32, d += A (16 x 16) B (16 x 8), with PTX's fragment layout: lane
// 4 g + t holds A's rows g and g + 8 at columns 2t, 2t + 1 (a[0], a[1]) and 2t + 8, 2t + 9 (a[2], a[3]), B's rows
// 2t, 2t + 1 (b0) and 2t + 8, 2t + 9 (b1) of column g, and D's rows g, g + 8 at columns 2t, 2t + 1. Products add up
// in fp32, in k order.
inline void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    const int t = threadIdx.x, w = t / 32, lane = t % 32;
    Fragments &mine = block->frags[t];
    for (int i = 0; i < 4; ++i) mine.a[i] = a[i];
    mine.b[0] = b0, mine.b[1] = b1;
    block->warps[w]->arrive_and_wait();
    const Fragments *f = &block->frags[w * 32];
    auto A = [&](int row, int k) {  // the register: (row >= 8) + 2 (k >= 8)
        const Fragments &src = f[4 * (row % 8) + (k % 8) / 2];
        return half_of(src.a[(row >= 8) + 2 * (k >= 8)], k % 2);
    };
    auto B = [&](int k, int col) { return half_of(f[4 * col + (k % 8) / 2].b[k >= 8], k % 2); };
    const int g = lane / 4, tg = lane % 4;
    float out[4];
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i / 2), col = 2 * tg + i % 2;
        float acc = d[i];
        for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
        out[i] = acc;
    }
    block->warps[w]->arrive_and_wait();
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}
}  // namespace qd_emu
