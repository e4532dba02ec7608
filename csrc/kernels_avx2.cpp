// AVX2 chunk kernels: the algorithm of kernels_avx512.cpp on 8-lane AVX2 + FMA + F16C
// registers. Compiled by a target pragma (no special compiler flags), chosen at run time on
// CPUs with AVX2, FMA and F16C but no AVX-512 (ops.cpp), or forced with _C.set_isa("avx2").
// Like the AVX-512 file it includes no torch header (torch's inline functions must not be
// emitted with AVX2 instructions here).
//
// When sampling, a max-only pass over the chunk first seeds the Gumbel best with the score of
// its largest logit, keeping each block's max and testing for NaN / +inf (seed_best). Then
// per block of kBlock columns: (1) load and convert to float32 into L1, max, NaN / +inf check
// (when sampling, full blocks skip the max and the check: float32 is read from the row as it
// is, float16 is only converted); (2) the exp sums against the running max (out of
// line, see block_sums); (3) the top-kp filter, visiting only the lanes above the kp-th best
// (a movemask per 8 lanes);
// (4) the Gumbel candidates: quads (4 columns = one Philox call) with a column whose
// x + T G can beat the best (one compare against a bound below best - T G, scan_floor),
// found 8 quads at a time (compare lanes packed to one 32-bit
// lane per quad) and left-packed into a queue of quad numbers by a table permute (no
// per-quad branch or copy). The queue is scored 16 quads at a time, all in registers: Philox
// on 2 x 8 counters (the first two rounds' shared products computed once), the quads'
// logits read again from the row (in L1 or L2 by then), the per-column bound test (a line
// in the lzcnt bucket of the folded word, found from the float exponent), and the two logs
// of the score only for the 8 columns of a lane vector where one passes.
//
// Full bfloat16 blocks are read in place, never converted into L1: max, min and the NaN /
// +inf test from the bits as int16 (bits_stats), the log-sum-exp sums converting 16
// columns by two unpacks with zero (block_lse_bf16), the top-kp filter and the Gumbel scan
// comparing the bits as int16 against the bfloat16 just below their float bound (top_bf16,
// scan_bf16), and the Gumbel scores transposing the quads' 16-bit values before the
// unpacks (chosen by measurement: docs/cpu_tiers.md#bf16-in-place).
//
// The log polynomial is the AVX-512 one (eager_cpu.h), so both tiers give the same scores
// and draws. The exp of the sums is this tier's own (exp_nonpos, 6 FMA-class operations
// against 10; for the log-sum-exp alone lse_term_acc, which needs no x - m and adds each
// term by an FMA, and no clamp where the block's min allows): sums agree with the AVX-512
// tier's to float32 rounding, not bit for bit.
//
// The structure above (vector enqueue, logits re-read from the row, the bound line, the seed,
// sums kept in registers, two max chains, the log-sum-exp by lse_term_acc) was chosen by
// measurement, one change at a time: docs/cpu_tiers.md#avx2-tier
// (benchmarks/cpu_chunk_driver.cpp times the chunk kernels alone).
#include "eager_cpu.h"

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(_M_X64))
#define EAGER_HAVE_AVX2 1
#endif

#ifdef EAGER_HAVE_AVX2
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

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

// 16 elements as two float32 vectors in column order. bfloat16 from one 256-bit load: the
// qwords reordered [0, 2, 1, 3], so the unpacks with zero give columns 0..7 and 8..15 (4
// operations per 16 against 6 for two load8; measured: docs/cpu_tiers.md#bf16-in-place).
template <int Kind>
EK_INLINE void load16(const void* row, int64_t i, __m256& x0, __m256& x1) {
  if (Kind == kBF16) {
    const __m256i h = _mm256_permute4x64_epi64(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(row) + i)), 0xD8);
    x0 = _mm256_castsi256_ps(_mm256_unpacklo_epi16(_mm256_setzero_si256(), h));
    x1 = _mm256_castsi256_ps(_mm256_unpackhi_epi16(_mm256_setzero_si256(), h));
  } else {
    x0 = load8<Kind>(row, i);
    x1 = load8<Kind>(row, i + 8);
  }
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

EK_INLINE float hmin8(__m256 v) { return -hmax8(_mm256_sub_ps(_mm256_setzero_ps(), v)); }

EK_INLINE float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// Reductions of 16-bit lanes by phminposuw (the unsigned min of 8 words): the signed max
// as the unsigned min of s ^ 0x7FFF, the signed min as that of s ^ 0x8000, the unsigned
// max as that of ~s.
EK_INLINE int hmax_epi16(__m256i v) {
  const __m128i m = _mm_max_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  const __m128i f = _mm_set1_epi16(0x7FFF);
  return static_cast<int16_t>(_mm_cvtsi128_si32(_mm_minpos_epu16(_mm_xor_si128(m, f))) ^ 0x7FFF);
}
EK_INLINE int hmin_epi16(__m256i v) {
  const __m128i m = _mm_min_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  const __m128i f = _mm_set1_epi16(static_cast<int16_t>(0x8000));
  return static_cast<int16_t>(_mm_cvtsi128_si32(_mm_minpos_epu16(_mm_xor_si128(m, f))) ^ 0x8000);
}
EK_INLINE int hmax_epu16(__m256i v) {
  const __m128i m = _mm_max_epu16(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  return (~_mm_cvtsi128_si32(_mm_minpos_epu16(_mm_xor_si128(m, _mm_set1_epi32(-1))))) & 0xFFFF;
}

EK_INLINE float bf16_bits_to_float(int h) {
  const uint32_t bits = static_cast<uint32_t>(h & 0xFFFF) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// The Gumbel candidate test of the scan as one compare, x > tau: a column can beat `best`
// only if fl(x + noise_bound) >= best (its score is at most that, by the monotonicity of
// rounding), which needs x >= best - noise_bound - ulp(best) / 2 >= d - |best| 2^-24 with d
// = best - noise_bound (exact in double). tau = fl(d - margin) is at most d - margin +
// (|best| + noise_bound) 2^-24, below that for margin = (|best| + noise_bound) 2^-22 (plus
// 2^-126 for a best near 0), so the test keeps every column the add-and-compare kept, for
// one operation an 8-lane vector instead of two.
EK_INLINE float scan_floor(float best, float noise_bound) {
  if (!(best > -kInf)) return -kInf;
  const double b = best, nb = noise_bound;
  return static_cast<float>(b - nb - (std::fabs(b) + nb) * 0x1p-22 - 0x1p-126);
}

// The largest bfloat16 <= tau, as its bits: the top half of tau's bits, one step further
// from zero where a negative tau had bits below (truncation rounds toward zero). For a
// bfloat16 x, x > tau <=> x > that value.
EK_INLINE int bf16_floor_bits(float tau) {
  uint32_t b;
  std::memcpy(&b, &tau, sizeof b);
  return static_cast<int>((b >> 16) + ((b >> 31) && (b & 0xFFFFu) ? 1u : 0u));
}

// ---- math -------------------------------------------------------------------------------

// 2^(r/8) for r in [-1/2, 1/2] (highest power first; least squares on Chebyshev nodes) and
// 2^(j/8), j = 0..7.
constexpr float kExp2Cubic[4] = {1.0839374697e-4f, 3.7541261120e-3f, 8.6643401543e-2f, 0.99999998167f};
constexpr float kExp2Eighths[8] = {1.0f, 1.0905077327f, 1.1892071150f, 1.2968395547f,
                                   1.4142135624f, 1.5422108254f, 1.6817928305f, 1.8340080864f};

// exp(d) for d in [-86.5, 0] as 2^(n/8) 2^(r/8): n = round(8 d log2 e) from one FMA against
// the 1.5 2^23 shifter (n lands in the low mantissa bits of t), r = 8 d log2 e - n in
// [-1/2, 1/2] from one more FMA, 2^(r/8) by a cubic (kExp2Cubic, relative error 1.8e-8),
// 2^((n mod 8)/8) from an 8-entry table by one permute (the permute reads the low 3 bits
// of t), 2^(n div 8) added to the exponent bits (an integer add: n div 8 >= -125, so no
// subnormal). 6 FMA-class operations, against 10 for the AVX-512 tier's form (log2 e in two
// parts, a degree-6 polynomial, scale by a multiply): on Zen 4 the sums loop is bound by
// the two FMA pipes, so fewer operations are faster (docs/cpu_tiers.md#avx2-exp). Accuracy
// against exp in double (benchmarks/avx2_exp_accuracy.cpp): at most 2.3 ulp (mean 0.5) for
// d in [-1, 0], 4.2 (mean 1.1) for d in [-10, 0] (r carries the rounding of 8 log2 e, a
// relative error of about 1.3e-8 |d|); the float32 partial sums of about 600 terms a lane
// round far more. The sums differ from the AVX-512 tier's in the last bits; the draws do
// not (no exp there).
// The two pieces exp_nonpos and lse_term_acc share, from t (n in its low mantissa bits, as
// left by the 1.5 2^23 shifter) and r: 2^(r/8) by the cubic; 2^((n mod 8)/8) from the table
// by one permute; and 2^(n div 8) as exponent bits to add to a float's bits.
EK_INLINE __m256 exp2_cubic(__m256 r) {
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(kExp2Cubic[0]), r, _mm256_set1_ps(kExp2Cubic[1]));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExp2Cubic[2]));
  return _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExp2Cubic[3]));
}
EK_INLINE __m256 exp2_eighth(__m256 t) {
  return _mm256_permutevar8x32_ps(_mm256_loadu_ps(kExp2Eighths), _mm256_castps_si256(t));
}
EK_INLINE __m256i exp2_scale_bits(__m256 t) {
  return _mm256_slli_epi32(_mm256_and_si256(_mm256_castps_si256(t), _mm256_set1_epi32(~7)), 20);
}

EK_INLINE __m256 exp_nonpos(__m256 d) {
  const __m256 shifter = _mm256_set1_ps(12582912.0f);  // 1.5 2^23
  const __m256 t = _mm256_fmadd_ps(d, _mm256_set1_ps(8.0f * kLog2E), shifter);
  const __m256 n = _mm256_sub_ps(t, shifter);
  const __m256 r = _mm256_fmsub_ps(d, _mm256_set1_ps(8.0f * kLog2E), n);
  const __m256 y = _mm256_mul_ps(exp2_cubic(r), exp2_eighth(t));
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(y), exp2_scale_bits(t)));
}

// The log-sum-exp terms without the subtraction x - m. With c = 8 log2 e (float) and J an
// integer >= m c (ceil, see chunk_kernel), the term of x is 2^((x c - J) / 8) = exp(x - m)
// 2^((m c - J) / 8) (the factor, in [2^(-1/8), 1], is taken out in double when the vector
// sums are flushed). t = fma(x, c, 1.5 2^23 - J) rounds x c - J to an integer n in its low
// mantissa bits, n + J = t - (1.5 2^23 - J) exactly (|J| < 2^21), r = fma(x, c, -(n + J)) is
// x c - n - J with one rounding; then 2^(r/8) by the cubic, 2^((n mod 8)/8) from the table,
// 2^(n div 8) added to the table value's exponent bits (n >= -990: a normal float) and the
// term added to acc by one FMA (p times that value). 11 operations an 8-lane vector against
// 14 for exp_nonpos of x - m, clamped, then an add (on Zen 4 the loop is bound by the four
// FP pipes, which also run the integer and shuffle operations, not only by the two FMA ones).
// kf = 1.5 2^23 - J; x must be >= (J - 990) / c (the caller clamps where a block's min is lower).
// This form, and the clamp left out where it can be, chosen by measurement:
// docs/cpu_tiers.md#avx2-tier.
EK_INLINE __m256 lse_term_acc(__m256 x, __m256 kf, __m256 acc) {
  const __m256 c = _mm256_set1_ps(8.0f * kLog2E);
  const __m256 t = _mm256_fmadd_ps(x, c, kf);
  const __m256 r = _mm256_fmsub_ps(x, c, _mm256_sub_ps(t, kf));
  const __m256 e = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(exp2_eighth(t)), exp2_scale_bits(t)));
  return _mm256_fmadd_ps(exp2_cubic(r), e, acc);
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
// instead of two for a blend (measured: docs/cpu_tiers.md#philox-products).
EK_INLINE void mul_hi_lo(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_mullo_epi32(a, m);
}

// philox4x32_10 (eager_cpu.h) on two sets of 8 counters, the round chains interleaved:
// word 0 of counter i is ca[i] (cb[i]), words 1..3 (c1, c2, c3) are shared, so the word-2
// product of round 1 and the word-0 product of round 2 are the same for every counter and
// computed once. oa[l][i] is word l of counter i of the first set.
EK_INLINE void philox8x2(__m256i ca, __m256i cb, uint32_t c1, uint32_t c2, uint32_t c3, const PhiloxKeys& keys,
                         __m256i oa[4], __m256i ob[4]) {
  const __m256i ma = _mm256_set1_epi32(static_cast<int>(kPhiloxRoundA));
  const __m256i mb = _mm256_set1_epi32(static_cast<int>(kPhiloxRoundB));
  const auto key = [](__m256i k) { return static_cast<uint32_t>(_mm256_cvtsi256_si32(k)); };
  const uint32_t k0_0 = key(keys.k0[0]), k1_0 = key(keys.k1[0]), k0_1 = key(keys.k0[1]), k1_1 = key(keys.k1[1]);
  // Round 1: words 0 and 1 come out shared.
  const uint64_t pb1 = static_cast<uint64_t>(c2) * kPhiloxRoundB;
  const uint32_t s0 = static_cast<uint32_t>(pb1 >> 32) ^ c1 ^ k0_0, s1 = static_cast<uint32_t>(pb1);
  __m256i ha, la, ha2, la2;
  mul_hi_lo(ca, ma, ha, la);
  mul_hi_lo(cb, ma, ha2, la2);
  const __m256i x3 = _mm256_set1_epi32(static_cast<int>(c3 ^ k1_0));
  __m256i a2 = _mm256_xor_si256(ha, x3), b2 = _mm256_xor_si256(ha2, x3);
  __m256i a3 = la, b3 = la2;
  // Round 2: the word-0 product is shared (word 0 = s0 everywhere).
  const uint64_t pa2 = static_cast<uint64_t>(s0) * kPhiloxRoundA;
  __m256i hb, lb, hb2, lb2;
  mul_hi_lo(a2, mb, hb, lb);
  mul_hi_lo(b2, mb, hb2, lb2);
  const __m256i x1 = _mm256_set1_epi32(static_cast<int>(s1 ^ k0_1));
  const __m256i x2 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(pa2 >> 32) ^ k1_1));
  __m256i a0 = _mm256_xor_si256(hb, x1), b0 = _mm256_xor_si256(hb2, x1);
  a2 = _mm256_xor_si256(a3, x2);
  b2 = _mm256_xor_si256(b3, x2);
  __m256i a1 = lb, b1 = lb2;
  a3 = b3 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(pa2)));
  for (int r = 2; r < 10; ++r) {
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

// The Gumbel bound of a lane by a line in the bucket lz = lzcnt(2^31 - 1 - folded):
// kGumbelLineA lz + P.gumbel_line_b >= the table's bound of the bucket (eager_cpu.h, ops.cpp).
// AVX2 has no vector lzcnt: the low 8 bits of d = 2^31 - 1 - folded are cleared, so the
// int -> float conversion is exact and its exponent field E gives lz = 158 - E (d < 256,
// cleared to 0, gives E = 0, lz = 158: a bound far above every Gumbel value). One FMA
// instead of a 32-entry lookup (4 permutes, 3 blends); the line is at most 0.33 above the
// table (lz = 1, where the bound is small) and within 0.06 for lz 5..19.
struct BoundLine {
  __m256 a, c;  // bound = c - a E: a = kGumbelLineA, c = 158 a + gumbel_line_b
};

EK_INLINE __m256 gumbel_bound(const BoundLine& line, __m256i folded) {
  const __m256i d = _mm256_and_si256(_mm256_sub_epi32(_mm256_set1_epi32(0x7FFFFFFF), folded),
                                     _mm256_set1_epi32(~0xFF));
  const __m256i expo = _mm256_srli_epi32(_mm256_castps_si256(_mm256_cvtepi32_ps(d)), 23);
  return _mm256_fnmadd_ps(_mm256_cvtepi32_ps(expo), line.a, line.c);
}

// The 4 logits of quad q as float32 pairs: [quad a | quad b] from their addresses.
template <int Kind>
EK_INLINE __m256 load_quad_pair(const void* pa, const void* pb) {
  if (Kind == kF32) return _mm256_loadu2_m128(static_cast<const float*>(pb), static_cast<const float*>(pa));
  const __m128i h = _mm_castpd_si128(_mm_loadh_pd(_mm_castsi128_pd(_mm_loadl_epi64(static_cast<const __m128i*>(pa))),
                                                  static_cast<const double*>(pb)));
  if (Kind == kBF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  return _mm256_cvtph_ps(h);
}

// Scores of `live` (1..16) queued quads (counters quad[0..16)); their logits are read again
// from the row (still in cache), the chunk's last quad from `tail` when it is partial.
// Updates (best, best_id) with ties to the smaller column (the queue is in column order but
// the lanes of a quad are scored in separate vectors).
template <int Kind>
EK_INLINE void gumbel_quads(const int32_t* quad, int live, const ChunkParams& P, int32_t tail_quad,
                            const void* tail, const void* dead, const PhiloxKeys& keys, const BoundLine& line, __m256 vtemp,
                            float& best, int64_t& best_id) {
  constexpr int kElem = Kind == kF32 ? 4 : 2;
  const __m256i qa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(quad));
  const __m256i qb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(quad + 8));
  __m256i wa[4], wb[4];
  philox8x2(qa, qb, P.row_index, P.ctr2, P.ctr3, keys, wa, wb);
  const char* row = static_cast<const char*>(P.row);
  for (int half = 0; half < 2; ++half) {
    const int n_live = live - 8 * half;
    if (n_live <= 0) break;
    const __m256i q = half ? qb : qa;
    const __m256i* words = half ? wb : wa;
    const void* at[8];
    for (int j = 0; j < 8; ++j) {
      const int32_t qj = quad[8 * half + j];
      at[j] = qj == tail_quad ? tail : row + static_cast<int64_t>(qj) * 4 * kElem;
      if (8 * half + j >= live) at[j] = dead;  // an unused entry: -inf logits
    }
    // The lane vectors: x of quad j, lane l at position j, in the counters' order.
    __m256 lanes[4];
    if (Kind == kBF16) {
      // The transpose on the 16-bit values, then the unpacks with zero make the float32:
      // a = [q0 q1 | q4 q5], b = [q2 q3 | q6 q7]; two rounds of 16-bit unpacks give [lane 0
      // of q0..q3, lane 1 of q0..q3 | the same of q4..q7] and lanes 2, 3 alike (14 operations
      // for 8 quads against 20 by load_quad_pair and the float transpose).
      const auto pair = [](const void* p0, const void* p1) {
        return _mm_castpd_si128(_mm_loadh_pd(_mm_castsi128_pd(_mm_loadl_epi64(static_cast<const __m128i*>(p0))),
                                             static_cast<const double*>(p1)));
      };
      const __m256i a = _mm256_set_m128i(pair(at[4], at[5]), pair(at[0], at[1]));
      const __m256i b = _mm256_set_m128i(pair(at[6], at[7]), pair(at[2], at[3]));
      const __m256i u = _mm256_unpacklo_epi16(a, b), w = _mm256_unpackhi_epi16(a, b);
      const __m256i x01 = _mm256_unpacklo_epi16(u, w), x23 = _mm256_unpackhi_epi16(u, w);
      const __m256i zero = _mm256_setzero_si256();
      lanes[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, x01));
      lanes[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, x01));
      lanes[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, x23));
      lanes[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, x23));
    } else {
      // Quads j (low 128 bits) and j + 4 (high): a 4x4 transpose in each half.
      const __m256 r0 = load_quad_pair<Kind>(at[0], at[4]), r1 = load_quad_pair<Kind>(at[1], at[5]);
      const __m256 r2 = load_quad_pair<Kind>(at[2], at[6]), r3 = load_quad_pair<Kind>(at[3], at[7]);
      const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
      const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
      lanes[0] = _mm256_shuffle_ps(t0, t2, 0x44);
      lanes[1] = _mm256_shuffle_ps(t0, t2, 0xEE);
      lanes[2] = _mm256_shuffle_ps(t1, t3, 0x44);
      lanes[3] = _mm256_shuffle_ps(t1, t3, 0xEE);
    }
    for (int l = 0; l < 4; ++l) {
      const __m256 x = lanes[l];
      const __m256i folded = fold(words[l]);
      const __m256 ub = _mm256_fmadd_ps(vtemp, gumbel_bound(line, folded), x);
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

// Max, min and the NaN / +inf test of n0 values (a multiple of 32 for bfloat16, 16 for
// float32) from their bits as integers (W = 16 or 32 bits), with no conversion: the signed
// max is the float max when some value is >= +0 (else the signed min is), the unsigned max
// is the float min when some value is negative (else the signed min is), and +inf / NaN
// show as a signed max >= the bits of +inf or an unsigned max above those of -inf. 3
// integer operations per vector: for bfloat16 against a conversion and 9 float operations
// per 16 columns, for float32 against 4 (max, min, the compare and its or) per 8.
template <int W>
struct IntLanes;
template <>
struct IntLanes<16> {
  static constexpr uint32_t kPosInf = 0x7F80u, kNegInf = 0xFF80u, kSign = 0x8000u;
  static __m256i smin0() { return _mm256_set1_epi16(0x7FFF); }
  static __m256i smax0() { return _mm256_set1_epi16(static_cast<int16_t>(0x8000)); }
  static __m256i smax(__m256i a, __m256i b) { return _mm256_max_epi16(a, b); }
  static __m256i smin(__m256i a, __m256i b) { return _mm256_min_epi16(a, b); }
  static __m256i umax(__m256i a, __m256i b) { return _mm256_max_epu16(a, b); }
  static int32_t hsmax(__m256i v) { return hmax_epi16(v); }
  static int32_t hsmin(__m256i v) { return hmin_epi16(v); }
  static uint32_t humax(__m256i v) { return static_cast<uint32_t>(hmax_epu16(v)); }
  static float to_float(uint32_t bits) { return bf16_bits_to_float(static_cast<int>(bits)); }
};
template <>
struct IntLanes<32> {
  static constexpr uint32_t kPosInf = 0x7F800000u, kNegInf = 0xFF800000u, kSign = 0x80000000u;
  static __m256i smin0() { return _mm256_set1_epi32(INT32_MAX); }
  static __m256i smax0() { return _mm256_set1_epi32(INT32_MIN); }
  static __m256i smax(__m256i a, __m256i b) { return _mm256_max_epi32(a, b); }
  static __m256i smin(__m256i a, __m256i b) { return _mm256_min_epi32(a, b); }
  static __m256i umax(__m256i a, __m256i b) { return _mm256_max_epu32(a, b); }
  static int32_t hsmax(__m256i v) {
    __m128i m = _mm_max_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0x4E));
    return _mm_cvtsi128_si32(_mm_max_epi32(m, _mm_shuffle_epi32(m, 0xB1)));
  }
  static int32_t hsmin(__m256i v) {
    __m128i m = _mm_min_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    m = _mm_min_epi32(m, _mm_shuffle_epi32(m, 0x4E));
    return _mm_cvtsi128_si32(_mm_min_epi32(m, _mm_shuffle_epi32(m, 0xB1)));
  }
  static uint32_t humax(__m256i v) {
    __m128i m = _mm_max_epu32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0x4E));
    return static_cast<uint32_t>(_mm_cvtsi128_si32(_mm_max_epu32(m, _mm_shuffle_epi32(m, 0xB1))));
  }
  static float to_float(uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
};

template <int W>
EK_INLINE void bits_stats(const void* p, int64_t n0, float& bmax, float& bmin, bool& bad) {
  using L = IntLanes<W>;
  constexpr int kPerVec = 256 / W;
  const __m256i* v = static_cast<const __m256i*>(p);
  __m256i smax[2] = {L::smax0(), L::smax0()}, smin[2] = {L::smin0(), L::smin0()};
  __m256i umax[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
  for (int64_t i = 0; i < n0 / kPerVec; i += 2) {
    for (int k = 0; k < 2; ++k) {
      const __m256i h = _mm256_loadu_si256(v + i + k);
      smax[k] = L::smax(smax[k], h);
      smin[k] = L::smin(smin[k], h);
      umax[k] = L::umax(umax[k], h);
    }
  }
  const int32_t s_max = L::hsmax(L::smax(smax[0], smax[1]));
  const int32_t s_min = L::hsmin(L::smin(smin[0], smin[1]));
  const uint32_t u_max = L::humax(L::umax(umax[0], umax[1]));
  const uint32_t mask = W == 16 ? 0xFFFFu : 0xFFFFFFFFu;
  bad |= s_max >= static_cast<int32_t>(L::kPosInf) || u_max > L::kNegInf;
  bmax = L::to_float(static_cast<uint32_t>(s_max >= 0 ? s_max : s_min) & mask);
  bmin = L::to_float(u_max >= L::kSign ? u_max : static_cast<uint32_t>(s_min) & mask);
}

// Seeds the Gumbel arg-max with the score of the chunk's largest logit (its first column),
// from a max-only pass over the chunk (which also brings the chunk into L2 for the main
// pass). Exact: the seed is a score some column has, computed as the main pass computes it,
// so the final arg-max is unchanged; but with a high best from the first block on, the main
// pass queues far fewer quads (flat 3 randn logits, B = 8, V = 152064: 113k -> 72k of 304k
// quads; unseeded, the best grows over the row and the early blocks queue most of theirs).
// The max pass costs far less than the quads it saves (measured: docs/cpu_tiers.md#seed-pass).
template <int Kind>
void seed_best(const ChunkParams& P, int32_t tail_quad, const void* tail, const void* dead, const PhiloxKeys& keys,
               const BoundLine& line, __m256 vtemp, float& best, int64_t& best_id, float* block_max, float* block_min,
               bool& bad) {
  // Max by blocks of kBlock (4 chains); the first block holding the largest value is kept.
  // Also each block's max (block_max) and min (block_min, for the sums' clamp) and the NaN /
  // +inf test, which the main pass then skips for full blocks.
  const __m256 vinf = _mm256_set1_ps(kInf);
  float xmax = -kInf;
  int64_t xblock = P.begin;
  for (int64_t b0 = P.begin; b0 < P.end; b0 += kBlock) {
    const int64_t n = P.end - b0 < kBlock ? P.end - b0 : kBlock;
    int64_t i = 0;
    float bmax = -kInf, bmin = -kInf;
    if (Kind == kBF16) {
      i = n & ~int64_t{31};
      if (i > 0) bits_stats<16>(static_cast<const uint16_t*>(P.row) + b0, i, bmax, bmin, bad);
    } else if (Kind == kF32) {
      i = n & ~int64_t{31};
      if (i > 0) bits_stats<32>(static_cast<const float*>(P.row) + b0, i, bmax, bmin, bad);
    } else {
      __m256 m4[4] = {_mm256_set1_ps(-kInf), _mm256_set1_ps(-kInf), _mm256_set1_ps(-kInf), _mm256_set1_ps(-kInf)};
      __m256 n4[4] = {vinf, vinf, vinf, vinf};
      __m256 vbad = _mm256_setzero_ps();
      for (; i + 32 <= n; i += 32) {
        for (int k = 0; k < 4; ++k) {
          const __m256 x = load8<Kind>(P.row, b0 + i + 8 * k);
          m4[k] = _mm256_max_ps(m4[k], x);
          n4[k] = _mm256_min_ps(n4[k], x);
          vbad = _mm256_or_ps(vbad, _mm256_cmp_ps(x, vinf, _CMP_NLT_UQ));
        }
      }
      bad |= _mm256_movemask_ps(vbad) != 0;
      bmax = hmax8(_mm256_max_ps(_mm256_max_ps(m4[0], m4[1]), _mm256_max_ps(m4[2], m4[3])));
      bmin = hmin8(_mm256_min_ps(_mm256_min_ps(n4[0], n4[1]), _mm256_min_ps(n4[2], n4[3])));
    }
    for (; i < n; ++i) {
      const float x = load1<Kind>(P.row, b0 + i);
      bmax = std::max(bmax, x);
      bad |= !(x < kInf);
    }
    block_max[(b0 - P.begin) / kBlock] = bmax;
    // The min of a full block (a partial one goes through sub-pass 1, which takes its own).
    block_min[(b0 - P.begin) / kBlock] = n == kBlock ? bmin : -kInf;
    if (bmax > xmax) {
      xmax = bmax;
      xblock = b0;
    }
  }
  // NaN / +inf (the caller reports it) or no finite logit: no seed. Otherwise xmax is a
  // value of the chunk.
  if (bad || !(xmax > -kInf)) return;
  int64_t col = xblock;
  while (col + 1 < P.end && !(load1<Kind>(P.row, col) == xmax)) ++col;
  alignas(32) int32_t quad[16];
  for (int j = 0; j < 16; ++j) quad[j] = static_cast<int32_t>(col >> 2);
  gumbel_quads<Kind>(quad, 1, P, tail_quad, tail, dead, keys, line, vtemp, best, best_id);
}

// Sums of one block against the running max m: acc[0..1] += exp(x - m) (two chains),
// acc[2..3] += exp(x - m) (x - m) when SUMS == 2. CLAMP: x - m clamped at -86.5 (the range
// of exp_nonpos); the caller leaves it out when the block's min is within 86 of m (the
// loop is bound by the FP pipes as a whole on Zen 4, not only the FMA pipes: every
// operation counts). Kept out of line: the accumulators then
// stay in registers for the loop (inlined, GCC kept them in memory across the chunk loop,
// and every add waited on a store-to-load round trip).
template <int SUMS, bool CLAMP>
__attribute__((noinline)) void block_sums(const float* xb, int nv, float m, __m256* acc) {
  const __m256 vm = _mm256_set1_ps(m);
  const __m256 lo = _mm256_set1_ps(-86.5f);
  __m256 s0 = acc[0], s1 = acc[1], t0 = acc[2], t1 = acc[3];
  int v = 0;
  for (; v + 1 < nv; v += 2) {
    __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(xb + 8 * v), vm);
    __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(xb + 8 * v + 8), vm);
    if (CLAMP) {
      d0 = _mm256_max_ps(d0, lo);
      d1 = _mm256_max_ps(d1, lo);
    }
    const __m256 e0 = exp_nonpos(d0), e1 = exp_nonpos(d1);
    s0 = _mm256_add_ps(s0, e0);
    s1 = _mm256_add_ps(s1, e1);
    if (SUMS == 2) {
      t0 = _mm256_fmadd_ps(e0, d0, t0);
      t1 = _mm256_fmadd_ps(e1, d1, t1);
    }
  }
  if (v < nv) {
    const __m256 d0 = _mm256_max_ps(_mm256_sub_ps(_mm256_loadu_ps(xb + 8 * v), vm), lo);
    const __m256 e0 = exp_nonpos(d0);
    s0 = _mm256_add_ps(s0, e0);
    if (SUMS == 2) t0 = _mm256_fmadd_ps(e0, d0, t0);
  }
  acc[0] = s0;
  acc[1] = s1;
  acc[2] = t0;
  acc[3] = t1;
}

// The log-sum-exp sums of one block by lse_term_acc (kf = 1.5 2^23 - J): acc[0..1] +=
// 2^((x c - J) / 8), two chains. CLAMP: x raised to xlo = (J - 990) / c first.
template <bool CLAMP>
__attribute__((noinline)) void block_lse(const float* xb, int nv, float kf, float xlo, __m256* acc) {
  const __m256 vk = _mm256_set1_ps(kf);
  const __m256 vlo = _mm256_set1_ps(xlo);
  __m256 s0 = acc[0], s1 = acc[1];
  int v = 0;
  for (; v + 1 < nv; v += 2) {
    __m256 x0 = _mm256_loadu_ps(xb + 8 * v), x1 = _mm256_loadu_ps(xb + 8 * v + 8);
    if (CLAMP) {
      x0 = _mm256_max_ps(x0, vlo);
      x1 = _mm256_max_ps(x1, vlo);
    }
    s0 = lse_term_acc(x0, vk, s0);
    s1 = lse_term_acc(x1, vk, s1);
  }
  if (v < nv) s0 = lse_term_acc(_mm256_max_ps(_mm256_loadu_ps(xb + 8 * v), vlo), vk, s0);
  acc[0] = s0;
  acc[1] = s1;
}

// block_lse on a full block of bfloat16 read in place: the unpacks with zero make float32
// of 16 columns in two operations (lanes in a shuffled order, which a sum does not mind).
// Kept apart from block_lse: one function for both layouts (a bfloat16 flag, the same
// loop) was slower (docs/cpu_tiers.md#bf16-in-place).
template <bool CLAMP>
__attribute__((noinline)) void block_lse_bf16(const uint16_t* hb, float kf, float xlo, __m256* acc) {
  const __m256 vk = _mm256_set1_ps(kf);
  const __m256 vlo = _mm256_set1_ps(xlo);
  const __m256i zero = _mm256_setzero_si256();
  __m256 s0 = acc[0], s1 = acc[1];
  for (int i = 0; i < kBlock; i += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hb + i));
    __m256 x0 = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, h));
    __m256 x1 = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, h));
    if (CLAMP) {
      x0 = _mm256_max_ps(x0, vlo);
      x1 = _mm256_max_ps(x1, vlo);
    }
    s0 = lse_term_acc(x0, vk, s0);
    s1 = lse_term_acc(x1, vk, s1);
  }
  acc[0] = s0;
  acc[1] = s1;
}

// ---- the chunk kernel ---------------------------------------------------------------------

// The 4 elements of the quad at column first as stored (Kind), those at end or past it
// replaced by -inf.
template <int Kind>
void quad_copy(uint8_t* out, const void* row, int64_t first, int64_t end) {
  for (int l = 0; l < 4; ++l) {
    const int64_t c = first + l;
    if (Kind == kF32) {
      const float v = c < end ? static_cast<const float*>(row)[c] : -kInf;
      std::memcpy(out + 4 * l, &v, 4);
    } else {
      const uint16_t v = c < end ? static_cast<const uint16_t*>(row)[c] : (Kind == kBF16 ? 0xFF80 : 0xFC00);
      std::memcpy(out + 2 * l, &v, 2);
    }
  }
}

// Left-packing permutations: entry m lists the set bits of the 8-bit mask m in order.
struct CompactTable {
  alignas(32) int32_t idx[256][8];
  constexpr CompactTable() : idx() {
    for (int m = 0; m < 256; ++m) {
      int n = 0;
      for (int b = 0; b < 8; ++b)
        if (m >> b & 1) idx[m][n++] = b;
    }
  }
};
constexpr CompactTable kCompact;

// x <= t for 16 bfloat16 values h, t = bf16_floor_bits of a float bound (so x > bound <=>
// not this), on the bits as int16: t >= +0: (t + 1) >s x; t negative (NEG): x >=u t. vt is
// bf16_le_bound<NEG>(t).
template <bool NEG>
EK_INLINE __m256i bf16_le_bound(int t16) {
  return _mm256_set1_epi16(static_cast<int16_t>(NEG ? t16 : t16 + 1));
}
template <bool NEG>
EK_INLINE __m256i bf16_le(__m256i h, __m256i vt) {
  return NEG ? _mm256_cmpeq_epi16(_mm256_max_epu16(h, vt), h) : _mm256_cmpgt_epi16(vt, h);
}

// The candidate scan of a full bfloat16 block read in place: x > t (t = bf16_floor_bits of
// the scan's tau) as bf16_le's "no" masks; those of 32 columns packed to bytes, a quad's 4
// bytes one 32-bit lane (all set <=> no candidate), reordered to column order. Appends the
// quads with a candidate to queue (in column order); returns the new count.
template <bool NEG>
EK_INLINE int scan_bf16(const uint16_t* hb, int t16, int32_t quad0, int32_t* queue, int queued) {
  const __m256i vt = bf16_le_bound<NEG>(t16);
  const __m256i ones = _mm256_set1_epi32(-1);
  const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
  const __m256i iota8 = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int g = 0; g < kBlock; g += 32) {
    const __m256i h0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hb + g));
    const __m256i h1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hb + g + 16));
    const __m256i no = _mm256_packs_epi16(bf16_le<NEG>(h0, vt), bf16_le<NEG>(h1, vt));
    const __m256i quads = _mm256_permutevar8x32_epi32(no, order);
    const uint32_t m = ~_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(quads, ones))) & 0xFFu;
    const __m256i ids = _mm256_add_epi32(_mm256_set1_epi32(quad0 + g / 4), iota8);
    const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompact.idx[m]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(queue + queued), _mm256_permutevar8x32_epi32(ids, perm));
    queued += __builtin_popcount(m);
  }
  return queued;
}

// The running top-kp filter on a full bfloat16 block read in place: per 16 columns the
// lanes with x > thr (not bf16_le of bf16_floor_bits(thr); the bound taken again as thr
// moves), in column order, two mask bits a column.
EK_INLINE int top_bf16(const uint16_t* hb, int64_t b0, int kp, ChunkResult& R, int n_top, float& thr) {
  for (int g = 0; g < kBlock; g += 16) {
    const int t16 = bf16_floor_bits(thr);
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hb + g));
    const __m256i no = t16 & 0x8000 ? bf16_le<true>(h, bf16_le_bound<true>(t16))
                                    : bf16_le<false>(h, bf16_le_bound<false>(t16));
    uint32_t mask = ~static_cast<uint32_t>(_mm256_movemask_epi8(no)) & 0x55555555u;
    while (mask) {
      const int lane = __builtin_ctz(mask) >> 1;
      mask &= mask - 1;
      const float x = bf16_bits_to_float(hb[g + lane]);
      if (x > thr) {
        n_top = top_insert(R.top_val, R.top_id, n_top, kp, x, b0 + g + lane);
        if (n_top == kp) thr = R.top_val[kp - 1];
      }
    }
  }
  return n_top;
}

// SUMS: 0 = no sums, 1 = s only, 2 = s and t.
template <int Kind, int SUMS>
void chunk_kernel(const ChunkParams& P, ChunkResult& R) {
  const __m256 vinf = _mm256_set1_ps(kInf);
  const __m256 vninf = _mm256_set1_ps(-kInf);
  static_assert(kBlock % 32 == 0, "the candidate scan reads 4 vectors at a time");
  alignas(32) float xb[kBlock];

  float m = -kInf;
  double sum_s = 0.0, sum_t = 0.0;
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int pending_blocks = 0;
  // Log-sum-exp alone (SUMS == 1) by block_lse while |J| < 2^21 (|m| below about 1.8e5):
  // J = ceil(m c), kf = 1.5 2^23 - J, xlo = (J - 990) / c, and jscale = 2^((J - m c) / 8)
  // turns its vector sums into sums of exp(x - m) at the flush. Otherwise (and for SUMS ==
  // 2) block_sums on x - m, jscale = 1.
  bool use_lse = false;
  float kf = 0.0f, xlo = 0.0f;
  double jscale = 1.0;
  auto flush_sums = [&]() {
    sum_s += hsum8(_mm256_add_ps(acc[0], acc[1])) * jscale;
    sum_t += hsum8(_mm256_add_ps(acc[2], acc[3]));
    for (auto& a : acc) a = _mm256_setzero_ps();
    pending_blocks = 0;
  };
  int n_top = 0;
  const int kp = P.kp;
  float thr = kp > 0 ? -kInf : kInf;  // the kp-th best value once the list is full
  float best = -kInf;
  int64_t best_id = -1;
  bool bad = false;

  // Sampling queue: quads (global counter) still to score. A block adds at most kBlock / 4
  // (8 at a time, 8 entries written); at most 15 stay over between blocks, moved to the front
  // 16 at a time.
  constexpr int kQueue = 16 + kBlock / 4 + 16;
  alignas(32) int32_t queue_quad[kQueue] = {};
  int queued = 0;
  // The chunk's last quad when it is partial (the row ends inside it): its logits padded
  // with -inf, read by the scoring instead of the row; `dead` (all -inf) stands for the
  // unused queue entries of the last, partial batch of 16.
  const int32_t tail_quad = (P.end & 3) ? static_cast<int32_t>(P.end >> 2) : -1;
  alignas(16) uint8_t tail[16], dead[16];
  PhiloxKeys keys;
  BoundLine line;
  __m256 vtemp = _mm256_setzero_ps();
  // Sampling: the seed pass also keeps each block's max and tests for NaN / +inf, so for
  // full blocks the main pass skips both: float32 reads the block straight from the row (in
  // L2 after the seed pass) with no copy, float16 only converts it into L1 (sub-pass 1 runs
  // for the partial last block only, and when not sampling; full bfloat16 blocks: raw below).
  float* block_max = nullptr;
  float* block_min = nullptr;
  if (P.sample) {
    thread_local std::vector<float> block_max_buf;
    block_max_buf.resize(static_cast<size_t>((P.end - P.begin + kBlock - 1) / kBlock));
    block_max = block_max_buf.data();
    thread_local std::vector<float> block_min_buf;
    block_min_buf.resize(block_max_buf.size());
    block_min = block_min_buf.data();
    quad_copy<Kind>(dead, P.row, 0, 0);
    if (tail_quad >= 0) quad_copy<Kind>(tail, P.row, 4 * static_cast<int64_t>(tail_quad), P.end);
    make_keys(keys, P.key0, P.key1);
    line.a = _mm256_set1_ps(kGumbelLineA);
    line.c = _mm256_set1_ps(158.0f * kGumbelLineA + P.gumbel_line_b);
    vtemp = _mm256_set1_ps(P.temperature);
    seed_best<Kind>(P, tail_quad, tail, dead, keys, line, vtemp, best, best_id, block_max, block_min, bad);
  }

  for (int64_t b0 = P.begin; b0 < P.end && !bad; b0 += kBlock) {
    const int n = static_cast<int>(P.end - b0 < kBlock ? P.end - b0 : kBlock);
    const int nfull = n >> 3, nv = (n + 7) >> 3;
    const float* xs = xb;  // the block as float32, -inf past its end up to a multiple of 4 vectors
    float bmax, bmin;
    // A full bfloat16 block is read in place (raw): its max, min and NaN / +inf test from
    // the bits (bits_stats, here or in the seed pass), the log-sum-exp sums convert as they
    // go (in any order), the top-kp filter and the Gumbel scan compare the bits as int16.
    // Converted into L1 (column order) only for block_sums (full entropy, or |max| past
    // the log-sum-exp's range).
    const bool raw = Kind == kBF16 && n == kBlock;
    const auto convert = [&]() {  // a full 16-bit block into xb, column order
      for (int v = 0; v < kBlock / 8; v += 2) {
        __m256 x0, x1;
        load16<Kind>(P.row, b0 + 8 * v, x0, x1);
        _mm256_store_ps(xb + 8 * v, x0);
        _mm256_store_ps(xb + 8 * v + 8, x1);
      }
    };
    if (Kind == kF32 && n == kBlock) xs = static_cast<const float*>(P.row) + b0;  // full float32 blocks: in place
    if (n == kBlock && !block_max && Kind != kF16) {
      if (Kind == kBF16) {
        bits_stats<16>(static_cast<const uint16_t*>(P.row) + b0, kBlock, bmax, bmin, bad);
      } else {
        bits_stats<32>(xs, kBlock, bmax, bmin, bad);
      }
      if (bad) break;
    } else if (block_max && n == kBlock) {
      bmax = block_max[(b0 - P.begin) / kBlock];
      bmin = block_min[(b0 - P.begin) / kBlock];
      if (Kind == kF16) convert();
    } else {
      // Sub-pass 1 (the only read of memory when not sampling): convert to float32 into L1,
      // max, min, NaN/+inf. Two max chains: with one, the loop waited on the max latency
      // (docs/cpu_tiers.md#avx2-tier).
      __m256 vmax = vninf, vmin = vinf, vbad = _mm256_setzero_ps();
      {
        __m256 vmax1 = vninf, vmin1 = vinf, vbad1 = _mm256_setzero_ps();
        int v = 0;
        for (; v + 1 < nfull; v += 2) {
          __m256 x0, x1;
          load16<Kind>(P.row, b0 + 8 * v, x0, x1);
          _mm256_store_ps(xb + 8 * v, x0);
          _mm256_store_ps(xb + 8 * v + 8, x1);
          vmax = _mm256_max_ps(vmax, x0);
          vmax1 = _mm256_max_ps(vmax1, x1);
          vmin = _mm256_min_ps(vmin, x0);
          vmin1 = _mm256_min_ps(vmin1, x1);
          vbad = _mm256_or_ps(vbad, _mm256_cmp_ps(x0, vinf, _CMP_NLT_UQ));
          vbad1 = _mm256_or_ps(vbad1, _mm256_cmp_ps(x1, vinf, _CMP_NLT_UQ));
        }
        if (v < nfull) {
          const __m256 x = load8<Kind>(P.row, b0 + 8 * v);
          _mm256_store_ps(xb + 8 * v, x);
          vmax = _mm256_max_ps(vmax, x);
          vmin = _mm256_min_ps(vmin, x);
          vbad = _mm256_or_ps(vbad, _mm256_cmp_ps(x, vinf, _CMP_NLT_UQ));
        }
        vmax = _mm256_max_ps(vmax, vmax1);
        vmin = _mm256_min_ps(vmin, vmin1);
        vbad = _mm256_or_ps(vbad, vbad1);
      }
      if (nfull < nv) {  // the tail vector: -inf past the end
        for (int i = 8 * nfull; i < 8 * nv; ++i) xb[i] = i < n ? load1<Kind>(P.row, b0 + i) : -kInf;
        const __m256 x = _mm256_load_ps(xb + 8 * nfull);
        vmax = _mm256_max_ps(vmax, x);
        vmin = _mm256_min_ps(vmin, x);
        vbad = _mm256_or_ps(vbad, _mm256_cmp_ps(x, vinf, _CMP_NLT_UQ));
      }
      for (int v = nv; v < ((nv + 3) & ~3); ++v) _mm256_store_ps(xb + 8 * v, vninf);  // for the candidate scan
      if (_mm256_movemask_ps(vbad)) {
        bad = true;
        break;
      }
      bmax = hmax8(vmax);
      bmin = hmin8(vmin);
    }
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
      if (SUMS == 1) {
        const double c = static_cast<double>(8.0f * kLog2E);
        const double J = std::ceil(static_cast<double>(m) * c);
        use_lse = std::fabs(J) < 2097152.0;  // 2^21
        if (use_lse) {
          kf = static_cast<float>(12582912.0 - J);
          xlo = static_cast<float>((J - 990.0) / c);
          jscale = std::exp2((J - static_cast<double>(m) * c) * 0.125);
        } else {
          jscale = 1.0;
        }
      }
    }
    if (SUMS) {
      // No clamp when every x is in range (x > xlo, or x - m >= -86 for block_sums, rounded
      // the same way: fl(x - m) >= fl(bmin - m)): the block's min from the seed pass (full
      // blocks, sampling) or sub-pass 1.
      if (SUMS == 1 && use_lse) {
        const uint16_t* hb = static_cast<const uint16_t*>(P.row) + b0;
        if (raw) {
          if (bmin > xlo) {
            block_lse_bf16<false>(hb, kf, xlo, acc);
          } else {
            block_lse_bf16<true>(hb, kf, xlo, acc);
          }
        } else if (bmin > xlo) {
          block_lse<false>(xs, nv, kf, xlo, acc);
        } else {
          block_lse<true>(xs, nv, kf, xlo, acc);
        }
      } else {
        if (raw) convert();
        if (bmin - m >= -86.0f) {
          block_sums<SUMS, false>(xs, nv, m, acc);
        } else {
          block_sums<SUMS, true>(xs, nv, m, acc);
        }
      }
      if (++pending_blocks == 16) flush_sums();
    }

    // Running top-kp: only lanes above the current kp-th best need attention.
    if (bmax > thr && raw) {
      n_top = top_bf16(static_cast<const uint16_t*>(P.row) + b0, b0, kp, R, n_top, thr);
    } else if (bmax > thr) {
      for (int v = 0; v < nv; ++v) {
        uint32_t mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(xs + 8 * v), _mm256_set1_ps(thr), _CMP_GT_OQ));
        while (mask) {
          const int lane = __builtin_ctz(mask);
          mask &= mask - 1;
          const float x = xs[8 * v + lane];
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
      const float tau = scan_floor(best, P.noise_bound);
      const int32_t quad0 = static_cast<int32_t>(b0 >> 2);
      const __m256i iota8 = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
      if (raw) {
        const uint16_t* hb = static_cast<const uint16_t*>(P.row) + b0;
        const int t16 = bf16_floor_bits(tau);
        if (t16 & 0x8000) {
          queued = scan_bf16<true>(hb, t16, quad0, queue_quad, queued);
        } else {
          queued = scan_bf16<false>(hb, t16, quad0, queue_quad, queued);
        }
      } else {
        // Quads with a candidate (x > tau, see scan_floor), as bits in column order: the 0 /
        // -1 compare lanes of 4 vectors (8 quads) packed to bytes, a quad's 4 bytes one
        // 32-bit lane (any set <=> not 0).
        const __m256 vtau = _mm256_set1_ps(tau);
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (int v = 0; v < nv; v += 4) {  // xs is -inf past the block: no candidate there
          __m256i c[4];
          for (int i = 0; i < 4; ++i) {
            c[i] = _mm256_castps_si256(_mm256_cmp_ps(_mm256_loadu_ps(xs + 8 * (v + i)), vtau, _CMP_GT_OQ));
          }
          const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
          const __m256i quads = _mm256_permutevar8x32_epi32(bytes, order);
          const uint32_t empty =
              _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(quads, _mm256_setzero_si256())));
          const uint32_t m = ~empty & 0xFFu;
          const __m256i ids = _mm256_add_epi32(_mm256_set1_epi32(quad0 + 2 * v), iota8);
          const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompact.idx[m]));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(queue_quad + queued), _mm256_permutevar8x32_epi32(ids, perm));
          queued += __builtin_popcount(m);
        }
      }
      if (queued >= 16) {
        int done = 0;
        for (; queued - done >= 16; done += 16) {
          gumbel_quads<Kind>(queue_quad + done, 16, P, tail_quad, tail, dead, keys, line, vtemp, best, best_id);
        }
        // The rest (< 16) to the front, 16 entries moved whatever the count (no branch).
        const __m256i m0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(queue_quad + done));
        const __m256i m1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(queue_quad + done + 8));
        _mm256_store_si256(reinterpret_cast<__m256i*>(queue_quad), m0);
        _mm256_store_si256(reinterpret_cast<__m256i*>(queue_quad + 8), m1);
        queued -= done;
      }
    }
  }
  if (P.sample && !bad && queued > 0) {
    // The unused entries: any counter (their logits come from `dead`).
    for (int j = queued; j < 16; ++j) queue_quad[j] = queue_quad[0];
    gumbel_quads<Kind>(queue_quad, queued, P, tail_quad, tail, dead, keys, line, vtemp, best, best_id);
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
