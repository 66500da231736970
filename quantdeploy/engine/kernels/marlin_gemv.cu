// Batch-1 W4A16 GEMV over Marlin's weight layout (engine/marlin_gemv.py describes the layout and decodes it on the
// CPU the way this kernel does), so that a weight gptqmodel's Marlin runs in batches needs no second copy.
//
// A block takes one super tile of 64 columns (two with P == 2: gate columns st*64.. and the matching up columns N/2
// further), its S warps an S-th of K each, GP groups of GT 16-row tiles per step. Lane l (c = l / 4, r0 = 2 (l % 4))
// loads the uint4 of each tile: its 8 columns c + 8m at rows r0, r0 + 1, r0 + 8, r0 + 9, where nibbles (t, t + 4) of
// word j are rows (r0 + 8 (t % 2), + 1) of column m = 2j + t / 2; x is the two half2 at those rows. A group's 8
// scales are one 16-byte load, its zero points one word (nibble (m >> 1) + 4 (m & 1) for column m; Z >= 0: every
// zero point Z, Marlin's uint4b8 with Z = 8). As in the NK GEMV, (q - zero) is exact in fp16, a group's products of
// a column (4 rows x GT tiles) add up in half2 and the scale is applied per group in fp32. The lanes of one c add
// their rows with two shuffles, the warps their K slices through shared memory, in warp order.
#include "common.cuh"

enum : int { MARLIN_ZP = -2 };  // Z: zero points in Marlin's packed words (else Z >= 0, the one zero point)

// One group's constants for the lane's 8 columns.
struct GroupConsts {
    float s[8];
    half2 zlo[8], zhi[8];
};

template <int Z>
__device__ __forceinline__ void group_consts(uint4 sv, unsigned zw, GroupConsts &k) {
    const unsigned sw[4] = {sv.x, sv.y, sv.z, sv.w};
#pragma unroll
    for (int m = 0; m < 8; ++m) {
        const half2 pair = as_h2(sw[m >> 1]);
        k.s[m] = (m & 1) ? __high2float(pair) : __low2float(pair);
        const unsigned z = Z == MARLIN_ZP ? (zw >> (4 * ((m >> 1) + 4 * (m & 1)))) & 0xfu : (unsigned)Z;
        zero_consts(z, k.zlo[m], k.zhi[m]);
    }
}

// One tile's 32 weights of the lane (4 words) times x at its rows: xa = (x[r0], x[r0 + 1]), xb = (x[r0 + 8],
// x[r0 + 9]), into the columns' half2 partial sums.
__device__ __forceinline__ void tile_dot(uint4 wv, unsigned xa, unsigned xb, const GroupConsts &k, half2 (&part)[8]) {
    const unsigned words[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int m0 = 2 * j, m1 = 2 * j + 1;
        half2 d[4];  // column m0 at rows (r0, r0 + 1) and (r0 + 8, r0 + 9), then column m1
        dequant8(words[j], k.zlo[m0], k.zhi[m0], k.zlo[m1], k.zhi[m1], d);
        part[m0] = __hfma2(d[1], as_h2(xb), __hfma2(d[0], as_h2(xa), part[m0]));
        part[m1] = __hfma2(d[3], as_h2(xb), __hfma2(d[2], as_h2(xa), part[m1]));
    }
}

// Loads of one step (GP groups of GT tiles) for the P super tiles: the weights stream past L1 (ld.cs), the scales
// and zero point words through the read-only path.
template <int GT, int GP, int P, int Z>
__device__ __forceinline__ void step_load(const uint4 *__restrict__ q, const half *__restrict__ s,
                                          const unsigned *__restrict__ zp, int N, const int (&st)[P],
                                          int kt, uint4 (&wv)[P][GP * GT], uint4 (&sv)[P][GP],
                                          unsigned (&zw)[P][GP]) {
    const int lane = threadIdx.x & 31, c = lane >> 2;
    const size_t row = (size_t)(N >> 1);  // uint4 per k-tile
#pragma unroll
    for (int p = 0; p < P; ++p) {
#pragma unroll
        for (int t = 0; t < GP * GT; ++t) wv[p][t] = __ldcs(q + (size_t)(kt + t) * row + st[p] * 32 + lane);
#pragma unroll
        for (int g = 0; g < GP; ++g) {
            const int grp = kt / GT + g;
            sv[p][g] = __ldg(reinterpret_cast<const uint4 *>(s + (size_t)grp * N + st[p] * 64 + 8 * c));
            zw[p][g] = Z == MARLIN_ZP ? __ldg(zp + (size_t)grp * (N >> 3) + st[p] * 8 + c) : 0u;
        }
    }
}

// Column col's sums over the block's S warps.
template <int S, int P>
__device__ __forceinline__ void block_sums(const float (&part_sum)[S][P][64], int col, float (&tot)[P]) {
#pragma unroll
    for (int p = 0; p < P; ++p) {
        tot[p] = 0.0f;
#pragma unroll
        for (int w = 0; w < S; ++w) tot[p] += part_sum[w][p][col];
    }
}

template <int P, int ACT>
__device__ __forceinline__ void store_col(half *__restrict__ y, int n, const float (&tot)[P]) {
    if (ACT == 0) {
        y[n] = __float2half_rn(tot[0]);
    } else {
        y[n] = act_mul<ACT>(tot[0], tot[P - 1]);
    }
}

// The KS blocks of one super tile: each leaves its column sums in scratch (threads 0..63, one column each), and the
// block that finishes last (a counter per super tile, zero before the launch and again after it) adds them up in
// block order, so the sums are the same on every run. True in the last block's threads, which then hold the totals.
template <int P, int KS>
__device__ __forceinline__ bool last_of_blocks(float *__restrict__ scratch, unsigned *__restrict__ counters, int sti,
                                               int ks, float (&tot)[P]) {
    __shared__ bool last;
    const int col = threadIdx.x;
    if (col < 64) {
#pragma unroll
        for (int p = 0; p < P; ++p) scratch[((size_t)sti * KS + ks) * P * 64 + p * 64 + col] = tot[p];
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counters + sti, 1u) == KS - 1;
    __syncthreads();
    if (!last) return false;
    __threadfence();
    if (col < 64) {
#pragma unroll
        for (int p = 0; p < P; ++p) {
            tot[p] = 0.0f;
            for (int b = 0; b < KS; ++b) tot[p] += __ldcg(scratch + ((size_t)sti * KS + b) * P * 64 + p * 64 + col);
        }
    }
    if (threadIdx.x == 0) counters[sti] = 0;
    return true;
}

// y = x @ W for one token. q: Marlin's uint4 tiles; s: its permuted scales [G, N]; zp: its packed zero points
// [G, N/8] (unused for Z >= 0); x: [K] fp16; y: [N] (P == 1) or, with P == 2 and ACT 1 (SiLU) / 2 (GELU-tanh), the
// [N/2] act(gate) * up of a [gate | up] weight. A group is GT 16-row tiles; K / 16 / (S KS) is a multiple of GP GT.
// grid: N / 64 / P * KS blocks of 32 S threads: KS blocks per super tile split K (KS > 1: scratch holds N KS floats,
// counters N / 64 / P zeros), so that a product with few super tiles (down: 64) still fills the GPU.
template <int GT, int GP, int S, int P, int ACT, int Z, int KS = 1>
__global__ void __launch_bounds__(32 * S) qd_marlin_gemv(const uint4 *__restrict__ q, const half *__restrict__ s,
                                                          const unsigned *__restrict__ zp, const half *__restrict__ x,
                                                          half *__restrict__ y, float *__restrict__ scratch,
                                                          unsigned *__restrict__ counters, int N, int K) {
    constexpr int T = GP * GT;  // tiles per step
    static_assert(KS == 1 || 32 * S >= 64, "the last block adds a column per thread");
    __shared__ float part_sum[S][P][64];
    pdl_launch_dependents();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int c = lane >> 2, r0 = 2 * (lane & 3);
    const int sti = blockIdx.x / KS, ks = blockIdx.x % KS;
    int st[P];
#pragma unroll
    for (int p = 0; p < P; ++p) st[p] = sti + p * (N >> 7);  // P == 2: the up half starts at super tile N/128
    const int share = (K >> 4) / (S * KS);
    const int kbeg = (ks * S + warp) * share, kend = kbeg + share;
    float acc[P][8];
#pragma unroll
    for (int p = 0; p < P; ++p)
#pragma unroll
        for (int m = 0; m < 8; ++m) acc[p][m] = 0.0f;
    uint4 wv[P][T], sv[P][GP];
    unsigned zw[P][GP];
    step_load<GT, GP, P, Z>(q, s, zp, N, st, kbeg, wv, sv, zw);
    pdl_wait();  // x comes from the previous kernel
    const unsigned *xw = reinterpret_cast<const unsigned *>(x);
    for (int kt = kbeg; kt < kend; kt += T) {
        if (kt != kbeg) step_load<GT, GP, P, Z>(q, s, zp, N, st, kt, wv, sv, zw);
        unsigned xa[T], xb[T];
#pragma unroll
        for (int t = 0; t < T; ++t) {
            const int k0 = (kt + t) * 16 + r0;
            xa[t] = __ldca(xw + (k0 >> 1));
            xb[t] = __ldca(xw + ((k0 + 8) >> 1));
        }
#pragma unroll
        for (int p = 0; p < P; ++p)
#pragma unroll
            for (int g = 0; g < GP; ++g) {
                GroupConsts k;
                group_consts<Z>(sv[p][g], zw[p][g], k);
                half2 part[8];
#pragma unroll
                for (int m = 0; m < 8; ++m) part[m] = __float2half2_rn(0.0f);
#pragma unroll
                for (int t = 0; t < GT; ++t) tile_dot(wv[p][g * GT + t], xa[g * GT + t], xb[g * GT + t], k, part);
#pragma unroll
                for (int m = 0; m < 8; ++m) {
                    const float2 f = __half22float2(part[m]);
                    acc[p][m] = fmaf(k.s[m], f.x + f.y, acc[p][m]);
                }
            }
    }
#pragma unroll
    for (int p = 0; p < P; ++p)
#pragma unroll
        for (int m = 0; m < 8; ++m) {
            acc[p][m] += __shfl_xor_sync(0xffffffffu, acc[p][m], 1);
            acc[p][m] += __shfl_xor_sync(0xffffffffu, acc[p][m], 2);
        }
    if ((lane & 3) == 0) {
#pragma unroll
        for (int p = 0; p < P; ++p)
#pragma unroll
            for (int m = 0; m < 8; ++m) part_sum[warp][p][c + 8 * m] = acc[p][m];
    }
    __syncthreads();
    if (KS > 1) {
        float tot[P];
        block_sums<S, P>(part_sum, threadIdx.x & 63, tot);
        if (last_of_blocks<P, KS>(scratch, counters, sti, ks, tot) && threadIdx.x < 64)
            store_col<P, ACT>(y, st[0] * 64 + threadIdx.x, tot);
        return;
    }
    for (int col = threadIdx.x; col < 64; col += 32 * S) {
        float tot[P];
        block_sums<S, P>(part_sum, col, tot);
        store_col<P, ACT>(y, st[0] * 64 + col, tot);
    }
}
