// Shared declarations of the C++ CPU kernels (no torch headers: this file is also
// included by the AVX-512 translation unit, which must not instantiate torch's inline
// functions with AVX-512 code).
//
// Work is split into chunks: a chunk is a contiguous column range [begin, end) of one row.
// A chunk kernel makes one pass over its columns in blocks of kBlock elements and leaves a
// ChunkResult: the running max m, s = sum exp(x - m), t = sum exp(x - m) (x - m), the
// running top-kp list (value desc, id asc), the best Gumbel score and its column, and
// whether a NaN / +inf was seen. The chunks of a row are merged in column order, so the
// result depends on the shape only, never on the thread count.
#pragma once

#include <cstdint>

namespace eager_cpu {

constexpr int kMaxK = 64;          // widest top-k list (ops.py rejects larger on fused backends)
constexpr int64_t kBlock = 256;    // elements per block: a block stays in L1 between sub-passes
constexpr int kGumbelTable = 32;   // Gumbel upper bounds indexed by lzcnt(2^31 - 1 - folded)

// Philox-4x32-10 constants (as triton.language.random and eager_kernels.kernels.reference).
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr float kUniformScale = 4.6566127342e-10f;  // reference.UNIFORM_SCALE (== UNIFORM_MIN)

// exp(d) = 2^n 2^f of the vector kernels (AVX-512 and AVX2): n = round(d log2 e),
// f = d log2 e - n from log2 e split in two (kLog2EHi + kLog2ELo), 2^f by a degree-6
// polynomial on [-1/2, 1/2] (coefficients highest first).
constexpr float kLog2E = 1.44269504088896341f;
constexpr float kLog2EHi = 1.44269502f;
constexpr float kLog2ELo = 1.92596299e-8f;
constexpr float kExp2Poly[7] = {1.535336188e-4f, 1.339887440e-3f, 9.618437357e-3f, 5.550332471e-2f,
                                2.402264791e-1f, 6.931472028e-1f, 1.0f};

// log(x) for positive normal x (Cephes logf) of the vector kernels: x = 2^e m with m in
// (sqrt(1/2), sqrt(2)], f = m - 1, log x = f - f^2/2 + f^3 P(f) + e ln 2 (ln 2 split in
// kLn2Hi + kLn2Lo); P's coefficients highest first. About 1 ulp.
constexpr float kLogPoly[9] = {7.0376836292e-2f, -1.1514610310e-1f, 1.1676998740e-1f,
                               -1.2420140846e-1f, 1.4249322787e-1f, -1.6668057665e-1f,
                               2.0000714765e-1f, -2.4999993993e-1f, 3.3333331174e-1f};
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440e-4f;

enum ElemKind { kF32 = 0, kBF16 = 1, kF16 = 2 };

struct ChunkParams {
  const void* row;          // the row's first element
  int64_t begin, end;       // columns [begin, end); begin is a multiple of kBlock
  uint32_t row_index;       // Philox counter word 1
  int kp;                   // top-k list width, 0..kMaxK (0: no list)
  bool sample;              // Gumbel arg-max wanted (temperature > 0)
  float temperature;
  float noise_bound;        // fl(temperature * G), G >= every -log(-log u) the stream gives
  uint32_t key0, key1;      // seed low / high word
  uint32_t ctr2, ctr3;      // offset low / high word
  const float* gumbel_bound;  // [kGumbelTable] bounds by lzcnt bucket (see ops.cpp)
  float gumbel_line_b;        // gumbel_line_b(gumbel_bound), the AVX2 kernels' line (below)
};

struct ChunkResult {
  float m;                  // running max
  double s, t;              // sums relative to m (when the kernel computes them)
  bool bad;                 // a NaN or +inf was seen
  int n_top;                // entries in the top list (finite values only)
  float* top_val;           // [kp], sorted by (value desc, id asc)
  int64_t* top_id;
  float best_score;         // Gumbel arg-max so far (-inf: none)
  int64_t best_id;
};

using ChunkFn = void (*)(const ChunkParams&, ChunkResult&);

// AVX-512 kernels (csrc/kernels_avx512.cpp); nullptr when the compiler could not build them.
// sums: 0 = none, 1 = s only, 2 = s and t.
ChunkFn avx512_chunk_fn(int elem_kind, int sums);
bool avx512_cpu_supported();
// The package's uniform stream for one row, columns [0, cols), by the AVX-512 code path.
void avx512_uniforms(uint32_t row, int64_t cols, uint32_t key0, uint32_t key1, uint32_t ctr2,
                     uint32_t ctr3, float* out);

// AVX2 + FMA + F16C kernels (csrc/kernels_avx2.cpp); nullptr when not built.
ChunkFn avx2_chunk_fn(int elem_kind, int sums);
bool avx2_cpu_supported();
void avx2_uniforms(uint32_t row, int64_t cols, uint32_t key0, uint32_t key1, uint32_t ctr2,
                   uint32_t ctr3, float* out);

// Portable kernels (csrc/kernels_scalar.cpp).
ChunkFn scalar_chunk_fn(int elem_kind, int sums);
void scalar_uniforms(uint32_t row, int64_t cols, uint32_t key0, uint32_t key1, uint32_t ctr2,
                     uint32_t ctr3, float* out);

// ------------------------------------------------------------------------------------
// Scalar helpers shared by both paths (static: each translation unit keeps its own copy)
// ------------------------------------------------------------------------------------

static inline void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    const uint64_t pb = static_cast<uint64_t>(c[2]) * kPhiloxRoundB;
    const uint64_t pa = static_cast<uint64_t>(c[0]) * kPhiloxRoundA;
    const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c[1] ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(pa >> 32) ^ c[3] ^ k1;
    c[1] = static_cast<uint32_t>(pb);
    c[3] = static_cast<uint32_t>(pa);
    c[0] = n0;
    c[2] = n2;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
}

// tl.uint_to_uniform_float, then the clamp at UNIFORM_MIN.
static inline float uint_to_uniform(uint32_t r) {
  const uint32_t folded = (r & 0x80000000u) ? ~r : r;
  const float u = static_cast<float>(static_cast<int32_t>(folded)) * kUniformScale;
  return u < kUniformScale ? kUniformScale : u;
}

// The AVX2 kernels' Gumbel bound as a line in the bucket lz (no table lookup there):
// kGumbelLineA lz + gumbel_line_b(bound) >= bound[lz] for every lz in 1..23, the buckets a
// lane can fall in after its low 8 bits are cleared (kernels_avx2.cpp; lz = 32, d < 256,
// comes out as lz = 158 there, far above every bound). The 1e-4 covers the float rounding
// of the line's evaluation.
constexpr float kGumbelLineA = 0.693147181f;  // ln 2: the bounds grow by about ln 2 a bucket
static inline float gumbel_line_b(const float* bound) {
  double b = -1e30;
  for (int lz = 1; lz <= 23; ++lz) {
    const double gap = static_cast<double>(bound[lz]) - static_cast<double>(kGumbelLineA) * lz;
    b = gap > b ? gap : b;
  }
  return static_cast<float>(b + 1e-4);
}

// Insert (x, col) into the sorted list (value desc, id asc). col is larger than every id
// already in the list (columns arrive in increasing order), so x goes after equal values.
// The caller has checked that x beats the current kp-th entry (or the list is not full).
static inline int top_insert(float* val, int64_t* id, int n, int kp, float x, int64_t col) {
  int pos = n < kp ? n : kp - 1;
  while (pos > 0 && val[pos - 1] < x) {
    val[pos] = val[pos - 1];
    id[pos] = id[pos - 1];
    --pos;
  }
  val[pos] = x;
  id[pos] = col;
  return n < kp ? n + 1 : kp;
}

}  // namespace eager_cpu
