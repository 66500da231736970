// Batch-1 W4A16 GEMV and dequantization for quantdeploy's "NK" layout (compiled at run time with NVRTC).
//
// Layout, per output row n (K contiguous, so each lane streams 16-byte loads):
//   q    uint32 [N, K/8]  word j holds k = 8j..8j+7, k offset i in nibble SLOT[i] = {0,4,1,5,2,6,3,7}, so that
//                         one AND/OR (lop3) yields the pairs (k0,k1) (k2,k3) (k4,k5) (k6,k7) as half2;
//   meta, in one of three forms (template argument Z; nk_layout.py's MetaForm names the same values):
//     Z == META_WORDS (-1): uint32 [N, G], bits 0-15 the group's fp16 scale, bits 16-31 its integer zero point;
//     Z == META_ZERO_BYTES (-5): uint16 [N, G + G/2] per row, the G fp16 scales, then the zero points (0..15) a
//              byte each (group g at byte g): 3 bytes per group (AWQ, asymmetric GPTQ). A byte becomes dequant8's
//              constants in two operations (row_consts), where nibbles took six: AWQ decoded 1.9-2.1 % faster;
//     Z >= 0 (SCALES_ONLY): the fp16 scales alone, when every zero point of the weight is Z (GPTQ sym=True: all
//              8), in blocks of 8 rows: uint16 [N/8, G, 8], so that a warp's rows of one group are one vector load.
//   Per 128-weight group (64 bytes of q) that is 4, 3 or 2 bytes of meta. (ZERO_BYTES in blocks of 8 rows, its
//   scales then its zero point bytes, two vector loads a group, decoded 1.7 % slower or more on an H200.)
// W[n, k] = (q - zero) * scale. (q - zero) is exact in fp16 (the 0x6400 exponent trick, zero folded into the
// same subtraction), one lane's 32 products accumulate in half2, and the scale is applied once per 32 weights
// in fp32.
#include "common.cuh"

// The meta forms as nk_layout.py's MetaForm names them (an enum: no symbols in the cubin); any Z >= 0 is
// MetaForm.SCALES_ONLY, Z the weight's one zero point.
enum MetaForm : int { META_WORDS = -1, META_ZERO_BYTES = -5 };

// A batch's meta for R rows: w[r] holds row r's fp16 scale, Z == META_WORDS: as a word with the scale in the low
// half and the zero point in the high half; Z == META_ZERO_BYTES: in the low half, the zero point in z[r]; Z >= 0:
// the two scales of rows r & ~1 and r | 1, row r's in half r & 1.
template <int R>
struct Meta {
    unsigned w[R];
    unsigned z[R];  // Z == META_ZERO_BYTES: row r's zero point (a byte)
};

// Row r's scale, and its zero point as the constants dequant8 subtracts.
template <int R, int Z>
__device__ __forceinline__ void row_consts(const Meta<R> &m, int r, half2 &zlo, half2 &zhi, float &scale) {
    unsigned z;
    if (Z == META_ZERO_BYTES) {  // the zero point's byte into both halves' low byte beside 0x64, zhi from that
        scale = __low2float(as_h2(m.w[r]));
        zlo = as_h2(__byte_perm(m.z[r], 0x6400u, 0x5050));  // 1024 + z
        // zlo * 16 = (0x4000 + 16 z) in the low half, (0x4006 + 16 z) in the high one (the low half's 6 carried in)
        zhi = as_h2(as_u(zlo) * 16u + 0x93fa9400u);  // 0xd400 + 16 z: -(64 + z)
        return;
    }
    if (Z == META_WORDS) {
        z = m.w[r] >> 16;
        scale = __low2float(as_h2(m.w[r]));
    } else {
        z = (unsigned)Z;
        scale = (r & 1) ? __high2float(as_h2(m.w[r])) : __low2float(as_h2(m.w[r]));
    }
    zero_consts(z, zlo, zhi);
}

// R consecutive rows times one lane's 32-weight chunk, into acc (x chunk: 4 uint4 = 32 halves).
template <int R, int Z>
__device__ __forceinline__ void chunk_dot(const uint4 (&wv)[R], const Meta<R> &mv, const uint4 (&xv)[4],
                                          float (&acc)[R]) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
        half2 zlo, zhi;
        float scale;
        row_consts<R, Z>(mv, r, zlo, zhi, scale);
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

// A warp's rows n0, n0 + 1, ... of the meta (n0 % R == 0, so for Z >= 0 R <= 8 rows lie in one block of 8).
struct MetaRows {
    const unsigned *m;         // Z == META_WORDS: row n0's words
    const unsigned short *s;   // Z == META_ZERO_BYTES: row n0's meta; Z >= 0: the scale of row n0, group 0
};

template <int Z>
__device__ __forceinline__ MetaRows meta_rows(const unsigned *meta, int G, int n0) {
    const unsigned short *h = reinterpret_cast<const unsigned short *>(meta);
    MetaRows r;
    r.m = meta + (size_t)n0 * G;
    r.s = Z == META_ZERO_BYTES ? h + (size_t)n0 * (G + (G >> 1)) : h + (size_t)(n0 >> 3) * G * 8 + (n0 & 7);
    return r;
}

// Group g's meta for R rows (Meta). Z >= 0: the R scales in one vector load (two for R = 16).
template <int R, int Z>
__device__ __forceinline__ void load_meta(const MetaRows &mr, int G, int g, Meta<R> &mv) {
    if (Z == META_WORDS) {
#pragma unroll
        for (int r = 0; r < R; ++r) mv.w[r] = __ldg(mr.m + (size_t)r * G + g);
        return;
    }
    if (Z == META_ZERO_BYTES) {  // per row: G scales, then G zero point bytes
        const int per = G + (G >> 1);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const unsigned short *h = mr.s + (size_t)r * per;
            mv.w[r] = __ldg(h + g);
            mv.z[r] = __ldg(reinterpret_cast<const unsigned char *>(h + G) + g);
        }
        return;
    }
    constexpr int V = R < 8 ? R : 8;  // rows per block
#pragma unroll
    for (int b = 0; b < R / V; ++b) {
        const unsigned short *sp = mr.s + (size_t)(b * G * 8 + g * 8);
        unsigned w[4];
        if (V == 8) {
            const uint4 t = __ldg(reinterpret_cast<const uint4 *>(sp));
            w[0] = t.x, w[1] = t.y, w[2] = t.z, w[3] = t.w;
        } else if (V == 4) {
            const uint2 t = __ldg(reinterpret_cast<const uint2 *>(sp));
            w[0] = t.x, w[1] = t.y;
        } else if (V == 2) {
            w[0] = __ldg(reinterpret_cast<const unsigned *>(sp));
        } else {
            w[0] = __ldg(sp);
        }
#pragma unroll
        for (int i = 0; i < V; ++i) mv.w[b * V + i] = w[i >> 1];
    }
}

// R rows' 16-byte chunk c (and its group's meta): weights stream past L1 (ld.cs), meta through the read-only path.
template <int R, int Z>
__device__ __forceinline__ void load_rows(const uint4 *qr, const MetaRows &mr, int chunks, int G, int gshift, int c,
                                          uint4 (&wv)[R], Meta<R> &mv) {
#pragma unroll
    for (int r = 0; r < R; ++r) wv[r] = __ldcs(qr + r * chunks + c);
    load_meta<R, Z>(mr, G, c >> gshift, mv);
}

// One warp computes R consecutive outputs (N % R == 0); lane l takes the 32-weight chunks l, l + 32, ... and loads
// U chunks of every row before it computes them (bytes in flight). K % 32 == 0; a group is 2^gshift chunks.
// Before pdl_wait() (weights never depend on the previous kernel; x does, so it is read only after the wait, through
// L1 with ld.ca) each lane loads its first chunks: U of each row, or the one its tail loop takes first.
template <int R, int U, int Z>
__device__ __forceinline__ void load_w(const uint4 *qr, const MetaRows &mr, int chunks, int G, int gshift, int c,
                                       uint4 (&wv)[U][R], Meta<R> (&mv)[U]) {
#pragma unroll
    for (int u = 0; u < U; ++u) load_rows<R, Z>(qr, mr, chunks, G, gshift, c + 32 * u, wv[u], mv[u]);
}

// x for U consecutive batches of chunk c (c, c + 32, ...): 4 uint4 (32 halves) each, through L1 (ld.ca).
template <int U>
__device__ __forceinline__ void load_x(const uint4 *__restrict__ x, int c, uint4 (&xv)[U][4]) {
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
        for (int i = 0; i < 4; ++i) xv[u][i] = __ldca(x + (c + 32 * u) * 4 + i);
}

// Each of R partial sums added over the warp (every lane ends with the totals).
template <int R>
__device__ __forceinline__ void warp_sum(float (&acc)[R]) {
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], o);
}

// One warp's R dot products over chunks [cbeg, cend) of rows n0.., summed over the warp (every lane holds them).
template <int R, int U, int Z>
__device__ __forceinline__ void gemv_part(const uint4 *__restrict__ q, const unsigned *__restrict__ meta,
                                          const uint4 *__restrict__ x, int K, int G, int gshift, int n0, int cbeg,
                                          int cend, float (&acc)[R]) {
    const int lane = threadIdx.x & 31;
    const int chunks = K >> 5;
    const uint4 *qr = q + (size_t)n0 * chunks;
    const MetaRows mr = meta_rows<Z>(meta, G, n0);
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.0f;
    uint4 wv[U][R];
    Meta<R> mv[U];
    int c = cbeg + lane;
    const bool full = c + 32 * (U - 1) < cend;  // the lane's first U chunks all exist: the batched loop runs
    if (full) {
        load_w<R, U, Z>(qr, mr, chunks, G, gshift, c, wv, mv);
    } else if (c < cend) {
        load_rows<R, Z>(qr, mr, chunks, G, gshift, c, wv[0], mv[0]);
    }
    pdl_wait();
    for (; c + 32 * (U - 1) < cend; c += 32 * U) {
        if (c != cbeg + lane) load_w<R, U, Z>(qr, mr, chunks, G, gshift, c, wv, mv);
        uint4 xv[U][4];
        load_x<U>(x, c, xv);
#pragma unroll
        for (int u = 0; u < U; ++u) chunk_dot<R, Z>(wv[u], mv[u], xv[u], acc);
    }
    bool have = !full;  // the tail's first chunk is already in wv[0]
    for (; c < cend; c += 32) {
        if (!have) load_rows<R, Z>(qr, mr, chunks, G, gshift, c, wv[0], mv[0]);
        have = false;
        uint4 xr[1][4];
        load_x<1>(x, c, xr);
        chunk_dot<R, Z>(wv[0], mv[0], xr[0], acc);
    }
    warp_sum<R>(acc);
}

// The R outputs of rows n0..: ACT 0 writes y[n0 + r]. ACT 1 (SiLU) / 2 (GELU-tanh): the MLP's gate|up projection
// with rows interleaved at repack (gate j, up j), written as y[j] = act(gate_j) * up_j, rounded like the separate
// kernels (the projections to fp16, act to fp16, the product to fp16); R is even.
template <int R, int ACT>
__device__ __forceinline__ void store_rows(half *__restrict__ y, int n0, const float (&acc)[R]) {
    if (ACT == 0) {
#pragma unroll
        for (int r = 0; r < R; ++r) y[n0 + r] = __float2half_rn(acc[r]);
        return;
    }
#pragma unroll
    for (int r = 0; r + 1 < R; r += 2) y[(n0 + r) >> 1] = act_mul<ACT>(acc[r], acc[r + 1]);
}

// One warp per R rows over all of K (many warps when N is large); ACT as in store_rows, Z as in the layout above.
template <int R, int U, int ACT, int Z = META_WORDS>
__global__ void __launch_bounds__(128) qd_w4a16_gemv(const uint4 *__restrict__ q, const unsigned *__restrict__ meta,
                                                     const uint4 *__restrict__ x, half *__restrict__ y,
                                                     int N, int K, int G, int gshift) {
    pdl_launch_dependents();
    const int n0 = ((blockIdx.x * blockDim.x + threadIdx.x) >> 5) * R;
    if (n0 >= N) return;
    float acc[R];
    gemv_part<R, U, Z>(q, meta, x, K, G, gshift, n0, 0, K >> 5, acc);
    if ((threadIdx.x & 31) == 0) store_rows<R, ACT>(y, n0, acc);
}

// Split K: the block's S warps share R rows, each an S-th of K (K / 32 % S == 0), summed through shared memory.
// For small N (few rows to spread) with R large: x is read once per R rows, and there are still many warps; for a
// long K, a larger S leaves fewer chunks per lane, so more of them are in flight before pdl_wait().
template <int R, int U, int ACT, int S = 4, int Z = META_WORDS>
__global__ void __launch_bounds__(32 * S) qd_w4a16_gemv_sk(const uint4 *__restrict__ q,
                                                           const unsigned *__restrict__ meta,
                                                           const uint4 *__restrict__ x, half *__restrict__ y,
                                                           int N, int K, int G, int gshift) {
    __shared__ float part[S][R];
    pdl_launch_dependents();
    const int n0 = blockIdx.x * R;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int share = (K >> 5) / S;
    float acc[R];
    gemv_part<R, U, Z>(q, meta, x, K, G, gshift, n0, warp * share, (warp + 1) * share, acc);
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < R; ++r) part[warp][r] = acc[r];
    }
    __syncthreads();
    if (threadIdx.x == 0) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
            float t = 0.0f;
#pragma unroll
            for (int w = 0; w < S; ++w) t += part[w][r];
            acc[r] = t;
        }
        store_rows<R, ACT>(y, n0, acc);
    }
}

// Persistent (grid-stride): a few blocks per SM, each warp takes row groups gw, gw + warps, ... of R rows over all of
// K, and loads the next batch of U chunks per row (of this row group or its next one) before it computes the current
// one, so that bytes stay in flight across row groups; it leaves room on each SM for the next kernel's blocks, which
// (PDL) load their first weights meanwhile. Needs (K / 32) % (32 U) == 0.
template <int R, int U, int Z>
__device__ __forceinline__ void ps_load(const uint4 *q, const unsigned *meta, int chunks, int G, int gshift, int per,
                                        int gw, int tw, int t, uint4 (&wv)[U][R], Meta<R> (&mv)[U]) {
    const int n0 = (gw + (t / per) * tw) * R;
    const int c = (t % per) * 32 * U + (threadIdx.x & 31);
    load_w<R, U, Z>(q + (size_t)n0 * chunks, meta_rows<Z>(meta, G, n0), chunks, G, gshift, c, wv, mv);
}

template <int R, int U, int ACT, int Z>
__device__ __forceinline__ void ps_step(const uint4 *__restrict__ x, half *__restrict__ y, int per, int gw, int tw,
                                        int t, const uint4 (&wv)[U][R], const Meta<R> (&mv)[U],
                                        float (&acc)[R]) {
    uint4 xv[U][4];
    load_x<U>(x, (t % per) * 32 * U + (threadIdx.x & 31), xv);
#pragma unroll
    for (int u = 0; u < U; ++u) chunk_dot<R, Z>(wv[u], mv[u], xv[u], acc);
    if (t % per == per - 1) {  // the row group is done
        warp_sum<R>(acc);
        if ((threadIdx.x & 31) == 0) store_rows<R, ACT>(y, (gw + (t / per) * tw) * R, acc);
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r] = 0.0f;
    }
}

template <int R, int U, int ACT, int Z = META_WORDS>
__global__ void __launch_bounds__(128) qd_w4a16_gemv_ps(const uint4 *__restrict__ q,
                                                        const unsigned *__restrict__ meta,
                                                        const uint4 *__restrict__ x, half *__restrict__ y,
                                                        int N, int K, int G, int gshift) {
    pdl_launch_dependents();
    const int chunks = K >> 5;
    const int per = chunks / (32 * U);  // batches per row group
    const int groups = N / R;
    const int tw = gridDim.x * (blockDim.x >> 5);
    const int gw = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int total = gw < groups ? (groups - gw + tw - 1) / tw * per : 0;  // this warp's batches
    if (total == 0) return;
    uint4 wa[U][R], wb[U][R];
    Meta<R> ma[U], mb[U];
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.0f;
    ps_load<R, U, Z>(q, meta, chunks, G, gshift, per, gw, tw, 0, wa, ma);
    pdl_wait();
    for (int t = 0; t < total; t += 2) {  // two buffers, unrolled by hand so that both stay in registers
        if (t + 1 < total) ps_load<R, U, Z>(q, meta, chunks, G, gshift, per, gw, tw, t + 1, wb, mb);
        ps_step<R, U, ACT, Z>(x, y, per, gw, tw, t, wa, ma, acc);
        if (t + 1 >= total) break;
        if (t + 2 < total) ps_load<R, U, Z>(q, meta, chunks, G, gshift, per, gw, tw, t + 2, wa, ma);
        ps_step<R, U, ACT, Z>(x, y, per, gw, tw, t + 1, wb, mb, acc);
    }
}

// Dense W [N, K] in fp16 for prompts (then one cuBLAS matmul): one thread per word, one 16-byte store. split > 0:
// the rows are interleaved (gate j, up j), written back in order (gate rows, then the up rows from row split).
template <int Z = META_WORDS>
__global__ void qd_w4a16_dequant(const unsigned *__restrict__ q, const unsigned *__restrict__ meta,
                                 uint4 *__restrict__ out, int N, int K, int G, int split) {
    const long long words = (long long)N * (K >> 3);
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= words) return;
    const int per_row = K >> 3;
    const int n = (int)(i / per_row), j = (int)(i % per_row);
    Meta<1> m;
    load_meta<1, Z>(meta_rows<Z>(meta, G, n), G, (j * 8) / (K / G), m);
    half2 zlo, zhi;
    float scale;
    row_consts<1, Z>(m, 0, zlo, zhi, scale);
    half2 d[4];
    dequant8(q[i], zlo, zhi, d);
    const half2 s = __float2half2_rn(scale);
    uint4 o;
    o.x = as_u(__hmul2(d[0], s));
    o.y = as_u(__hmul2(d[1], s));
    o.z = as_u(__hmul2(d[2], s));
    o.w = as_u(__hmul2(d[3], s));
    const long long row = split ? ((n & 1) ? split + (n >> 1) : (n >> 1)) : n;
    out[row * per_row + j] = o;
}

// ---- Batched decode: up to 8 T tokens at once on the tensor cores (mma.sync m16n8k16, sm_80+) ----------------
// A warp takes 16 rows (lane 4 g + c holds rows g and g + 8) times 8 T tokens, over 128 weights of K per step: lane c
// of a row streams that row's 16-byte chunk 4 j + c, the same loads and meta as the GEMV. The 16 "columns" of one mma
// are a permutation of K that A (weights) and B (x) share: lane c's columns 2c, 2c + 1 are k = 32 ch + 8 i + 4 s + (0,
// 1) and its columns 2c + 8, 2c + 9 are k + 2, + 3 (ch = 4 j + c, word i of the chunk, half s of the word), so a lane's
// A fragments are its own dequantized pairs and its B fragments its own 16-byte loads of x, with no shuffles. Weights
// are (q - zero) * scale rounded to fp16 (as the prompt path's dequantized matrix); products sum in fp32.
__device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#elif defined(QD_CUDA_EMU)
    qd_emu::mma16816(d, a, b0, b1);
#else
    __trap();  // the chooser takes this kernel on compute capability 8.0+ only
#endif
}

// Chunk ch of rows ra / rb and their meta (zeros past the last chunk, where x is zero too).
template <int Z>
__device__ __forceinline__ void mma_load(const uint4 *qa, const uint4 *qb, const MetaRows &ra, const MetaRows &rb,
                                         int chunks, int G, int gshift, int ch, uint4 &wa, uint4 &wb, Meta<1> &ma,
                                         Meta<1> &mb) {
    if (ch < chunks) {
        load_rows<1, Z>(qa, ra, chunks, G, gshift, ch, *reinterpret_cast<uint4(*)[1]>(&wa), ma);
        load_rows<1, Z>(qb, rb, chunks, G, gshift, ch, *reinterpret_cast<uint4(*)[1]>(&wb), mb);
    } else {
        wa = wb = make_uint4(0, 0, 0, 0);
        ma.w[0] = mb.w[0] = ma.z[0] = mb.z[0] = 0;
    }
}

// 16 bytes global -> shared memory without registers (sm_80+); with `valid` false, 16 zero bytes.
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0) : "memory");
#elif defined(QD_CUDA_EMU)  // at once: a lane reads back only its own slots
    *static_cast<uint4 *>(smem) = valid ? *static_cast<const uint4 *>(gmem) : uint4{0, 0, 0, 0};
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}

// y[m, n] = x[m, :] . W[n, :] for m < M <= 8 T: a block of S warps takes R tiles of 16 rows, each warp an S-th of K
// for all R tiles, so that each x fragment it loads feeds R tiles (x is read N / (16 R) times per product, and a
// warp has R tiles' weights in flight); the S partial sums are added in warp order through shared memory (the same
// sums, in the same order, on every run). split > 0: rows interleaved (gate j, up j), written as columns j and
// split + j. P > 0: each lane's weights travel through shared memory instead, P steps ahead (cp.async into a ring
// of P steps per warp, each lane reading back only its own 16-byte slots, so no barrier): no registers hold the
// next step's weights, and more of them are in flight.
template <int T, int S, int Z = META_WORDS, int R = 1, int P = 0>
__global__ void __launch_bounds__(32 * S) qd_w4a16_mma(const uint4 *__restrict__ q, const unsigned *__restrict__ meta,
                                                       const uint4 *__restrict__ x, half *__restrict__ y, int M,
                                                       int N, int K, int G, int gshift, int split) {
    __shared__ float4 part[R][T][32];
    constexpr int PS = P > 0 ? P : 1;  // the ring's steps (one unused slot without it)
    __shared__ uint4 ring[P > 0 ? S : 1][PS][2 * R][32];
    pdl_launch_dependents();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int n0 = blockIdx.x * 16 * R;
    const int chunks = K >> 5, steps = (chunks + 3) >> 2;
    const int beg = warp * steps / S, end = (warp + 1) * steps / S;
    const uint4 *qa[R], *qb[R];
    MetaRows ra[R], rb[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        qa[r] = q + (size_t)(n0 + 16 * r + g) * chunks, qb[r] = q + (size_t)(n0 + 16 * r + g + 8) * chunks;
        ra[r] = meta_rows<Z>(meta, G, n0 + 16 * r + g), rb[r] = meta_rows<Z>(meta, G, n0 + 16 * r + g + 8);
    }
    float acc[R][T][4];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int t = 0; t < T; ++t) acc[r][t][0] = acc[r][t][1] = acc[r][t][2] = acc[r][t][3] = 0.0f;
    uint4 wa[R], wb[R];
    Meta<1> ma[R], mb[R];
    auto stage = [&](int js) {  // P > 0: step js's weights into its slot of the ring (zeros past the last chunk)
        const int cs = 4 * js + c, slot = (js - beg) % PS;
#pragma unroll
        for (int r = 0; r < R; ++r) {
            cp_async16(&ring[warp][slot][2 * r][lane], qa[r] + (cs < chunks ? cs : 0), cs < chunks);
            cp_async16(&ring[warp][slot][2 * r + 1][lane], qb[r] + (cs < chunks ? cs : 0), cs < chunks);
        }
    };
    auto meta_at = [&](int cs, Meta<1>(&m_a)[R], Meta<1>(&m_b)[R]) {  // P > 0: chunk cs's meta (zeros past K)
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (cs < chunks) {
                load_meta<1, Z>(ra[r], G, cs >> gshift, m_a[r]);
                load_meta<1, Z>(rb[r], G, cs >> gshift, m_b[r]);
            } else {
                m_a[r].w[0] = m_b[r].w[0] = m_a[r].z[0] = m_b[r].z[0] = 0;
            }
        }
    };
    if (P > 0) {
#pragma unroll
        for (int p = 0; p < PS - 1; ++p) {
            if (beg + p < end) stage(beg + p);
            cp_async_commit();  // one group per step, empty past the end, so that the waits below count steps
        }
        if (beg < end) meta_at(4 * beg + c, ma, mb);
    } else if (beg < end) {
#pragma unroll
        for (int r = 0; r < R; ++r)
            mma_load<Z>(qa[r], qb[r], ra[r], rb[r], chunks, G, gshift, 4 * beg + c, wa[r], wb[r], ma[r], mb[r]);
    }
    pdl_wait();
    for (int j = beg; j < end; ++j) {
        const int ch = 4 * j + c;
        uint4 na[R], nb[R];  // the next step's weights, in flight while this one computes
        Meta<1> nma[R], nmb[R];
        if (P > 0) {
            if (j + P - 1 < end) stage(j + P - 1);
            cp_async_commit();
            cp_async_wait<PS - 1>();  // this lane's copies of step j have landed
#pragma unroll
            for (int r = 0; r < R; ++r) {
                wa[r] = ring[warp][(j - beg) % PS][2 * r][lane];
                wb[r] = ring[warp][(j - beg) % PS][2 * r + 1][lane];
            }
            if (j + 1 < end) meta_at(ch + 4, nma, nmb);
        } else if (j + 1 < end) {
#pragma unroll
            for (int r = 0; r < R; ++r)
                mma_load<Z>(qa[r], qb[r], ra[r], rb[r], chunks, G, gshift, ch + 4, na[r], nb[r], nma[r], nmb[r]);
        }
        half2 zla[R], zha[R], zlb[R], zhb[R], s2a[R], s2b[R];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            float sa, sb;
            row_consts<1, Z>(ma[r], 0, zla[r], zha[r], sa);
            row_consts<1, Z>(mb[r], 0, zlb[r], zhb[r], sb);
            s2a[r] = __float2half2_rn(sa), s2b[r] = __float2half2_rn(sb);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {  // word i of the chunk: 2 mma steps per tile and token tile
            unsigned a[R][2][4];
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const unsigned xa[4] = {wa[r].x, wa[r].y, wa[r].z, wa[r].w};
                const unsigned xb[4] = {wb[r].x, wb[r].y, wb[r].z, wb[r].w};
                half2 da[4], db[4];
                dequant8(xa[i], zla[r], zha[r], da);
                dequant8(xb[i], zlb[r], zhb[r], db);
#pragma unroll
                for (int s = 0; s < 2; ++s) {
                    a[r][s][0] = as_u(__hmul2(da[2 * s], s2a[r]));
                    a[r][s][1] = as_u(__hmul2(db[2 * s], s2b[r]));
                    a[r][s][2] = as_u(__hmul2(da[2 * s + 1], s2a[r]));
                    a[r][s][3] = as_u(__hmul2(db[2 * s + 1], s2b[r]));
                }
            }
#pragma unroll
            for (int t = 0; t < T; ++t) {
                const int tok = 8 * t + g;
                const uint4 xv = tok < M && ch < chunks ? __ldca(x + ((size_t)tok * chunks + ch) * 4 + i)
                                                        : make_uint4(0, 0, 0, 0);
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    mma16816(acc[r][t], a[r][0], xv.x, xv.y);
                    mma16816(acc[r][t], a[r][1], xv.z, xv.w);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (P == 0) wa[r] = na[r], wb[r] = nb[r];
            ma[r] = nma[r], mb[r] = nmb[r];
        }
    }
#pragma unroll
    for (int w = 0; w < S; ++w) {  // warp w adds its sums to those of warps 0 .. w - 1
        if (warp == w) {
#pragma unroll
            for (int r = 0; r < R; ++r)
#pragma unroll
                for (int t = 0; t < T; ++t) {
                    float4 v = make_float4(acc[r][t][0], acc[r][t][1], acc[r][t][2], acc[r][t][3]);
                    if (w > 0) {
                        const float4 p = part[r][t][lane];
                        v = make_float4(p.x + v.x, p.y + v.y, p.z + v.z, p.w + v.w);
                    }
                    part[r][t][lane] = v;
                }
        }
        __syncthreads();
    }
    const float *sums = reinterpret_cast<const float *>(part);
    // (r, t, lane, e): tile r's row g + 8 (e / 2), token 2c + e % 2
    for (int idx = threadIdx.x; idx < R * T * 128; idx += 32 * S) {
        const int r = idx / (T * 128), t = (idx >> 7) % T, l = (idx >> 2) & 31, e = idx & 3;
        const int tok = 8 * t + 2 * (l & 3) + (e & 1);
        if (tok >= M) continue;
        const int n = n0 + 16 * r + (l >> 2) + 8 * (e >> 1);
        const int col = split ? ((n & 1) ? split + (n >> 1) : (n >> 1)) : n;
        y[(size_t)tok * N + col] = __float2half_rn(sums[idx]);
    }
}
