// AVX-512 chunk kernels. Compiled for AVX-512 by a target pragma (no special compiler
// flags), used only when the CPU reports AVX-512 F/BW/DQ/VL/CD at run time. This file
// includes no torch header on purpose: torch's inline functions must not be emitted here
// with AVX-512 instructions (the linker could pick them for the portable code).
#include <immintrin.h>

#include <cstdint>

#include "eager_cpu.h"

// GCC only (the target pragma); other compilers build the portable kernels alone.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define EAGER_HAVE_AVX512 1
#endif

#ifdef EAGER_HAVE_AVX512
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512cd,fma,bmi,bmi2,popcnt")

namespace eager_cpu {
namespace {

#define EK_INLINE inline __attribute__((always_inline))

constexpr float kInf = __builtin_inff();

// ---- loads: 16 elements as float32; masked-off lanes read as -inf ----------------------

EK_INLINE __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
EK_INLINE __m512 load16_tail(const float* p, __mmask16 m) {
  return _mm512_mask_loadu_ps(_mm512_set1_ps(-kInf), m, p);
}
EK_INLINE __m512 bf16_to_f32(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
EK_INLINE __m512 load16(const uint16_t* p, ElemKind kind) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return kind == kBF16 ? bf16_to_f32(h) : _mm512_cvtph_ps(h);
}
EK_INLINE __m512 load16_tail(const uint16_t* p, __mmask16 m, ElemKind kind) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  const __m512 x = kind == kBF16 ? bf16_to_f32(h) : _mm512_cvtph_ps(h);
  return _mm512_mask_blend_ps(m, _mm512_set1_ps(-kInf), x);
}

template <int Kind>
struct Loader;
template <>
struct Loader<kF32> {
  using T = float;
  static EK_INLINE __m512 full(const T* p) { return load16(p); }
  static EK_INLINE __m512 tail(const T* p, __mmask16 m) { return load16_tail(p, m); }
};
template <>
struct Loader<kBF16> {
  using T = uint16_t;
  static EK_INLINE __m512 full(const T* p) { return load16(p, kBF16); }
  static EK_INLINE __m512 tail(const T* p, __mmask16 m) { return load16_tail(p, m, kBF16); }
};
template <>
struct Loader<kF16> {
  using T = uint16_t;
  static EK_INLINE __m512 full(const T* p) { return load16(p, kF16); }
  static EK_INLINE __m512 tail(const T* p, __mmask16 m) { return load16_tail(p, m, kF16); }
};

// ---- math -------------------------------------------------------------------------------

// exp(d) for d in [-87, 0] as 2^n 2^f: n = round(d log2 e), f = d log2 e - n from two
// FMAs with log2 e split in two (so f carries no rounding of the product), 2^f by a
// degree-6 polynomial on [-1/2, 1/2], scaled with scalef. About 1-2 ulp.
EK_INLINE __m512 exp_nonpos(__m512 d) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(d, _mm512_set1_ps(kLog2E)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_fmsub_ps(d, _mm512_set1_ps(kLog2EHi), n);
  f = _mm512_fmadd_ps(d, _mm512_set1_ps(kLog2ELo), f);
  __m512 p = _mm512_set1_ps(kExp2Poly[0]);
  for (int i = 1; i < 7; ++i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2Poly[i]));
  return _mm512_scalef_ps(p, n);
}

// log(x) for positive normal x (Cephes logf, kLogPoly in eager_cpu.h): mantissa in
// (sqrt(1/2), sqrt(2)]; about 1 ulp, and accurate relative to the result near x = 1.
EK_INLINE __m512 log_pos(__m512 x) {
  const __m512i xi = _mm512_castps_si512(x);
  __m512i e = _mm512_sub_epi32(_mm512_srli_epi32(xi, 23), _mm512_set1_epi32(127));
  __m512 m = _mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(xi, _mm512_set1_epi32(0x7FFFFF)),
                                                 _mm512_set1_epi32(0x3F800000)));
  const __mmask16 big = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356237f), _CMP_GT_OQ);
  m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
  e = _mm512_mask_add_epi32(e, big, e, _mm512_set1_epi32(1));
  const __m512 f = _mm512_sub_ps(m, _mm512_set1_ps(1.0f));
  const __m512 fe = _mm512_cvtepi32_ps(e);
  const __m512 z = _mm512_mul_ps(f, f);
  __m512 p = _mm512_set1_ps(kLogPoly[0]);
  for (int i = 1; i < 9; ++i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kLogPoly[i]));
  __m512 y = _mm512_mul_ps(_mm512_mul_ps(p, f), z);
  y = _mm512_fmadd_ps(fe, _mm512_set1_ps(kLn2Lo), y);
  y = _mm512_fnmadd_ps(_mm512_set1_ps(0.5f), z, y);
  __m512 r = _mm512_add_ps(f, y);
  return _mm512_fmadd_ps(fe, _mm512_set1_ps(kLn2Hi), r);
}

// ---- Philox for 16 consecutive counters (64 columns) ------------------------------------

EK_INLINE void mul_hi_lo(__m512i a, __m512i b, __m512i& hi, __m512i& lo) {
  const __m512i pe = _mm512_mul_epu32(a, b);
  const __m512i po = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), b);
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pe, 32), po);
  lo = _mm512_mask_blend_epi32(0xAAAA, pe, _mm512_slli_epi64(po, 32));
}

struct PhiloxKeys {
  __m512i k0[10], k1[10];
};

EK_INLINE void make_keys(PhiloxKeys& keys, uint32_t key0, uint32_t key1) {
  for (int r = 0; r < 10; ++r) {
    keys.k0[r] = _mm512_set1_epi32(static_cast<int>(key0));
    keys.k1[r] = _mm512_set1_epi32(static_cast<int>(key1));
    key0 += kPhiloxKeyA;
    key1 += kPhiloxKeyB;
  }
}

// Lane-major words (c[l][j] = lane l of counter j, 16 consecutive counters) to column
// order (out[k] = columns 16 k .. 16 k + 15 of the 64): a 4x4 transpose inside each
// 128-bit block, then a 4x4 transpose of the blocks.
EK_INLINE void lanes_to_columns(const __m512i c[4], __m512i out[4]) {
  const __m512i ab_lo = _mm512_unpacklo_epi32(c[0], c[1]), ab_hi = _mm512_unpackhi_epi32(c[0], c[1]);
  const __m512i cd_lo = _mm512_unpacklo_epi32(c[2], c[3]), cd_hi = _mm512_unpackhi_epi32(c[2], c[3]);
  const __m512i t0 = _mm512_unpacklo_epi64(ab_lo, cd_lo), t1 = _mm512_unpackhi_epi64(ab_lo, cd_lo);
  const __m512i t2 = _mm512_unpacklo_epi64(ab_hi, cd_hi), t3 = _mm512_unpackhi_epi64(ab_hi, cd_hi);
  const __m512i u01 = _mm512_shuffle_i32x4(t0, t1, _MM_SHUFFLE(1, 0, 1, 0));
  const __m512i u23 = _mm512_shuffle_i32x4(t2, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m512i v01 = _mm512_shuffle_i32x4(t0, t1, _MM_SHUFFLE(3, 2, 3, 2));
  const __m512i v23 = _mm512_shuffle_i32x4(t2, t3, _MM_SHUFFLE(3, 2, 3, 2));
  out[0] = _mm512_shuffle_i32x4(u01, u23, _MM_SHUFFLE(2, 0, 2, 0));
  out[1] = _mm512_shuffle_i32x4(u01, u23, _MM_SHUFFLE(3, 1, 3, 1));
  out[2] = _mm512_shuffle_i32x4(v01, v23, _MM_SHUFFLE(2, 0, 2, 0));
  out[3] = _mm512_shuffle_i32x4(v01, v23, _MM_SHUFFLE(3, 1, 3, 1));
}

// uint32 words -> folded 31-bit integers (tl.uint_to_uniform_float's first step).
EK_INLINE __m512i fold(__m512i r) { return _mm512_xor_si512(r, _mm512_srai_epi32(r, 31)); }
EK_INLINE __m512 folded_to_uniform(__m512i folded) {
  const __m512 scale = _mm512_set1_ps(kUniformScale);
  return _mm512_max_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(folded), scale), scale);
}

// Two Philox streams of 16 counters each, rounds interleaved (the rounds are a long
// dependency chain: two chains keep the multipliers busy).
EK_INLINE void philox16x2(__m512i ca, __m512i cb, uint32_t row, uint32_t ctr2, uint32_t ctr3,
                          const PhiloxKeys& keys, __m512i oa[4], __m512i ob[4]) {
  __m512i a0 = ca, b0 = cb;
  __m512i a1 = _mm512_set1_epi32(static_cast<int>(row)), b1 = a1;
  __m512i a2 = _mm512_set1_epi32(static_cast<int>(ctr2)), b2 = a2;
  __m512i a3 = _mm512_set1_epi32(static_cast<int>(ctr3)), b3 = a3;
  const __m512i ra = _mm512_set1_epi32(static_cast<int>(kPhiloxRoundA));
  const __m512i rb = _mm512_set1_epi32(static_cast<int>(kPhiloxRoundB));
  for (int r = 0; r < 10; ++r) {
    __m512i hb, lb, ha, la, hb2, lb2, ha2, la2;
    mul_hi_lo(a2, rb, hb, lb);
    mul_hi_lo(b2, rb, hb2, lb2);
    mul_hi_lo(a0, ra, ha, la);
    mul_hi_lo(b0, ra, ha2, la2);
    a0 = _mm512_ternarylogic_epi32(hb, a1, keys.k0[r], 0x96);
    b0 = _mm512_ternarylogic_epi32(hb2, b1, keys.k0[r], 0x96);
    a2 = _mm512_ternarylogic_epi32(ha, a3, keys.k1[r], 0x96);
    b2 = _mm512_ternarylogic_epi32(ha2, b3, keys.k1[r], 0x96);
    a1 = lb;
    b1 = lb2;
    a3 = la;
    b3 = la2;
  }
  oa[0] = a0; oa[1] = a1; oa[2] = a2; oa[3] = a3;
  ob[0] = b0; ob[1] = b1; ob[2] = b2; ob[3] = b3;
}

// Scores of up to 32 queued quads (counters quad[0..32), logits xq[4 j + lane]); lanes
// `live_a` of the first 16 and `live_b` of the next 16 are real. Updates (best, best_id)
// with ties to the smaller column (the queue is not in column order within a block).
EK_INLINE void gumbel_quads(const int32_t* quad, const float* xq, __mmask16 live_a, __mmask16 live_b,
                            const ChunkParams& P, const PhiloxKeys& keys, __m512 gtab_lo, __m512 gtab_hi,
                            __m512 vtemp, float& best, int64_t& best_id) {
  const __m512i qa = _mm512_maskz_loadu_epi32(live_a, quad);
  const __m512i qb = _mm512_maskz_loadu_epi32(live_b, quad + 16);
  __m512i wa[4], wb[4];
  philox16x2(qa, qb, P.row_index, P.ctr2, P.ctr3, keys, wa, wb);
  const __m512i iota4 = _mm512_slli_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 2);
  const __m512 vninf = _mm512_set1_ps(-kInf);
  for (int half = 0; half < 2; ++half) {
    const __mmask16 live = half ? live_b : live_a;
    if (!live) continue;
    const __m512i q = half ? qb : qa;
    const __m512i* words = half ? wb : wa;
    const float* xs = xq + 64 * half;
    // The queue holds each quad's 4 logits together; transpose 16 quads x 4 lanes into
    // 4 lane vectors (x of quad j, lane l at position j).
    const __m512 p0 = _mm512_loadu_ps(xs), p1 = _mm512_loadu_ps(xs + 16);
    const __m512 p2 = _mm512_loadu_ps(xs + 32), p3 = _mm512_loadu_ps(xs + 48);
    for (int l = 0; l < 4; ++l) {
      const __m512i pick = _mm512_add_epi32(iota4, _mm512_set1_epi32(l));  // 4 j + l, mod 32 below
      const __m512 lo = _mm512_permutex2var_ps(p0, pick, p1);            // j = 0..7
      const __m512 hi = _mm512_permutex2var_ps(p2, pick, p3);            // j = 8..15
      const __m512 x = _mm512_mask_blend_ps(live, vninf, _mm512_mask_blend_ps(0xFF00, lo, hi));
      const __m512i folded = fold(words[l]);
      const __m512i lz = _mm512_lzcnt_epi32(_mm512_sub_epi32(_mm512_set1_epi32(0x7FFFFFFF), folded));
      const __m512 gb = _mm512_permutex2var_ps(gtab_lo, lz, gtab_hi);
      const __m512 ub = _mm512_add_ps(x, _mm512_mul_ps(vtemp, gb));
      // >=: an equal score at a smaller column must still be seen.
      if (!_mm512_cmp_ps_mask(ub, _mm512_set1_ps(best), _CMP_GE_OQ)) continue;
      const __m512 u = folded_to_uniform(folded);
      const __m512 log_e = log_pos(_mm512_sub_ps(_mm512_setzero_ps(), log_pos(u)));
      const __m512 score = _mm512_sub_ps(x, _mm512_mul_ps(vtemp, log_e));
      const float smax = _mm512_reduce_max_ps(score);
      if (smax >= best && smax > -kInf) {
        const __mmask16 eq = _mm512_cmp_ps_mask(score, _mm512_set1_ps(smax), _CMP_EQ_OQ);
        const __m512i col = _mm512_add_epi32(_mm512_slli_epi32(q, 2), _mm512_set1_epi32(l));
        const int64_t c = _mm512_mask_reduce_min_epi32(eq, col);
        if (smax > best || c < best_id) {
          best = smax;
          best_id = c;
        }
      }
    }
  }
}

// Left-packing tables for a 4-bit set of quads: the set quads' offsets, the lane
// permutation moving their 16 logits to the front, and the count. Constant-initialised
// (no start-up code runs in this AVX-512 translation unit).
struct PackLut {
  alignas(16) int32_t quad[16][4];
  alignas(64) int32_t lane[16][16];
  int count[16];
};
constexpr PackLut make_pack_lut() {
  PackLut t{};
  for (int m = 0; m < 16; ++m) {
    int n = 0;
    for (int i = 0; i < 4; ++i) {
      if (m & (1 << i)) {
        t.quad[m][n] = i;
        for (int l = 0; l < 4; ++l) t.lane[m][4 * n + l] = 4 * i + l;
        ++n;
      }
    }
    t.count[m] = n;
  }
  return t;
}
constexpr PackLut kPackLut = make_pack_lut();

// ---- the chunk kernel ---------------------------------------------------------------------

// Seeds the Gumbel arg-max with the score of the chunk's largest logit (its first column),
// from a max-only pass over the chunk, as seed_best of kernels_avx2.cpp: exact (a score some
// column has, computed as the main pass computes it), and the main pass then queues far
// fewer quads (most of them came from the early blocks, where the best was still low).
template <int Kind>
void seed_best(const ChunkParams& P, const PhiloxKeys& keys, __m512 gtab_lo, __m512 gtab_hi, __m512 vtemp,
               float& best, int64_t& best_id) {
  using T = typename Loader<Kind>::T;
  const T* row = static_cast<const T*>(P.row);
  float xmax = -kInf;
  int64_t xblock = P.begin;
  for (int64_t b0 = P.begin; b0 < P.end; b0 += kBlock) {
    const int64_t n = P.end - b0 < kBlock ? P.end - b0 : kBlock;
    __m512 m2[2] = {_mm512_set1_ps(-kInf), _mm512_set1_ps(-kInf)};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
      for (int k = 0; k < 2; ++k) m2[k] = _mm512_max_ps(m2[k], Loader<Kind>::full(row + b0 + i + 16 * k));
    for (; i < n; i += 16) {
      const __mmask16 mk = static_cast<__mmask16>(n - i >= 16 ? 0xFFFFu : (1u << (n - i)) - 1u);
      m2[0] = _mm512_mask_max_ps(m2[0], mk, m2[0], Loader<Kind>::tail(row + b0 + i, mk));
    }
    const float bmax = _mm512_reduce_max_ps(_mm512_max_ps(m2[0], m2[1]));
    if (bmax > xmax) {
      xmax = bmax;
      xblock = b0;
    }
  }
  // No finite logit, or a NaN that came out as the max: no seed (the main pass reports NaN
  // and +inf). max_ps drops a NaN met later, so xmax otherwise is a value of the chunk.
  if (!(xmax > -kInf)) return;
  int64_t col = xblock;
  while (col + 1 < P.end && !(_mm512_cvtss_f32(Loader<Kind>::tail(row + col, 1)) == xmax)) ++col;
  const int64_t first = col & ~int64_t{3};
  alignas(64) int32_t quad[32] = {};
  alignas(64) float xq[4 * 32];
  for (int l = 0; l < 4; ++l)
    xq[l] = first + l < P.end ? _mm512_cvtss_f32(Loader<Kind>::tail(row + first + l, 1)) : -kInf;
  quad[0] = static_cast<int32_t>(first >> 2);
  gumbel_quads(quad, xq, 1, 0, P, keys, gtab_lo, gtab_hi, vtemp, best, best_id);
}

// SUMS: 0 = no sums, 1 = s only, 2 = s and t.
template <int Kind, int SUMS>
void chunk_kernel(const ChunkParams& P, ChunkResult& R) {
  using T = typename Loader<Kind>::T;
  const T* row = static_cast<const T*>(P.row);
  const __m512 vinf = _mm512_set1_ps(kInf);
  const __m512 vninf = _mm512_set1_ps(-kInf);
  alignas(64) float xb[kBlock];

  float m = -kInf;
  double sum_s = 0.0, sum_t = 0.0;
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, t0 = s0, t1 = s0;
  int pending_blocks = 0;
  auto flush_sums = [&]() {
    sum_s += _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
    sum_t += _mm512_reduce_add_ps(_mm512_add_ps(t0, t1));
    s0 = s1 = t0 = t1 = _mm512_setzero_ps();
    pending_blocks = 0;
  };
  int n_top = 0;
  const int kp = P.kp;
  float thr = kp > 0 ? -kInf : kInf;  // the kp-th best value once the list is full
  float best = -kInf;
  int64_t best_id = -1;
  bool bad = false;

  // Sampling queue: quads (global counter) still to evaluate and their 4 logits.
  alignas(64) int32_t queue_quad[kBlock / 4 + 32 + 4];
  alignas(64) float queue_x[4 * (kBlock / 4 + 32) + 16];
  int queued = 0;
  PhiloxKeys keys;
  __m512 gtab_lo = vinf, gtab_hi = vinf, vtemp = _mm512_setzero_ps();
  if (P.sample) {
    make_keys(keys, P.key0, P.key1);
    gtab_lo = _mm512_loadu_ps(P.gumbel_bound);
    gtab_hi = _mm512_loadu_ps(P.gumbel_bound + 16);
    vtemp = _mm512_set1_ps(P.temperature);
    seed_best<Kind>(P, keys, gtab_lo, gtab_hi, vtemp, best, best_id);
  }

  for (int64_t b0 = P.begin; b0 < P.end; b0 += kBlock) {
    const int n = static_cast<int>(P.end - b0 < kBlock ? P.end - b0 : kBlock);
    const int nv = (n + 15) >> 4;
    const T* src = row + b0;
    // Sub-pass 1 (the only read of memory): convert to float32 into L1, max, NaN/+inf.
    __m512 vmax = vninf;
    __mmask16 badm = 0;
    const int nfull = n >> 4;
    for (int v = 0; v < nfull; ++v) {
      const __m512 x = Loader<Kind>::full(src + 16 * v);
      _mm512_store_ps(xb + 16 * v, x);
      vmax = _mm512_max_ps(vmax, x);
      badm |= _mm512_cmp_ps_mask(x, vinf, _CMP_NLT_UQ);
    }
    if (nfull < nv) {
      const __mmask16 tm = static_cast<__mmask16>((1u << (n & 15)) - 1u);
      const __m512 x = Loader<Kind>::tail(src + 16 * nfull, tm);
      _mm512_store_ps(xb + 16 * nfull, x);
      vmax = _mm512_max_ps(vmax, x);
      badm |= _mm512_cmp_ps_mask(x, vinf, _CMP_NLT_UQ);
    }
    if (badm) {
      bad = true;
      break;
    }
    const float bmax = _mm512_reduce_max_ps(vmax);
    if (bmax == -kInf) continue;  // an all -inf block adds nothing

    // Sub-pass 2: sum exp(x - m) and exp(x - m) (x - m) against the running max. float32
    // vector partial sums, moved into double running sums every 16 blocks and whenever
    // the max changes (accurate for any V, and few horizontal reductions).
    if (bmax > m) {
      if (SUMS && m != -kInf) {
        flush_sums();
        const double delta = static_cast<double>(m) - static_cast<double>(bmax);
        const double sc = __builtin_exp(delta);
        sum_t = sc * (sum_t + delta * sum_s);
        sum_s = sc * sum_s;
      }
      m = bmax;
    }
    if (SUMS) {
      const __m512 vm = _mm512_set1_ps(m);
      const __m512 lo = _mm512_set1_ps(-87.0f);
      int v = 0;
      for (; v + 1 < nv; v += 2) {
        const __m512 d0 = _mm512_max_ps(_mm512_sub_ps(_mm512_load_ps(xb + 16 * v), vm), lo);
        const __m512 d1 = _mm512_max_ps(_mm512_sub_ps(_mm512_load_ps(xb + 16 * v + 16), vm), lo);
        const __m512 e0 = exp_nonpos(d0), e1 = exp_nonpos(d1);
        s0 = _mm512_add_ps(s0, e0);
        s1 = _mm512_add_ps(s1, e1);
        if (SUMS == 2) {
          t0 = _mm512_fmadd_ps(e0, d0, t0);
          t1 = _mm512_fmadd_ps(e1, d1, t1);
        }
      }
      if (v < nv) {
        const __m512 d0 = _mm512_max_ps(_mm512_sub_ps(_mm512_load_ps(xb + 16 * v), vm), lo);
        const __m512 e0 = exp_nonpos(d0);
        s0 = _mm512_add_ps(s0, e0);
        if (SUMS == 2) t0 = _mm512_fmadd_ps(e0, d0, t0);
      }
      if (++pending_blocks == 16) flush_sums();
    }

    // Running top-kp: only elements above the current kp-th best need attention.
    if (bmax > thr) {
      for (int v = 0; v < nv; ++v) {
        uint32_t mask = _mm512_cmp_ps_mask(_mm512_load_ps(xb + 16 * v), _mm512_set1_ps(thr), _CMP_GT_OQ);
        while (mask) {
          const int lane = __builtin_ctz(mask);
          mask &= mask - 1;
          const float x = xb[16 * v + lane];
          if (x > thr) {
            n_top = top_insert(R.top_val, R.top_id, n_top, kp, x, b0 + 16 * v + lane);
            if (n_top == kp) thr = R.top_val[kp - 1];
          }
        }
      }
    }

    // Gumbel arg-max: score = x - T * log(-log u), u from the column's Philox word.
    // Exact shortcuts (the noise is bounded by G, see ops.cpp): a block whose max + T G
    // cannot beat the best score needs nothing; otherwise only the quads (4 columns = one
    // Philox call) holding a column with x + T G > best are queued, and the queue is
    // evaluated 32 quads at a time (two interleaved Philox streams of 16 counters).
    if (P.sample && bmax + P.noise_bound > best) {
      const __m512 vbound = _mm512_set1_ps(P.noise_bound);
      const __m512 vbest0 = _mm512_set1_ps(best);
      const int32_t quad0 = static_cast<int32_t>(b0 >> 2);
      for (int v = 0; v < nv; ++v) {
        const uint32_t m16 = _mm512_cmp_ps_mask(_mm512_add_ps(_mm512_load_ps(xb + 16 * v), vbound), vbest0,
                                                _CMP_GT_OQ);
        // Branch-free (the candidate test is unpredictable): append the vector's candidate
        // quads (ids and their 4 logits, left-packed through a lookup table).
        uint32_t t = m16 | (m16 >> 1);
        t |= t >> 2;
        const uint32_t q4 = _pext_u32(t, 0x1111u);  // quad 4v + i holds a candidate
        const __m128i ids = _mm_add_epi32(_mm_set1_epi32(quad0 + 4 * v),
                                          _mm_load_si128(reinterpret_cast<const __m128i*>(kPackLut.quad[q4])));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(queue_quad + queued), ids);
        const __m512i perm = _mm512_load_si512(kPackLut.lane[q4]);
        _mm512_storeu_ps(queue_x + 4 * queued, _mm512_permutexvar_ps(perm, _mm512_load_ps(xb + 16 * v)));
        queued += kPackLut.count[q4];
      }
      if (queued >= 32) {
        int done = 0;
        for (; queued - done >= 32; done += 32) {
          gumbel_quads(queue_quad + done, queue_x + 4 * done, 0xFFFF, 0xFFFF, P, keys, gtab_lo, gtab_hi, vtemp,
                       best, best_id);
        }
        for (int j = done; j < queued; ++j) {
          queue_quad[j - done] = queue_quad[j];
          _mm_store_ps(queue_x + 4 * (j - done), _mm_load_ps(queue_x + 4 * j));
        }
        queued -= done;
      }
    }
  }
  if (P.sample && !bad && queued > 0) {
    const __mmask16 a = static_cast<__mmask16>(queued >= 16 ? 0xFFFFu : (1u << queued) - 1u);
    const __mmask16 b = static_cast<__mmask16>(queued >= 32 ? 0xFFFFu : queued > 16 ? (1u << (queued - 16)) - 1u : 0u);
    gumbel_quads(queue_quad, queue_x, a, b, P, keys, gtab_lo, gtab_hi, vtemp, best, best_id);
  }

  if (SUMS) flush_sums();
  R.bad = bad;
  R.m = m;
  R.s = sum_s;
  R.t = sum_t;
  R.n_top = n_top;
  R.best_score = best;
  R.best_id = best_id;
}

}  // namespace

ChunkFn avx512_chunk_fn(int elem_kind, int sums) {
#define EK_PICK(K) \
  (sums == 2 ? &chunk_kernel<K, 2> : sums == 1 ? &chunk_kernel<K, 1> : &chunk_kernel<K, 0>)
  switch (elem_kind) {
    case kF32: return EK_PICK(kF32);
    case kBF16: return EK_PICK(kBF16);
    case kF16: return EK_PICK(kF16);
    default: return nullptr;
  }
#undef EK_PICK
}

void avx512_uniforms(uint32_t row, int64_t cols, uint32_t key0, uint32_t key1, uint32_t ctr2,
                     uint32_t ctr3, float* out) {
  // The kernels' own Philox (philox16x2) and conversion, put back in column order.
  PhiloxKeys keys;
  make_keys(keys, key0, key1);
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t c = 0; c < cols; c += 128) {
    const __m512i q = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(c >> 2)), iota);
    __m512i wa[4], wb[4], cols_a[4], cols_b[4];
    philox16x2(q, _mm512_add_epi32(q, _mm512_set1_epi32(16)), row, ctr2, ctr3, keys, wa, wb);
    lanes_to_columns(wa, cols_a);
    lanes_to_columns(wb, cols_b);
    for (int j = 0; j < 8; ++j) {
      alignas(64) float u[16];
      _mm512_store_ps(u, folded_to_uniform(fold(j < 4 ? cols_a[j] : cols_b[j - 4])));
      for (int l = 0; l < 16 && c + 16 * j + l < cols; ++l) out[c + 16 * j + l] = u[l];
    }
  }
}

}  // namespace eager_cpu

#pragma GCC pop_options

namespace eager_cpu {
bool avx512_cpu_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("bmi2");
}
}  // namespace eager_cpu

#else  // no AVX-512 code on this compiler / architecture

namespace eager_cpu {
ChunkFn avx512_chunk_fn(int, int) { return nullptr; }
bool avx512_cpu_supported() { return false; }
void avx512_uniforms(uint32_t, int64_t, uint32_t, uint32_t, uint32_t, uint32_t, float*) {}
}  // namespace eager_cpu

#endif
