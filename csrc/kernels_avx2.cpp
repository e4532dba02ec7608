// AVX2 chunk kernels: the algorithm of kernels_avx512.cpp on 8-lane AVX2 + FMA + F16C
// registers. Compiled by a target pragma (no special compiler flags), chosen at run time on
// CPUs with AVX2, FMA and F16C but no AVX-512 (ops.cpp), or forced with _C.set_isa("avx2").
// Like the AVX-512 file it includes no torch header (torch's inline functions must not be
// emitted with AVX2 instructions here).
//
// Per block of kBlock columns: (1) load and convert to float32 into L1, max, NaN / +inf
// check; (2) the exp sums against the running max; (3) the top-kp filter, visiting only the
// lanes above the kp-th best (a movemask per 8 lanes); (4) the Gumbel candidates: quads
// (4 columns = one Philox call) with a column whose x + T G can beat the best are queued
// with their logits, and the queue is scored 16 quads at a time, all in registers: Philox
// on 2 x 8 counters, the per-column bound test (lzcnt bucket of the folded word, by the
// float exponent, and a 32-entry table lookup by permutes), and the two logs of the score
// only for the 8 columns of a lane vector where one passes. The exp and log polynomials
// are the AVX-512 ones (eager_cpu.h), so both tiers give the same scores.
#include "eager_cpu.h"

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(_M_X64))
#define EAGER_HAVE_AVX2 1
#endif

#ifdef EAGER_HAVE_AVX2
#include <immintrin.h>

#include <cstring>

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,popcnt")

namespace eager_cpu {
namespace {

#define EK_INLINE inline __attribute__((always_inline))

constexpr float kInf = __builtin_inff();

// ---- loads: 8 elements as float32 --------------------------------------------------------

template <int Kind>
EK_INLINE __m256 load8(const void* row, int64_t i) {
  if (Kind == kF32) return _mm256_loadu_ps(static_cast<const float*>(row) + i);
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + i));
  if (Kind == kBF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  return _mm256_cvtph_ps(h);
}

template <int Kind>
EK_INLINE float load1(const void* row, int64_t i) {
  if (Kind == kF32) return static_cast<const float*>(row)[i];
  const uint16_t h = static_cast<const uint16_t*>(row)[i];
  if (Kind == kBF16) {
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
  return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

EK_INLINE float hmax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

EK_INLINE float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// ---- math (the AVX-512 kernels' operations, 8 lanes) --------------------------------------

// exp(d) for d in [-87, 0]: 2^n 2^f, n = round(d log2 e), f from two FMAs with log2 e split
// in two, 2^f by kExp2Poly; the scale 2^n built in the exponent bits (n >= -126 here).
EK_INLINE __m256 exp_nonpos(__m256 d) {
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(d, _mm256_set1_ps(kLog2E)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 f = _mm256_fmsub_ps(d, _mm256_set1_ps(kLog2EHi), n);
  f = _mm256_fmadd_ps(d, _mm256_set1_ps(kLog2ELo), f);
  __m256 p = _mm256_set1_ps(kExp2Poly[0]);
  for (int i = 1; i < 7; ++i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2Poly[i]));
  const __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
}

// log(x) for positive normal x (kLogPoly, eager_cpu.h), the same operations as log_pos of
// kernels_avx512.cpp.
EK_INLINE __m256 log_pos(__m256 x) {
  const __m256i xi = _mm256_castps_si256(x);
  __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(xi, 23), _mm256_set1_epi32(127));
  __m256 m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(xi, _mm256_set1_epi32(0x7FFFFF)),
                                                 _mm256_set1_epi32(0x3F800000)));
  const __m256 big = _mm256_cmp_ps(m, _mm256_set1_ps(1.41421356237f), _CMP_GT_OQ);
  m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), big);
  e = _mm256_sub_epi32(e, _mm256_castps_si256(big));  // big lanes are -1: e + 1
  const __m256 f = _mm256_sub_ps(m, _mm256_set1_ps(1.0f));
  const __m256 fe = _mm256_cvtepi32_ps(e);
  const __m256 z = _mm256_mul_ps(f, f);
  __m256 p = _mm256_set1_ps(kLogPoly[0]);
  for (int i = 1; i < 9; ++i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kLogPoly[i]));
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, f), z);
  y = _mm256_fmadd_ps(fe, _mm256_set1_ps(kLn2Lo), y);
  y = _mm256_fnmadd_ps(_mm256_set1_ps(0.5f), z, y);
  const __m256 r = _mm256_add_ps(f, y);
  return _mm256_fmadd_ps(fe, _mm256_set1_ps(kLn2Hi), r);
}

// ---- Philox on 2 x 8 counters -------------------------------------------------------------

struct PhiloxKeys {
  __m256i k0[10], k1[10];
};

EK_INLINE void make_keys(PhiloxKeys& keys, uint32_t key0, uint32_t key1) {
  for (int r = 0; r < 10; ++r) {
    keys.k0[r] = _mm256_set1_epi32(static_cast<int>(key0));
    keys.k1[r] = _mm256_set1_epi32(static_cast<int>(key1));
    key0 += kPhiloxKeyA;
    key1 += kPhiloxKeyB;
  }
}

// High and low 32-bit halves of the 8 products a * m: mul_epu32 multiplies the even lanes,
// the odd lanes are shifted down first; the low halves come from mullo in one instruction
// (about 4% off the sampling step on the AMD EPYC here, against two for the blend).
EK_INLINE void mul_hi_lo(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_mullo_epi32(a, m);
}

// philox4x32_10 (eager_cpu.h) on two sets of 8 counters, the round chains interleaved:
// word 0 of counter i is ca[i] (cb[i]), words 1..3 are shared. oa[l][i] is word l of
// counter i of the first set.
EK_INLINE void philox8x2(__m256i ca, __m256i cb, uint32_t c1, uint32_t c2, uint32_t c3, const PhiloxKeys& keys,
                         __m256i oa[4], __m256i ob[4]) {
  __m256i a0 = ca, b0 = cb;
  __m256i a1 = _mm256_set1_epi32(static_cast<int>(c1)), b1 = a1;
  __m256i a2 = _mm256_set1_epi32(static_cast<int>(c2)), b2 = a2;
  __m256i a3 = _mm256_set1_epi32(static_cast<int>(c3)), b3 = a3;
  const __m256i ma = _mm256_set1_epi32(static_cast<int>(kPhiloxRoundA));
  const __m256i mb = _mm256_set1_epi32(static_cast<int>(kPhiloxRoundB));
  for (int r = 0; r < 10; ++r) {
    __m256i hb, lb, ha, la, hb2, lb2, ha2, la2;
    mul_hi_lo(a2, mb, hb, lb);
    mul_hi_lo(b2, mb, hb2, lb2);
    mul_hi_lo(a0, ma, ha, la);
    mul_hi_lo(b0, ma, ha2, la2);
    a0 = _mm256_xor_si256(_mm256_xor_si256(hb, a1), keys.k0[r]);
    b0 = _mm256_xor_si256(_mm256_xor_si256(hb2, b1), keys.k0[r]);
    a2 = _mm256_xor_si256(_mm256_xor_si256(ha, a3), keys.k1[r]);
    b2 = _mm256_xor_si256(_mm256_xor_si256(ha2, b3), keys.k1[r]);
    a1 = lb;
    b1 = lb2;
    a3 = la;
    b3 = la2;
  }
  oa[0] = a0; oa[1] = a1; oa[2] = a2; oa[3] = a3;
  ob[0] = b0; ob[1] = b1; ob[2] = b2; ob[3] = b3;
}

// uint32 words -> folded 31-bit integers (tl.uint_to_uniform_float's first step).
EK_INLINE __m256i fold(__m256i r) { return _mm256_xor_si256(r, _mm256_srai_epi32(r, 31)); }
EK_INLINE __m256 folded_to_uniform(__m256i folded) {
  const __m256 scale = _mm256_set1_ps(kUniformScale);
  return _mm256_max_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(folded), scale), scale);
}

// The Gumbel bound table (32 entries in 4 registers) and its lookup by the bucket
// lz = lzcnt(2^31 - 1 - folded) (entry lz & 31). AVX2 has no vector lzcnt: the low 8 bits
// of d = 2^31 - 1 - folded are cleared, so the int -> float conversion is exact and its
// exponent field E gives lz = 158 - E; d < 256 (cleared to 0, E = 0) takes entry 0, the
// largest bound of all (lz = 32), an upper bound for lz 24..31 too.
struct BoundTable {
  __m256 t[4];
};

EK_INLINE __m256 gumbel_bound(const BoundTable& tab, __m256i folded) {
  const __m256i d = _mm256_and_si256(_mm256_sub_epi32(_mm256_set1_epi32(0x7FFFFFFF), folded),
                                     _mm256_set1_epi32(~0xFF));
  const __m256i expo = _mm256_srli_epi32(_mm256_castps_si256(_mm256_cvtepi32_ps(d)), 23);
  const __m256i idx = _mm256_min_epi32(_mm256_sub_epi32(_mm256_set1_epi32(158), expo), _mm256_set1_epi32(32));
  // permutevar8x32 uses the index's low 3 bits; bits 3 and 4 (moved to the sign) pick the register.
  const __m256 p0 = _mm256_permutevar8x32_ps(tab.t[0], idx), p1 = _mm256_permutevar8x32_ps(tab.t[1], idx);
  const __m256 p2 = _mm256_permutevar8x32_ps(tab.t[2], idx), p3 = _mm256_permutevar8x32_ps(tab.t[3], idx);
  const __m256 bit3 = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
  const __m256 bit4 = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 27));
  return _mm256_blendv_ps(_mm256_blendv_ps(p0, p1, bit3), _mm256_blendv_ps(p2, p3, bit3), bit4);
}

// Scores of `live` (1..16) queued quads (counters quad[0..16), logits xq[4 j + lane]).
// Updates (best, best_id) with ties to the smaller column (the queue is in column order but
// the lanes of a quad are scored in separate vectors).
EK_INLINE void gumbel_quads(const int32_t* quad, const float* xq, int live, const ChunkParams& P,
                            const PhiloxKeys& keys, const BoundTable& tab, __m256 vtemp, float& best,
                            int64_t& best_id) {
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i qa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(quad));
  const __m256i qb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(quad + 8));
  __m256i wa[4], wb[4];
  philox8x2(qa, qb, P.row_index, P.ctr2, P.ctr3, keys, wa, wb);
  const __m256 vninf = _mm256_set1_ps(-kInf);
  for (int half = 0; half < 2; ++half) {
    const int n_live = live - 8 * half;
    if (n_live <= 0) break;
    const __m256 live_mask = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n_live), iota));
    const __m256i q = half ? qb : qa;
    const __m256i* words = half ? wb : wa;
    const float* xs = xq + 32 * half;
    // Quads i (low 128 bits) and i + 4 (high): a 4x4 transpose in each half gives the lane
    // vectors (x of quad j, lane l at position j), in the counters' order.
    const __m256 r0 = _mm256_loadu2_m128(xs + 16, xs), r1 = _mm256_loadu2_m128(xs + 20, xs + 4);
    const __m256 r2 = _mm256_loadu2_m128(xs + 24, xs + 8), r3 = _mm256_loadu2_m128(xs + 28, xs + 12);
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 lanes[4] = {_mm256_shuffle_ps(t0, t2, 0x44), _mm256_shuffle_ps(t0, t2, 0xEE),
                             _mm256_shuffle_ps(t1, t3, 0x44), _mm256_shuffle_ps(t1, t3, 0xEE)};
    for (int l = 0; l < 4; ++l) {
      const __m256 x = _mm256_blendv_ps(vninf, lanes[l], live_mask);
      const __m256i folded = fold(words[l]);
      const __m256 ub = _mm256_add_ps(x, _mm256_mul_ps(vtemp, gumbel_bound(tab, folded)));
      // >=: an equal score at a smaller column must still be seen.
      if (!_mm256_movemask_ps(_mm256_cmp_ps(ub, _mm256_set1_ps(best), _CMP_GE_OQ))) continue;
      const __m256 u = folded_to_uniform(folded);
      const __m256 log_e = log_pos(_mm256_sub_ps(_mm256_setzero_ps(), log_pos(u)));
      const __m256 score = _mm256_sub_ps(x, _mm256_mul_ps(vtemp, log_e));
      const float smax = hmax8(score);
      if (smax >= best && smax > -kInf) {
        alignas(32) int32_t col[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(col),
                           _mm256_add_epi32(_mm256_slli_epi32(q, 2), _mm256_set1_epi32(l)));
        uint32_t eq = _mm256_movemask_ps(_mm256_cmp_ps(score, _mm256_set1_ps(smax), _CMP_EQ_OQ));
        const int64_t c = col[__builtin_ctz(eq)];  // the queue is in column order: the first is the smallest
        if (smax > best || c < best_id) {
          best = smax;
          best_id = c;
        }
      }
    }
  }
}

// ---- the chunk kernel ---------------------------------------------------------------------

// SUMS: 0 = no sums, 1 = s only, 2 = s and t.
template <int Kind, int SUMS>
void chunk_kernel(const ChunkParams& P, ChunkResult& R) {
  const __m256 vinf = _mm256_set1_ps(kInf);
  const __m256 vninf = _mm256_set1_ps(-kInf);
  alignas(32) float xb[kBlock];

  float m = -kInf;
  double sum_s = 0.0, sum_t = 0.0;
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, t0 = s0, t1 = s0;
  int pending_blocks = 0;
  auto flush_sums = [&]() {
    sum_s += hsum8(_mm256_add_ps(s0, s1));
    sum_t += hsum8(_mm256_add_ps(t0, t1));
    s0 = s1 = t0 = t1 = _mm256_setzero_ps();
    pending_blocks = 0;
  };
  int n_top = 0;
  const int kp = P.kp;
  float thr = kp > 0 ? -kInf : kInf;  // the kp-th best value once the list is full
  float best = -kInf;
  int64_t best_id = -1;
  bool bad = false;

  // Sampling queue: quads (global counter) still to score and their 4 logits. A block adds
  // at most kBlock / 4; at most 15 stay over between blocks; +2 for the unconditional writes.
  constexpr int kQueue = kBlock / 4 + 16 + 2;
  alignas(32) int32_t queue_quad[kQueue];
  alignas(32) float queue_x[4 * kQueue];
  int queued = 0;
  PhiloxKeys keys;
  BoundTable tab;
  __m256 vtemp = _mm256_setzero_ps();
  if (P.sample) {
    make_keys(keys, P.key0, P.key1);
    for (int i = 0; i < 4; ++i) tab.t[i] = _mm256_loadu_ps(P.gumbel_bound + 8 * i);
    vtemp = _mm256_set1_ps(P.temperature);
  }

  for (int64_t b0 = P.begin; b0 < P.end; b0 += kBlock) {
    const int n = static_cast<int>(P.end - b0 < kBlock ? P.end - b0 : kBlock);
    const int nfull = n >> 3, nv = (n + 7) >> 3;
    // Sub-pass 1 (the only read of memory): convert to float32 into L1, max, NaN/+inf.
    __m256 vmax = vninf, vbad = _mm256_setzero_ps();
    for (int v = 0; v < nfull; ++v) {
      const __m256 x = load8<Kind>(P.row, b0 + 8 * v);
      _mm256_store_ps(xb + 8 * v, x);
      vmax = _mm256_max_ps(vmax, x);
      vbad = _mm256_or_ps(vbad, _mm256_cmp_ps(x, vinf, _CMP_NLT_UQ));
    }
    if (nfull < nv) {  // the tail vector: -inf past the end
      for (int i = 8 * nfull; i < 8 * nv; ++i) xb[i] = i < n ? load1<Kind>(P.row, b0 + i) : -kInf;
      const __m256 x = _mm256_load_ps(xb + 8 * nfull);
      vmax = _mm256_max_ps(vmax, x);
      vbad = _mm256_or_ps(vbad, _mm256_cmp_ps(x, vinf, _CMP_NLT_UQ));
    }
    if (_mm256_movemask_ps(vbad)) {
      bad = true;
      break;
    }
    const float bmax = hmax8(vmax);
    if (bmax == -kInf) continue;  // an all -inf block adds nothing

    // Sub-pass 2: sum exp(x - m) and exp(x - m) (x - m) against the running max, in float32
    // vector partial sums moved into double running sums every 16 blocks and whenever the
    // max changes.
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
      const __m256 vm = _mm256_set1_ps(m);
      const __m256 lo = _mm256_set1_ps(-87.0f);
      int v = 0;
      for (; v + 1 < nv; v += 2) {
        const __m256 d0 = _mm256_max_ps(_mm256_sub_ps(_mm256_load_ps(xb + 8 * v), vm), lo);
        const __m256 d1 = _mm256_max_ps(_mm256_sub_ps(_mm256_load_ps(xb + 8 * v + 8), vm), lo);
        const __m256 e0 = exp_nonpos(d0), e1 = exp_nonpos(d1);
        s0 = _mm256_add_ps(s0, e0);
        s1 = _mm256_add_ps(s1, e1);
        if (SUMS == 2) {
          t0 = _mm256_fmadd_ps(e0, d0, t0);
          t1 = _mm256_fmadd_ps(e1, d1, t1);
        }
      }
      if (v < nv) {
        const __m256 d0 = _mm256_max_ps(_mm256_sub_ps(_mm256_load_ps(xb + 8 * v), vm), lo);
        const __m256 e0 = exp_nonpos(d0);
        s0 = _mm256_add_ps(s0, e0);
        if (SUMS == 2) t0 = _mm256_fmadd_ps(e0, d0, t0);
      }
      if (++pending_blocks == 16) flush_sums();
    }

    // Running top-kp: only lanes above the current kp-th best need attention.
    if (bmax > thr) {
      for (int v = 0; v < nv; ++v) {
        uint32_t mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_load_ps(xb + 8 * v), _mm256_set1_ps(thr), _CMP_GT_OQ));
        while (mask) {
          const int lane = __builtin_ctz(mask);
          mask &= mask - 1;
          const float x = xb[8 * v + lane];
          if (x > thr) {
            n_top = top_insert(R.top_val, R.top_id, n_top, kp, x, b0 + 8 * v + lane);
            if (n_top == kp) thr = R.top_val[kp - 1];
          }
        }
      }
    }

    // Gumbel arg-max: score = x - T * log(-log u), u from the column's Philox word. Exact
    // shortcuts (the noise is bounded by G, see ops.cpp): a block whose max + T G cannot beat
    // the best needs nothing; otherwise only the quads holding a column with x + T G > best
    // (best as of the block's start) are queued, and scored 16 at a time.
    if (P.sample && bmax + P.noise_bound > best) {
      const __m256 vbound = _mm256_set1_ps(P.noise_bound);
      const __m256 vbest0 = _mm256_set1_ps(best);
      const int32_t quad0 = static_cast<int32_t>(b0 >> 2);
      for (int v = 0; v < nv; ++v) {
        const __m256 x = _mm256_load_ps(xb + 8 * v);
        const int m8 = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_add_ps(x, vbound), vbest0, _CMP_GT_OQ));
        // Branch-free (the test is unpredictable): write both quads, keep the candidates.
        queue_quad[queued] = quad0 + 2 * v;
        _mm_store_ps(queue_x + 4 * queued, _mm256_castps256_ps128(x));
        queued += (m8 & 0x0F) != 0;
        queue_quad[queued] = quad0 + 2 * v + 1;
        _mm_store_ps(queue_x + 4 * queued, _mm256_extractf128_ps(x, 1));
        queued += (m8 & 0xF0) != 0;
      }
      if (queued >= 16) {
        int done = 0;
        for (; queued - done >= 16; done += 16) {
          gumbel_quads(queue_quad + done, queue_x + 4 * done, 16, P, keys, tab, vtemp, best, best_id);
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
    for (int j = queued; j < 16; ++j) queue_quad[j] = 0;  // dead lanes: any counter, x is masked
    gumbel_quads(queue_quad, queue_x, queued, P, keys, tab, vtemp, best, best_id);
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

ChunkFn avx2_chunk_fn(int elem_kind, int sums) {
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

void avx2_uniforms(uint32_t row, int64_t cols, uint32_t key0, uint32_t key1, uint32_t ctr2, uint32_t ctr3,
                   float* out) {
  // The kernels' own Philox (philox8x2) and conversion, put back in column order.
  PhiloxKeys keys;
  make_keys(keys, key0, key1);
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t c = 0; c < cols; c += 64) {  // 16 counters: 64 columns
    const __m256i q = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(c >> 2)), iota);
    __m256i wa[4], wb[4];
    philox8x2(q, _mm256_add_epi32(q, _mm256_set1_epi32(8)), row, ctr2, ctr3, keys, wa, wb);
    alignas(32) float u[4][16];
    for (int l = 0; l < 4; ++l) {
      _mm256_store_ps(u[l], folded_to_uniform(fold(wa[l])));
      _mm256_store_ps(u[l] + 8, folded_to_uniform(fold(wb[l])));
    }
    for (int i = 0; i < 16; ++i)
      for (int l = 0; l < 4 && c + 4 * i + l < cols; ++l) out[c + 4 * i + l] = u[l][i];
  }
}

}  // namespace eager_cpu

#pragma GCC pop_options

namespace eager_cpu {
bool avx2_cpu_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
}  // namespace eager_cpu

#else  // no AVX2 code on this compiler / architecture

namespace eager_cpu {
ChunkFn avx2_chunk_fn(int, int) { return nullptr; }
bool avx2_cpu_supported() { return false; }
void avx2_uniforms(uint32_t, int64_t, uint32_t, uint32_t, uint32_t, uint32_t, float*) {}
}  // namespace eager_cpu

#endif
