// Portable chunk kernels: the same algorithm as kernels_avx512.cpp in plain C++, for CPUs
// without AVX-512 (and selectable with EAGER_KERNELS_CPU_ISA=scalar, which is how the
// tests cover it). Accurate libm exp/log; same blocks, same filters, same results up to
// float rounding of the sums. kernels_avx2.cpp compiles this file a second time with
// EK_AVX2 defined: the two dense loops (load + max + NaN check, and the exp sums) and Philox
// (16 counters at a time, for the queued candidate quads) then use 8-wide AVX2/FMA
// intrinsics, the rest stays as written here; its names get the avx2_ prefix
// (EK_PORTABLE_NAME).
#include <cmath>
#include <cstdint>
#include <cstring>

#include "eager_cpu.h"

#ifdef EK_AVX2
#include <immintrin.h>
#endif
#ifndef EK_PORTABLE_NAME
#define EK_PORTABLE_NAME(name) scalar_##name
#endif

namespace eager_cpu {
namespace {

inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0x1Fu) {
    bits = sign | 0x7F800000u | (mant << 13);  // inf / NaN
  } else if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal half: normalise
      int e = -1;
      do {
        mant <<= 1;
        ++e;
      } while ((mant & 0x400u) == 0);
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3FFu) << 13);
    }
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

template <int Kind>
inline float load(const void* row, int64_t i) {
  if (Kind == kF32) return static_cast<const float*>(row)[i];
  const uint16_t h = static_cast<const uint16_t*>(row)[i];
  return Kind == kBF16 ? bf16_to_float(h) : f16_to_float(h);
}

inline int gumbel_bucket(uint32_t folded) {
  const uint32_t d = 0x7FFFFFFFu - folded;
  return d == 0 ? 0 : __builtin_clz(d);  // lzcnt 32 maps to entry 0, as in the AVX-512 path
}

#ifdef EK_AVX2
template <int Kind>
inline __m256 load8(const void* row, int64_t i) {
  if (Kind == kF32) return _mm256_loadu_ps(static_cast<const float*>(row) + i);
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + i));
  if (Kind == kBF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  return _mm256_cvtph_ps(h);
}

inline float hmax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// exp(d) for d in [-87, 0]: 2^n 2^f as in kernels_avx512.cpp (n = round(d log2 e), f from
// two FMAs with log2 e split in two, 2^f by the same degree-6 polynomial), the scale 2^n
// built in the exponent bits (n >= -126 here).
inline __m256 exp8_nonpos(__m256 d) {
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(d, _mm256_set1_ps(kLog2E)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 f = _mm256_fmsub_ps(d, _mm256_set1_ps(kLog2EHi), n);
  f = _mm256_fmadd_ps(d, _mm256_set1_ps(kLog2ELo), f);
  __m256 p = _mm256_set1_ps(kExp2Poly[0]);
  for (int i = 1; i < 7; ++i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2Poly[i]));
  const __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
}

// High and low 32-bit halves of the 8 products a * m (m broadcast): mul_epu32 multiplies
// the even lanes; the odd lanes are shifted down first.
inline void mul_hi_lo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

// philox4x32_10 (eager_cpu.h) on 2 x 8 counters at once, the two round chains interleaved
// (each round is a long dependency chain): word 0 of counter i is ca[i] (cb[i]), words
// 1..3 are shared. oa[l][i] is word l of counter i of the first set.
inline void philox8x2(__m256i ca, __m256i cb, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1,
                      __m256i oa[4], __m256i ob[4]) {
  __m256i a0 = ca, b0 = cb;
  __m256i a1 = _mm256_set1_epi32(static_cast<int>(c1)), b1 = a1;
  __m256i a2 = _mm256_set1_epi32(static_cast<int>(c2)), b2 = a2;
  __m256i a3 = _mm256_set1_epi32(static_cast<int>(c3)), b3 = a3;
  const __m256i ma = _mm256_set1_epi32(static_cast<int>(kPhiloxRoundA));
  const __m256i mb = _mm256_set1_epi32(static_cast<int>(kPhiloxRoundB));
  for (int r = 0; r < 10; ++r) {
    const __m256i vk0 = _mm256_set1_epi32(static_cast<int>(k0)), vk1 = _mm256_set1_epi32(static_cast<int>(k1));
    __m256i hb, lb, ha, la, hb2, lb2, ha2, la2;
    mul_hi_lo8(a2, mb, hb, lb);
    mul_hi_lo8(b2, mb, hb2, lb2);
    mul_hi_lo8(a0, ma, ha, la);
    mul_hi_lo8(b0, ma, ha2, la2);
    a0 = _mm256_xor_si256(_mm256_xor_si256(hb, a1), vk0);
    b0 = _mm256_xor_si256(_mm256_xor_si256(hb2, b1), vk0);
    a2 = _mm256_xor_si256(_mm256_xor_si256(ha, a3), vk1);
    b2 = _mm256_xor_si256(_mm256_xor_si256(ha2, b3), vk1);
    a1 = lb;
    b1 = lb2;
    a3 = la;
    b3 = la2;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  oa[0] = a0; oa[1] = a1; oa[2] = a2; oa[3] = a3;
  ob[0] = b0; ob[1] = b1; ob[2] = b2; ob[3] = b3;
}
#endif

// The Gumbel score of the 4 columns of quad q (block offset; Philox words w[l]): updates
// (best, best_id) where a column beats the best, in column order (ties keep the smaller).
inline void score_quad(const ChunkParams& P, const float* xb, int n, int64_t b0, int q, const uint32_t w[4],
                       float& best, int64_t& best_id) {
  for (int l = 0; l < 4 && q + l < n; ++l) {
    const float x = xb[q + l];
    const uint32_t folded = (w[l] & 0x80000000u) ? ~w[l] : w[l];
    if (!(x + P.temperature * P.gumbel_bound[gumbel_bucket(folded)] > best)) continue;
    const float u = uint_to_uniform(w[l]);
    const float log_e = std::log(-std::log(u));
    const float score = x - P.temperature * log_e;
    if (score > best) {
      best = score;
      best_id = b0 + q + l;
    }
  }
}

// Load a block into xb (float32), returning its max; *bad is set on NaN / +inf.
template <int Kind>
inline float load_block(const void* row, int64_t b0, int n, float* xb, bool* bad) {
  const float inf = INFINITY;
  float bmax = -inf;
  int i = 0;
#ifdef EK_AVX2
  __m256 vmax = _mm256_set1_ps(-inf);
  int any_bad = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = load8<Kind>(row, b0 + i);
    _mm256_storeu_ps(xb + i, x);
    any_bad |= _mm256_movemask_ps(_mm256_cmp_ps(x, _mm256_set1_ps(inf), _CMP_NLT_UQ));
    vmax = _mm256_max_ps(vmax, x);
  }
  bmax = hmax8(vmax);
  *bad |= any_bad != 0;
#endif
  for (; i < n; ++i) {
    const float x = load<Kind>(row, b0 + i);
    xb[i] = x;
    *bad |= !(x < inf);
    bmax = x > bmax ? x : bmax;
  }
  return bmax;
}

// s += sum exp(x - m), t += sum exp(x - m)(x - m) over the block (t only when SUMS == 2).
template <int SUMS>
inline void exp_sums(const float* xb, int n, float m, float* s_out, float* t_out) {
  float s = 0.0f, t = 0.0f;
  int i = 0;
#ifdef EK_AVX2
  __m256 vs = _mm256_setzero_ps(), vt = _mm256_setzero_ps();
  const __m256 vm = _mm256_set1_ps(m), lo = _mm256_set1_ps(-87.0f);
  for (; i + 8 <= n; i += 8) {
    const __m256 d = _mm256_max_ps(_mm256_sub_ps(_mm256_loadu_ps(xb + i), vm), lo);
    const __m256 e = exp8_nonpos(d);
    vs = _mm256_add_ps(vs, e);
    if (SUMS == 2) vt = _mm256_fmadd_ps(e, d, vt);
  }
  s = hsum8(vs);
  t = hsum8(vt);
#endif
  for (; i < n; ++i) {
    float d = xb[i] - m;
    d = d < -87.0f ? -87.0f : d;
    const float e = std::exp(d);
    s += e;
    if (SUMS == 2) t += e * d;
  }
  *s_out = s;
  *t_out = t;
}

template <int Kind, int SUMS>
void chunk_kernel(const ChunkParams& P, ChunkResult& R) {
  const float inf = INFINITY;
  float xb[kBlock];
  float m = -inf;
  double sum_s = 0.0, sum_t = 0.0;
  int n_top = 0;
  const int kp = P.kp;
  float thr = kp > 0 ? -inf : inf;
  float best = -inf;
  int64_t best_id = -1;
  bool bad = false;

  for (int64_t b0 = P.begin; b0 < P.end; b0 += kBlock) {
    const int n = static_cast<int>(P.end - b0 < kBlock ? P.end - b0 : kBlock);
    const float bmax = load_block<Kind>(P.row, b0, n, xb, &bad);
    if (bad) break;
    if (bmax == -inf) continue;
    if (bmax > m) {
      if (SUMS && m != -inf) {
        const double delta = static_cast<double>(m) - static_cast<double>(bmax);
        const double sc = std::exp(delta);
        sum_t = sc * (sum_t + delta * sum_s);
        sum_s = sc * sum_s;
      }
      m = bmax;
    }
    if (SUMS) {
      float s, t;
      exp_sums<SUMS>(xb, n, m, &s, &t);
      sum_s += s;
      sum_t += t;
    }
    if (bmax > thr) {
      for (int i = 0; i < n; ++i) {
        if (xb[i] > thr) {
          n_top = top_insert(R.top_val, R.top_id, n_top, kp, xb[i], b0 + i);
          if (n_top == kp) thr = R.top_val[kp - 1];
        }
      }
    }
    if (P.sample && bmax + P.noise_bound > best) {
#ifdef EK_AVX2
      // Queue the quads holding a column with x + G > best (best as of the block's start:
      // a superset of the one-by-one test, which the per-column test below then narrows),
      // then run Philox on 16 queued quads at a time.
      int32_t qs[kBlock / 4 + 16];
      int nq = 0;
      const __m256 vb = _mm256_set1_ps(best), vg = _mm256_set1_ps(P.noise_bound);
      int q = 0;
      for (; q + 8 <= n; q += 8) {
        const int m8 = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_add_ps(_mm256_loadu_ps(xb + q), vg), vb, _CMP_GT_OQ));
        qs[nq] = q;
        nq += (m8 & 0x0F) != 0;
        qs[nq] = q + 4;
        nq += (m8 & 0xF0) != 0;
      }
      for (; q < n; q += 4) {
        bool any = false;
        for (int l = 0; l < 4 && q + l < n; ++l) any |= xb[q + l] + P.noise_bound > best;
        qs[nq] = q;
        nq += any;
      }
      alignas(32) uint32_t words[4][16];
      for (int j = 0; j < nq; j += 16) {
        const int cnt = nq - j < 16 ? nq - j : 16;
        alignas(32) int32_t ctr[16];
        for (int i = 0; i < 16; ++i) ctr[i] = static_cast<int32_t>((b0 + qs[j + (i < cnt ? i : 0)]) >> 2);
        __m256i wa[4], wb[4];
        philox8x2(_mm256_load_si256(reinterpret_cast<const __m256i*>(ctr)),
                  _mm256_load_si256(reinterpret_cast<const __m256i*>(ctr + 8)), P.row_index, P.ctr2, P.ctr3,
                  P.key0, P.key1, wa, wb);
        for (int l = 0; l < 4; ++l) {
          _mm256_store_si256(reinterpret_cast<__m256i*>(words[l]), wa[l]);
          _mm256_store_si256(reinterpret_cast<__m256i*>(words[l] + 8), wb[l]);
        }
        for (int i = 0; i < cnt; ++i) {
          const uint32_t w[4] = {words[0][i], words[1][i], words[2][i], words[3][i]};
          score_quad(P, xb, n, b0, qs[j + i], w, best, best_id);
        }
      }
#else
      for (int q = 0; q < n; q += 4) {
        bool any = false;
        for (int l = 0; l < 4 && q + l < n; ++l) any |= xb[q + l] + P.noise_bound > best;
        if (!any) continue;
        uint32_t c[4] = {static_cast<uint32_t>((b0 + q) >> 2), P.row_index, P.ctr2, P.ctr3};
        philox4x32_10(c, P.key0, P.key1);
        score_quad(P, xb, n, b0, q, c, best, best_id);
      }
#endif
    }
  }
  R.bad = bad;
  R.m = m;
  R.s = sum_s;
  R.t = sum_t;
  R.n_top = n_top;
  R.best_score = best;
  R.best_id = best_id;
}

}  // namespace

ChunkFn EK_PORTABLE_NAME(chunk_fn)(int elem_kind, int sums) {
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

void EK_PORTABLE_NAME(uniforms)(uint32_t row, int64_t cols, uint32_t key0, uint32_t key1, uint32_t ctr2,
                     uint32_t ctr3, float* out) {
  int64_t c = 0;
#ifdef EK_AVX2
  for (; c + 64 <= cols; c += 64) {  // 16 counters: 64 columns
    __m256i wa[4], wb[4];
    const __m256i q = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(c >> 2)),
                                       _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    philox8x2(q, _mm256_add_epi32(q, _mm256_set1_epi32(8)), row, ctr2, ctr3, key0, key1, wa, wb);
    alignas(32) uint32_t words[4][16];
    for (int l = 0; l < 4; ++l) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(words[l]), wa[l]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(words[l] + 8), wb[l]);
    }
    for (int i = 0; i < 16; ++i)
      for (int l = 0; l < 4; ++l) out[c + 4 * i + l] = uint_to_uniform(words[l][i]);
  }
#endif
  for (; c < cols; c += 4) {
    uint32_t w[4] = {static_cast<uint32_t>(c >> 2), row, ctr2, ctr3};
    philox4x32_10(w, key0, key1);
    for (int l = 0; l < 4 && c + l < cols; ++l) out[c + l] = uint_to_uniform(w[l]);
  }
}

}  // namespace eager_cpu
