// The part of CUDA that quantdeploy's GEMV kernels use, on the CPU, so that the tests run the kernels' own source
// without a GPU (quantdeploy/testing/cuda_emu.py): one std::thread per CUDA thread of a block, blocks one after
// another, __shared__ a static shared by the block's threads, shuffles through a buffer between two warp barriers.
// fp16 is the compiler's _Float16; __hfma2 rounds the fp32 fma to fp16 (the GPU rounds once: a last-bit difference
// at most). Not a performance model, and no memory or warp-divergence checks.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdlib>
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

namespace qd_emu {
struct Block {
    std::unique_ptr<std::barrier<>> all;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    std::vector<float> lanes;
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
