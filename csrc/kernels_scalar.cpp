// Portable chunk kernels: the same algorithm as kernels_avx512.cpp and kernels_avx2.cpp in
// plain C++, for CPUs without AVX2 (and selectable with EAGER_KERNELS_CPU_ISA=scalar or
// _C.set_isa("scalar"), which is how the tests cover it). Accurate libm exp/log; same
// blocks, same filters, same results up to float rounding of the sums and scores.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "eager_cpu.h"


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
      for (int q = 0; q < n; q += 4) {
        bool any = false;
        for (int l = 0; l < 4 && q + l < n; ++l) any |= xb[q + l] + P.noise_bound > best;
        if (!any) continue;
        uint32_t c[4] = {static_cast<uint32_t>((b0 + q) >> 2), P.row_index, P.ctr2, P.ctr3};
        philox4x32_10(c, P.key0, P.key1);
        score_quad(P, xb, n, b0, q, c, best, best_id);
      }
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

ChunkFn scalar_chunk_fn(int elem_kind, int sums) {
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

void scalar_uniforms(uint32_t row, int64_t cols, uint32_t key0, uint32_t key1, uint32_t ctr2,
                     uint32_t ctr3, float* out) {
  int64_t c = 0;
  for (; c < cols; c += 4) {
    uint32_t w[4] = {static_cast<uint32_t>(c >> 2), row, ctr2, ctr3};
    philox4x32_10(w, key0, key1);
    for (int l = 0; l < 4 && c + l < cols; ++l) out[c + l] = uint_to_uniform(w[l]);
  }
}

}  // namespace eager_cpu
