// eager_kernels.kernels._C: the C++ CPU implementations of every op.
//
// - The row pass (run_pass) splits each row into chunks whose layout depends only on the
//   shape (B, V), runs one chunk kernel per chunk in parallel (at::parallel_for), and merges
//   the chunks of each row in column order: results never depend on the thread count.
// - The chunk kernel is AVX-512 when the CPU has it (kernels_avx512.cpp) and is not an AMD
//   Zen 4, else AVX2 + FMA + F16C (kernels_avx2.cpp), else portable C++
//   (kernels_scalar.cpp); EAGER_KERNELS_CPU_ISA=avx512 / avx2 / scalar or _C.set_isa forces
//   a tier (default_isa).
// - Registered for the CPU dispatch key against the schemas eager_kernels/_registry.py
//   defines, and bound with pybind11 for the direct (no dispatcher) path.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
#endif
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "eager_cpu.h"

namespace eager_cpu {
namespace {

constexpr const char* kMsgBadValue = "logits: found NaN or +inf (only finite values and -inf are allowed)";
constexpr const char* kMsgEmptyRow =
    "logits: a row has no finite entry (all -inf); its distribution is undefined";

// ---------------------------------------------------------------------------------------
// Gumbel noise bounds
// ---------------------------------------------------------------------------------------

// Upper bounds of -log(-log u) for the uniforms the stream can give, bucketed by
// lz = lzcnt(2^31 - 1 - folded) (folded: the 31-bit integer u is made from). A bucket's
// largest u comes from its smallest 2^31 - 1 - folded; the bound is the exact value there
// plus a margin far above the kernels' log error. Entry 0 holds lz = 32 (folded = 2^31 - 1),
// the largest of all: about 16.64, tighter than reference.GUMBEL_MAX = 24.
struct GumbelTable {
  float bound[kGumbelTable];
  float line_b;  // gumbel_line_b(bound): the AVX2 kernels' line above these bounds
  GumbelTable() {
    for (int lz = 1; lz <= 32; ++lz) {
      const uint32_t dmin = lz == 32 ? 0u : (1u << (31 - lz));
      const uint32_t folded = 0x7FFFFFFFu - dmin;
      float u = static_cast<float>(static_cast<int32_t>(folded)) * kUniformScale;
      u = u < kUniformScale ? kUniformScale : u;
      const double g = -std::log(-std::log(static_cast<double>(u)));
      bound[lz & 31] = static_cast<float>(g + 1e-3 + 1e-4 * std::fabs(g));
    }
    line_b = gumbel_line_b(bound);
  }
  float max() const { return bound[0]; }
};
const GumbelTable& gumbel_table() {
  static const GumbelTable table;
  return table;
}

// ---------------------------------------------------------------------------------------
// Instruction set choice
// ---------------------------------------------------------------------------------------

enum class Isa { kScalar, kAvx2, kAvx512 };

// AMD family 19h with AVX-512 is Zen 4, which runs 512-bit operations as two 256-bit halves.
// There the AVX2 tier (which has the AVX2-only changes of docs/cpu_tiers.md) measured the
// faster in every cell of benchmarks/bench_cpu_isa.py (docs/cpu_tiers.md#zen4-pick); no Intel
// AVX-512 CPU has been measured, so elsewhere AVX-512 stays the pick.
bool amd_zen4() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
  const bool amd = b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u;  // "AuthenticAMD"
  if (!amd || !__get_cpuid(1, &a, &b, &c, &d)) return false;
  const unsigned base = (a >> 8) & 0xF, ext = (a >> 20) & 0xFF;
  return (base == 0xF ? base + ext : base) == 0x19;
#else
  return false;
#endif
}

Isa default_isa() {
  const char* env = std::getenv("EAGER_KERNELS_CPU_ISA");
  const std::string want = env != nullptr ? env : "";
  if (want == "scalar") return Isa::kScalar;
  if (want == "avx2" && avx2_cpu_supported()) return Isa::kAvx2;
  if (want == "avx512" && avx512_cpu_supported()) return Isa::kAvx512;
  if (avx512_cpu_supported() && !(amd_zen4() && avx2_cpu_supported())) return Isa::kAvx512;
  return avx2_cpu_supported() ? Isa::kAvx2 : Isa::kScalar;
}
Isa& current_isa() {
  static Isa isa = default_isa();
  return isa;
}

std::string isa_name() {
  switch (current_isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

void set_isa(const std::string& name) {
  if (name == "scalar") {
    current_isa() = Isa::kScalar;
  } else if (name == "avx512") {
    TORCH_CHECK_VALUE(avx512_cpu_supported(), "set_isa: this CPU has no AVX-512 F/BW/DQ/VL/CD");
    current_isa() = Isa::kAvx512;
  } else if (name == "avx2") {
    TORCH_CHECK_VALUE(avx2_cpu_supported(), "set_isa: this CPU has no AVX2/FMA/F16C");
    current_isa() = Isa::kAvx2;
  } else if (name == "auto") {
    current_isa() = default_isa();
  } else {
    TORCH_CHECK_VALUE(false, "set_isa: expected 'auto', 'avx512', 'avx2' or 'scalar', got ", name);
  }
}

ChunkFn chunk_fn(int kind, int sums) {
  if (current_isa() == Isa::kAvx512) {
    if (ChunkFn fn = avx512_chunk_fn(kind, sums)) return fn;
  }
  if (current_isa() == Isa::kAvx2) {
    if (ChunkFn fn = avx2_chunk_fn(kind, sums)) return fn;
  }
  return scalar_chunk_fn(kind, sums);
}

int elem_kind(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return kF32;
    case at::kBFloat16: return kBF16;
    case at::kHalf: return kF16;
    default: TORCH_CHECK_TYPE(false, "logits: expected float32, bfloat16 or float16, got ", t.scalar_type());
  }
  return -1;
}

float load_elem(int kind, const char* row, int64_t i) {
  if (kind == kF32) return reinterpret_cast<const float*>(row)[i];
  const uint16_t h = reinterpret_cast<const uint16_t*>(row)[i];
  if (kind == kBF16) {
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
  return static_cast<float>(c10::Half(h, c10::Half::from_bits()));
}

// ---------------------------------------------------------------------------------------
// The row pass
// ---------------------------------------------------------------------------------------

struct Temperature {
  const float* per_row = nullptr;  // float32 [B], or null: `scalar` for every row
  float scalar = 0.0f;
  float at(int64_t r) const { return per_row ? per_row[r] : scalar; }
};

// The Philox key and counter. Scalar seed: key = seed, counter word 1 = the row index.
// Per-row seeds (an int64 [B] tensor): key = seed[r], counter word 1 = 0, so a row's draws
// depend on its own key only, never on its place in the batch.
struct Counter {
  uint64_t seed = 0, offset = 0;
  const int64_t* per_row_seed = nullptr;  // int64 [B], or null: `seed` for every row
};

struct RowResult {
  double m, s, t;  // merged max and sums relative to it
  int64_t token;   // Gumbel arg-max (sampling rows), else -1
};

struct PassResult {
  int kp = 0;
  bool bad = false, empty = false;
  std::vector<RowResult> rows;
  std::vector<float> top_val;    // [B, kp], rows filled to kp (with -inf entries if needed)
  std::vector<int64_t> top_id;
};

void check_logits(const at::Tensor& logits) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "logits: expected a 2-D tensor [B, V], got ", logits.sizes());
  TORCH_CHECK_VALUE(logits.device().is_cpu(), "logits: expected a CPU tensor, got ", logits.device());
  elem_kind(logits);
  TORCH_CHECK_VALUE(logits.size(1) > 0, "logits: the vocabulary dimension V is 0");
  TORCH_CHECK_VALUE(logits.size(0) == 0 || logits.stride(1) == 1,
                    "logits: the last dimension must be contiguous (stride 1), got strides ", logits.strides());
  TORCH_CHECK_VALUE(logits.size(1) < (int64_t{1} << 31), "logits: V must be below 2^31");
}

// Chunks per row: a function of (B, V) only, never of the thread count. Rows are split
// into up to ceil(4 / B) chunks (B = 1 keeps both cores of a 2-core machine busy, with two
// chunks each for balance), never below 2048 columns: every chunk restarts its top-k
// filter and its Gumbel bound, so more chunks cost work.
void chunk_layout(int64_t rows, int64_t vocab, int64_t& nchunks, int64_t& chunk_len) {
  // A single row: one chunk per ~16k columns, 1..4 (V = 32000: 2; V >= 64000: 4); each chunk
  // restarts the top-k filter and adds a merge, which at V = 32000 cost more than a third
  // thread saves (measured: docs/cpu_tiers.md#threads-and-chunks).
  // A few rows: 4 items in all, for balance; 4 rows and more: a row per item. Never the
  // thread count: results must not depend on it (test_thread_count_independent).
  const int64_t want = rows == 1 ? std::min<int64_t>(4, std::max<int64_t>(1, vocab / 16000))
                                 : rows >= 4 ? 1 : (4 + rows - 1) / rows;
  const int64_t max_by_size = std::max<int64_t>(1, vocab / 2048);
  nchunks = std::min(want, max_by_size);
  chunk_len = (vocab + nchunks - 1) / nchunks;
  chunk_len = (chunk_len + kBlock - 1) / kBlock * kBlock;
  nchunks = (vocab + chunk_len - 1) / chunk_len;
}

// sums: 0 = none, 1 = s (log-sum-exp), 2 = s and t (full entropy).
void run_pass(const at::Tensor& logits, int kp, int sums, bool sample, const Temperature& temp,
              const Counter& ctr, PassResult& out) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  const int kind = elem_kind(logits);
  const int64_t row_bytes = logits.stride(0) * static_cast<int64_t>(logits.element_size());
  const char* base = static_cast<const char*>(logits.data_ptr());
  const ChunkFn fn = chunk_fn(kind, sums);
  const GumbelTable& gt = gumbel_table();

  int64_t nch, clen;
  chunk_layout(rows, vocab, nch, clen);
  const int64_t items = rows * nch;
  // Per-chunk scratch, reused across calls by the calling thread.
  thread_local std::vector<ChunkResult> chunk_res;
  thread_local std::vector<float> chunk_val;
  thread_local std::vector<int64_t> chunk_id;
  chunk_res.resize(items);
  chunk_val.resize(std::max<int64_t>(1, items * kp));
  chunk_id.resize(std::max<int64_t>(1, items * kp));
  ChunkResult* res = chunk_res.data();
  float* cval = chunk_val.data();
  int64_t* cid = chunk_id.data();

  const uint32_t ctr2 = static_cast<uint32_t>(ctr.offset), ctr3 = static_cast<uint32_t>(ctr.offset >> 32);
  auto work = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = i / nch, c = i % nch;
      ChunkParams p;
      p.row = base + r * row_bytes;
      p.begin = c * clen;
      p.end = std::min(vocab, p.begin + clen);
      const uint64_t key = ctr.per_row_seed ? static_cast<uint64_t>(ctr.per_row_seed[r]) : ctr.seed;
      p.row_index = ctr.per_row_seed ? 0u : static_cast<uint32_t>(r);
      p.kp = kp;
      const float t = temp.at(r);
      p.sample = sample && t > 0.0f;
      p.temperature = t;
      p.noise_bound = t * gt.max();
      p.key0 = static_cast<uint32_t>(key);
      p.key1 = static_cast<uint32_t>(key >> 32);
      p.ctr2 = ctr2;
      p.ctr3 = ctr3;
      p.gumbel_bound = gt.bound;
      p.gumbel_line_b = gt.line_b;
      ChunkResult& R = res[i];
      R.top_val = cval + i * kp;
      R.top_id = cid + i * kp;
      fn(p, R);
    }
  };
  // Small inputs run on the calling thread: a parallel region costs microseconds, more when
  // the other core is busy. The bound (32768 logits, a sampling pass counted twice) keeps B =
  // 1, V = 32000 greedy on the calling thread and its sampling pass on two, each the faster
  // there (measured: docs/cpu_tiers.md#threads-and-chunks). The chunk layout, and so the
  // result, is the same either way.
  // Otherwise the threads take items one at a time from a shared counter (dynamic, not a
  // fixed share each): chunks of the same size differ in work (the Gumbel candidates of a row
  // depend on its values), and a fixed split in index order left one thread idle longer
  // (docs/cpu_tiers.md#threads-and-chunks). Which thread runs an item never changes its
  // result (one ChunkResult slot per item).
  if (rows * vocab * (sample ? 2 : 1) <= 32768 || items == 1) {
    work(0, items);
  } else {
    std::atomic<int64_t> next{0};
    at::parallel_for(0, std::min<int64_t>(items, at::get_num_threads()), 1, [&](int64_t, int64_t) {
      for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < items;
           i = next.fetch_add(1, std::memory_order_relaxed)) {
        work(i, i + 1);
      }
    });
  }

  // Merge each row's chunks in column order.
  out.kp = kp;
  out.bad = false;
  out.empty = false;
  out.rows.resize(rows);
  out.top_val.resize(rows * kp);
  out.top_id.resize(rows * kp);
  float tmp_val[kMaxK];
  int64_t tmp_id[kMaxK];
  for (int64_t r = 0; r < rows; ++r) {
    double M = -std::numeric_limits<double>::infinity();
    float best = -std::numeric_limits<float>::infinity();
    int64_t best_id = -1;
    for (int64_t c = 0; c < nch; ++c) {
      const ChunkResult& R = res[r * nch + c];
      out.bad |= R.bad;
      M = std::max(M, static_cast<double>(R.m));
      if (R.best_score > best) {
        best = R.best_score;
        best_id = R.best_id;
      }
    }
    double S = 0.0, T = 0.0;
    if (sums && M != -std::numeric_limits<double>::infinity()) {
      for (int64_t c = 0; c < nch; ++c) {
        const ChunkResult& R = res[r * nch + c];
        if (R.m == -std::numeric_limits<float>::infinity()) continue;
        const double d = static_cast<double>(R.m) - M;
        const double sc = std::exp(d);
        S += sc * R.s;
        T += sc * (R.t + d * R.s);
      }
    }
    out.empty |= M == -std::numeric_limits<double>::infinity();
    out.rows[r] = RowResult{M, S, T, best_id};
    if (kp == 0) continue;
    // Top lists: merge (value desc, id asc); earlier chunks hold the smaller ids.
    float* val = out.top_val.data() + r * kp;
    int64_t* id = out.top_id.data() + r * kp;
    int n = 0;
    for (int64_t c = 0; c < nch; ++c) {
      const ChunkResult& R = res[r * nch + c];
      int a = 0, b = 0, o = 0;
      while (o < kp && (a < n || b < R.n_top)) {
        if (b >= R.n_top || (a < n && val[a] >= R.top_val[b])) {
          tmp_val[o] = val[a];
          tmp_id[o++] = id[a++];
        } else {
          tmp_val[o] = R.top_val[b];
          tmp_id[o++] = R.top_id[b++];
        }
      }
      std::copy(tmp_val, tmp_val + o, val);
      std::copy(tmp_id, tmp_id + o, id);
      n = o;
    }
    // Fewer than kp finite logits: the rest are the -inf entries with the smallest ids.
    if (n < kp) {
      const char* row = base + r * row_bytes;
      for (int64_t i = 0; i < vocab && n < kp; ++i) {
        if (load_elem(kind, row, i) == -std::numeric_limits<float>::infinity()) {
          val[n] = -std::numeric_limits<float>::infinity();
          id[n++] = i;
        }
      }
    }
  }
}

// The calling thread's pass result, reused across calls (its vectors keep their capacity:
// no allocation per step).
PassResult& pass_scratch() {
  thread_local PassResult pr;
  return pr;
}

void raise_on_bad(const PassResult& pr) {
  TORCH_CHECK_VALUE(!pr.bad, kMsgBadValue);
  TORCH_CHECK_VALUE(!pr.empty, kMsgEmptyRow);
}

double full_entropy(const RowResult& r) { return std::log(r.s) - r.t / r.s; }

// Entropy of the renormalised distribution of the K largest logits (the -inf among them
// contribute nothing).
double topk_entropy(const float* val, int K) {
  const double v0 = val[0];
  double S = 0.0, T = 0.0;
  for (int i = 0; i < K; ++i) {
    if (val[i] == -std::numeric_limits<float>::infinity()) break;
    const double d = static_cast<double>(val[i]) - v0;
    const double e = std::exp(d);
    S += e;
    T += e * d;
  }
  return std::log(S) - T / S;
}

at::TensorOptions f32() { return at::TensorOptions().dtype(at::kFloat); }
at::TensorOptions i64() { return at::TensorOptions().dtype(at::kLong); }

// ---------------------------------------------------------------------------------------
// Ops (shared by the dispatcher and the direct path)
// ---------------------------------------------------------------------------------------

at::Tensor entropy_impl(const at::Tensor& logits, int64_t top_k) {
  check_logits(logits);
  const int64_t rows = logits.size(0);
  TORCH_CHECK_VALUE(top_k <= 0 || (top_k <= logits.size(1) && top_k <= kMaxK),
                    "top_k: expected 1 <= top_k <= min(V, ", kMaxK, "), got ", top_k);
  at::Tensor out = at::empty({rows}, f32());
  if (rows == 0) return out;
  PassResult& pr = pass_scratch();
  const int kp = top_k > 0 ? static_cast<int>(top_k) : 0;
  run_pass(logits, kp, /*sums=*/kp == 0 ? 2 : 0, /*sample=*/false, Temperature{}, Counter{}, pr);
  raise_on_bad(pr);
  float* o = out.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    o[r] = static_cast<float>(kp ? topk_entropy(pr.top_val.data() + r * kp, kp) : full_entropy(pr.rows[r]));
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> topk_impl(const at::Tensor& logits, int64_t k) {
  check_logits(logits);
  const int64_t rows = logits.size(0);
  TORCH_CHECK_VALUE(k >= 1 && k <= logits.size(1) && k <= kMaxK,
                    "k: expected 1 <= k <= min(V, ", kMaxK, "), got ", k);
  at::Tensor lp = at::empty({rows, k}, f32());
  at::Tensor ids = at::empty({rows, k}, i64());
  if (rows == 0) return {lp, ids};
  PassResult& pr = pass_scratch();
  run_pass(logits, static_cast<int>(k), 1, false, Temperature{}, Counter{}, pr);
  raise_on_bad(pr);
  float* lpp = lp.data_ptr<float>();
  int64_t* idp = ids.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    const double lse = pr.rows[r].m + std::log(pr.rows[r].s);
    for (int64_t j = 0; j < k; ++j) {
      lpp[r * k + j] = static_cast<float>(pr.top_val[r * k + j] - lse);
      idp[r * k + j] = pr.top_id[r * k + j];
    }
  }
  return {lp, ids};
}

at::Tensor sample_impl(const at::Tensor& logits, const Temperature& temp, const Counter& ctr) {
  check_logits(logits);
  const int64_t rows = logits.size(0);
  at::Tensor out = at::empty({rows}, i64());
  if (rows == 0) return out;
  bool any_greedy = false, any_sample = false;
  for (int64_t r = 0; r < rows; ++r) {
    const float t = temp.at(r);
    TORCH_CHECK_VALUE(t >= 0.0f && std::isfinite(t),
                      "temperature: expected finite values >= 0 (0 = greedy), got ", t);
    (t == 0.0f ? any_greedy : any_sample) = true;
  }
  PassResult& pr = pass_scratch();
  run_pass(logits, any_greedy ? 1 : 0, 0, any_sample, temp, ctr, pr);
  raise_on_bad(pr);
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) o[r] = temp.at(r) == 0.0f ? pr.top_id[r] : pr.rows[r].token;
  return out;
}

void check_history(const at::Tensor& values, const at::Tensor& count) {
  TORCH_CHECK_VALUE(values.dim() == 2 && values.scalar_type() == at::kFloat && values.is_contiguous() &&
                        values.device().is_cpu(),
                    "history values: expected a contiguous float32 CPU tensor [G, capacity]");
  TORCH_CHECK_VALUE(count.dim() == 1 && count.scalar_type() == at::kLong && count.is_contiguous() &&
                        count.size(0) == values.size(0),
                    "history count: expected a contiguous int64 tensor [G]");
}

const int64_t* group_ptr(const at::Tensor& group, int64_t rows, int64_t groups) {
  TORCH_CHECK_VALUE(group.dim() == 1 && group.size(0) == rows && group.scalar_type() == at::kLong &&
                        group.is_contiguous() && group.device().is_cpu(),
                    "group: expected a contiguous int64 CPU tensor [", rows, "]");
  const int64_t* g = group.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK_VALUE(g[r] >= 0 && g[r] < groups, "group: ids must lie in [0, ", groups,
                      ") (the history's num_groups)");
  }
  return g;
}

// torch.lerp's arithmetic (its vectorised CPU kernel: a fused multiply-add on either side
// of weight 0.5), so the threshold equals torch.quantile's value.
float lerp_like_torch(float a, float b, float w) {
  return std::abs(w) < 0.5f ? std::fma(w, b - a, a) : std::fma(w - 1.0f, b - a, b);
}

void threshold_into(const at::Tensor& values, const at::Tensor& count, const int64_t* g, int64_t rows,
                    double q, double theta, double initial, float* out) {
  const float* v = values.data_ptr<float>();
  const int64_t* cnt = count.data_ptr<int64_t>();
  const int64_t cap = values.size(1);
  const float q32 = static_cast<float>(q / 100.0);
  const float theta32 = static_cast<float>(theta);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = cnt[g[r]];
    if (n <= 0) {
      out[r] = static_cast<float>(initial);
      continue;
    }
    const float rank = q32 * static_cast<float>(n - 1);
    const int64_t below = static_cast<int64_t>(rank);
    const int64_t above = std::min<int64_t>(static_cast<int64_t>(std::ceil(rank)), cap - 1);
    const float* row = v + g[r] * cap;
    const float qv = lerp_like_torch(row[below], row[above], rank - static_cast<float>(below));
    out[r] = std::max(qv, theta32);
  }
}

at::Tensor threshold_impl(const at::Tensor& values, const at::Tensor& count, const at::Tensor& group,
                          double q, double theta, double initial) {
  check_history(values, count);
  const int64_t rows = group.size(0);
  const int64_t* g = group_ptr(group, rows, values.size(0));
  at::Tensor out = at::empty({rows}, f32());
  threshold_into(values, count, g, rows, q, theta, initial, out.data_ptr<float>());
  return out;
}

// Merge each group's new values (sorted) into its sorted buffer from the back; a group
// whose new values do not all fit keeps its old values and gets overflow set.
void append_from(const at::Tensor& values, const at::Tensor& count, const at::Tensor& overflow,
                 const float* ent, const int64_t* g, int64_t rows) {
  TORCH_CHECK_VALUE(overflow.dim() == 1 && overflow.scalar_type() == at::kBool && overflow.is_contiguous() &&
                        overflow.size(0) == values.size(0),
                    "history overflow: expected a contiguous bool tensor [G]");
  if (rows == 0) return;
  float* v = values.data_ptr<float>();
  int64_t* cnt = count.data_ptr<int64_t>();
  bool* ovf = overflow.data_ptr<bool>();
  const int64_t cap = values.size(1);
  // Rows bucketed by group (stable: row order inside a group); scratch reused across calls.
  thread_local std::vector<int64_t> order;
  thread_local std::vector<float> fresh;
  order.resize(rows);
  for (int64_t r = 0; r < rows; ++r) order[r] = r;
  if (rows > 1) std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return g[a] < g[b]; });
  for (int64_t i = 0; i < rows;) {
    const int64_t grp = g[order[i]];
    int64_t j = i;
    fresh.clear();
    while (j < rows && g[order[j]] == grp) fresh.push_back(ent[order[j++]]);
    i = j;
    const int64_t n_old = cnt[grp], n_new = static_cast<int64_t>(fresh.size());
    if (n_old + n_new > cap) {
      ovf[grp] = true;
      continue;
    }
    std::sort(fresh.begin(), fresh.end());
    float* buf = v + grp * cap;
    int64_t a = n_old - 1, b = n_new - 1, o = n_old + n_new - 1;
    while (b >= 0) {
      if (a >= 0 && buf[a] > fresh[b]) {
        buf[o--] = buf[a--];
      } else {
        buf[o--] = fresh[b--];
      }
    }
    cnt[grp] = n_old + n_new;
  }
}

void append_impl(const at::Tensor& values, const at::Tensor& count, const at::Tensor& overflow,
                 const at::Tensor& entropy, const at::Tensor& group) {
  check_history(values, count);
  const int64_t rows = entropy.size(0);
  TORCH_CHECK_VALUE(entropy.dim() == 1 && entropy.scalar_type() == at::kFloat && entropy.is_contiguous(),
                    "entropy: expected a contiguous float32 tensor [B]");
  const int64_t* g = group_ptr(group, rows, values.size(0));
  append_from(values, count, overflow, entropy.data_ptr<float>(), g, rows);
}

using StepOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The public API's capacity rule on CPU: ValueError before anything changes when a group
// would hold more than `capacity` values after this step's append (EntropyHistory.check_room
// says the same). Below the API the step flags the group instead (append_from).
void check_room(const at::Tensor& values, const at::Tensor& count, const int64_t* g, int64_t rows) {
  const int64_t* cnt = count.data_ptr<int64_t>();
  const int64_t cap = values.size(1);
  bool fits = true;  // the common case, decided without counting rows per group
  for (int64_t r = 0; r < rows && fits; ++r) fits = cnt[g[r]] + rows <= cap;
  if (fits) return;
  std::vector<int64_t> ids(g, g + rows);
  std::sort(ids.begin(), ids.end());
  for (int64_t i = 0; i < rows;) {
    int64_t j = i;
    while (j < rows && ids[j] == ids[i]) ++j;
    const int64_t need = cnt[ids[i]] + (j - i);
    TORCH_CHECK_VALUE(need <= cap, "EntropyHistory: group ", ids[i], " would hold ", need,
                      " values, over capacity ", cap, "; create the history with a larger capacity");
    i = j;
  }
}

StepOut step_impl(const at::Tensor& logits, const at::Tensor& values, const at::Tensor& count,
                  const at::Tensor& overflow, const at::Tensor& group, int64_t k, const Temperature& temp,
                  int64_t entropy_top_k, double q, double theta, double initial, const Counter& ctr,
                  bool room_check = false) {
  check_logits(logits);
  check_history(values, count);
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  TORCH_CHECK_VALUE(k >= 1 && k <= vocab && k <= kMaxK, "k: expected 1 <= k <= min(V, ", kMaxK, "), got ", k);
  TORCH_CHECK_VALUE(entropy_top_k <= 0 || (entropy_top_k <= vocab && entropy_top_k <= kMaxK),
                    "entropy_top_k: expected 1 <= entropy_top_k <= min(V, ", kMaxK, "), got ", entropy_top_k);
  at::Tensor ent = at::empty({rows}, f32());
  at::Tensor thr = at::empty({rows}, f32());
  at::Tensor branch = at::empty({rows}, at::TensorOptions().dtype(at::kBool));
  at::Tensor token = at::empty({rows}, i64());
  at::Tensor cand_ids = at::empty({rows, k}, i64());
  at::Tensor cand_lp = at::empty({rows, k}, f32());
  if (rows == 0) return {ent, thr, branch, token, cand_ids, cand_lp};
  const int64_t* g = group_ptr(group, rows, values.size(0));
  if (room_check) check_room(values, count, g, rows);
  bool any_sample = false;
  for (int64_t r = 0; r < rows; ++r) {
    const float t = temp.at(r);
    TORCH_CHECK_VALUE(t >= 0.0f && std::isfinite(t),
                      "temperature: expected finite values >= 0 (0 = greedy), got ", t);
    any_sample |= t > 0.0f;
  }
  const int kp = static_cast<int>(std::max<int64_t>(k, entropy_top_k));
  PassResult& pr = pass_scratch();
  run_pass(logits, kp, entropy_top_k > 0 ? 1 : 2, any_sample, temp, ctr, pr);
  raise_on_bad(pr);  // before any history change

  float* e = ent.data_ptr<float>();
  float* th = thr.data_ptr<float>();
  bool* br = branch.data_ptr<bool>();
  int64_t* tok = token.data_ptr<int64_t>();
  int64_t* ci = cand_ids.data_ptr<int64_t>();
  float* cl = cand_lp.data_ptr<float>();
  threshold_into(values, count, g, rows, q, theta, initial, th);
  for (int64_t r = 0; r < rows; ++r) {
    const RowResult& rr = pr.rows[r];
    const float* val = pr.top_val.data() + r * kp;
    const int64_t* id = pr.top_id.data() + r * kp;
    e[r] = static_cast<float>(entropy_top_k > 0 ? topk_entropy(val, static_cast<int>(entropy_top_k))
                                                : full_entropy(rr));
    br[r] = e[r] > th[r];
    tok[r] = temp.at(r) == 0.0f ? id[0] : rr.token;
    const double lse = rr.m + std::log(rr.s);
    for (int64_t j = 0; j < k; ++j) {
      ci[r * k + j] = id[j];
      cl[r * k + j] = static_cast<float>(val[j] - lse);
    }
  }
  append_from(values, count, overflow, e, g, rows);
  return {ent, thr, branch, token, cand_ids, cand_lp};
}

// ---------------------------------------------------------------------------------------
// Dispatcher entry points (tensors for temperature / seed / offset)
// ---------------------------------------------------------------------------------------

Temperature temperature_from_tensor(const at::Tensor& t, int64_t rows, at::Tensor& keep) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), "temperature: expected a CPU tensor");
  keep = t.to(at::kFloat).contiguous();
  Temperature temp;
  if (keep.numel() == 1 && rows != 1) {
    temp.scalar = keep.data_ptr<float>()[0];
  } else {
    TORCH_CHECK_VALUE(keep.numel() == rows, "temperature: expected a scalar or shape [", rows, "]");
    temp.per_row = keep.data_ptr<float>();
  }
  return temp;
}

uint64_t counter_from_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong && t.numel() == 1 && t.device().is_cpu(), name,
                   ": expected a one-element int64 CPU tensor");
  return static_cast<uint64_t>(*t.data_ptr<int64_t>());
}

// seed: a one-element int64 tensor (one key for the batch) or an int64 [B] tensor (a key per
// row; at B = 1 both forms draw the same numbers); `keep` holds the contiguous copy the Counter points into.
Counter counter_from_tensors(const at::Tensor& seed, const at::Tensor& offset, int64_t rows, at::Tensor& keep) {
  Counter ctr;
  ctr.offset = counter_from_tensor(offset, "offset");
  if (seed.numel() == 1) {
    ctr.seed = counter_from_tensor(seed, "seed");
    return ctr;
  }
  TORCH_CHECK_TYPE(seed.scalar_type() == at::kLong, "seed: expected an int64 tensor, got ", seed.scalar_type());
  TORCH_CHECK_VALUE(seed.device().is_cpu(), "seed: expected a CPU tensor, got ", seed.device());
  TORCH_CHECK_VALUE(seed.dim() == 1 && seed.size(0) == rows, "seed: expected one element or shape [", rows,
                    "] (a key per row), got shape ", seed.sizes());
  keep = seed.contiguous();
  ctr.per_row_seed = keep.data_ptr<int64_t>();
  return ctr;
}

at::Tensor entropy_op(const at::Tensor& logits, std::optional<int64_t> top_k) {
  return entropy_impl(logits, top_k.has_value() ? *top_k : 0);
}

std::tuple<at::Tensor, at::Tensor> topk_op(const at::Tensor& logits, int64_t k) { return topk_impl(logits, k); }

at::Tensor sample_op(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& seed,
                     const at::Tensor& offset) {
  at::Tensor keep, keep_seed;
  const Temperature temp = temperature_from_tensor(temperature, logits.size(0), keep);
  return sample_impl(logits, temp, counter_from_tensors(seed, offset, logits.size(0), keep_seed));
}

at::Tensor threshold_op(const at::Tensor& values, const at::Tensor& count, const at::Tensor& group, double q,
                        double theta, double initial) {
  return threshold_impl(values, count, group, q, theta, initial);
}

void append_op(const at::Tensor& values, const at::Tensor& count, const at::Tensor& overflow,
               const at::Tensor& entropy, const at::Tensor& group) {
  append_impl(values, count, overflow, entropy, group);
}

StepOut step_op(const at::Tensor& logits, const at::Tensor& values, const at::Tensor& count,
                const at::Tensor& overflow, const at::Tensor& group, int64_t k, const at::Tensor& temperature,
                std::optional<int64_t> entropy_top_k, double q, double theta, double initial,
                const at::Tensor& seed, const at::Tensor& offset) {
  at::Tensor keep, keep_seed;
  const Temperature temp = temperature_from_tensor(temperature, logits.size(0), keep);
  return step_impl(logits, values, count, overflow, group, k, temp,
                   entropy_top_k.has_value() ? *entropy_top_k : 0, q, theta, initial,
                   counter_from_tensors(seed, offset, logits.size(0), keep_seed));
}

// ---------------------------------------------------------------------------------------
// Direct path (pybind11): Python floats / ints or tensors, converted without the dispatcher
// ---------------------------------------------------------------------------------------

namespace py = pybind11;

Temperature temperature_from_py(py::handle h, int64_t rows, at::Tensor& keep) {
  if (THPVariable_Check(h.ptr())) return temperature_from_tensor(THPVariable_Unpack(h.ptr()), rows, keep);
  Temperature temp;
  temp.scalar = static_cast<float>(h.cast<double>());
  return temp;
}

uint64_t counter_from_py(py::handle h, const char* name) {
  if (THPVariable_Check(h.ptr())) return counter_from_tensor(THPVariable_Unpack(h.ptr()), name);
  return static_cast<uint64_t>(h.cast<int64_t>());
}

Counter counter_from_py(py::handle seed, py::handle offset, int64_t rows, at::Tensor& keep) {
  if (THPVariable_Check(seed.ptr())) {
    const at::Tensor s = THPVariable_Unpack(seed.ptr());
    if (s.numel() != 1) {
      const at::Tensor o = THPVariable_Check(offset.ptr()) ? THPVariable_Unpack(offset.ptr())
                                                           : at::scalar_tensor(offset.cast<int64_t>(), i64());
      return counter_from_tensors(s, o, rows, keep);
    }
  }
  return Counter{counter_from_py(seed, "seed"), counter_from_py(offset, "offset")};
}

int64_t optional_int(py::handle h) { return h.is_none() ? 0 : h.cast<int64_t>(); }

at::Tensor py_entropy(const at::Tensor& logits, py::handle top_k) { return entropy_impl(logits, optional_int(top_k)); }

at::Tensor py_sample(const at::Tensor& logits, py::handle temperature, py::handle seed, py::handle offset) {
  at::Tensor keep;
  const Temperature temp = temperature_from_py(temperature, logits.size(0), keep);
  at::Tensor keep_seed;
  return sample_impl(logits, temp, counter_from_py(seed, offset, logits.size(0), keep_seed));
}

StepOut py_step(const at::Tensor& logits, const at::Tensor& values, const at::Tensor& count,
                const at::Tensor& overflow, const at::Tensor& group, int64_t k, py::handle temperature,
                py::handle entropy_top_k, double q, double theta, double initial, py::handle seed,
                py::handle offset, bool room_check) {
  at::Tensor keep;
  const Temperature temp = temperature_from_py(temperature, logits.size(0), keep);
  at::Tensor keep_seed;
  return step_impl(logits, values, count, overflow, group, k, temp, optional_int(entropy_top_k), q, theta,
                   initial, counter_from_py(seed, offset, logits.size(0), keep_seed), room_check);
}

// The package's uniform stream as the kernels compute it (for the bit-exactness tests).
at::Tensor py_uniforms(int64_t rows, int64_t cols, int64_t seed, int64_t offset) {
  at::Tensor out = at::empty({rows, cols}, f32());
  const uint64_t s = static_cast<uint64_t>(seed), o = static_cast<uint64_t>(offset);
  for (int64_t r = 0; r < rows; ++r) {
    float* p = out.data_ptr<float>() + r * cols;
    if (current_isa() == Isa::kAvx512) {
      avx512_uniforms(static_cast<uint32_t>(r), cols, static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32),
                      static_cast<uint32_t>(o), static_cast<uint32_t>(o >> 32), p);
    } else if (current_isa() == Isa::kAvx2) {
      avx2_uniforms(static_cast<uint32_t>(r), cols, static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32),
                    static_cast<uint32_t>(o), static_cast<uint32_t>(o >> 32), p);
    } else {
      scalar_uniforms(static_cast<uint32_t>(r), cols, static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32),
                      static_cast<uint32_t>(o), static_cast<uint32_t>(o >> 32), p);
    }
  }
  return out;
}

std::vector<float> py_gumbel_bounds() {
  const GumbelTable& t = gumbel_table();
  return std::vector<float>(t.bound, t.bound + kGumbelTable);
}

// (a, b) of the AVX2 kernels' bound line a lz + b (eager_cpu.h: gumbel_line_b).
std::pair<float, float> py_gumbel_line() { return {kGumbelLineA, gumbel_table().line_b}; }

}  // namespace
}  // namespace eager_cpu

TORCH_LIBRARY_IMPL(eager_kernels, CPU, m) {
  m.impl("entropy", &eager_cpu::entropy_op);
  m.impl("topk_logprobs", &eager_cpu::topk_op);
  m.impl("sample", &eager_cpu::sample_op);
  m.impl("history_threshold", &eager_cpu::threshold_op);
  m.impl("history_append_", &eager_cpu::append_op);
  m.impl("eager_step", &eager_cpu::step_op);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  using namespace eager_cpu;
  m.doc() = "eager_kernels C++ CPU kernels (direct-call entry points; the same ops are registered "
            "for the CPU dispatch key)";
  m.def("entropy", &py_entropy, py::arg("logits"), py::arg("top_k"));
  m.def("topk_logprobs", &topk_impl, py::arg("logits"), py::arg("k"));
  m.def("sample", &py_sample, py::arg("logits"), py::arg("temperature"), py::arg("seed"), py::arg("offset"));
  m.def("history_threshold", &threshold_impl, py::arg("values"), py::arg("count"), py::arg("group"),
        py::arg("q"), py::arg("theta"), py::arg("initial"));
  m.def("history_append_", &append_impl, py::arg("values"), py::arg("count"), py::arg("overflow"),
        py::arg("entropy"), py::arg("group"));
  m.def("eager_step", &py_step, py::arg("logits"), py::arg("hist_values"), py::arg("hist_count"),
        py::arg("hist_overflow"), py::arg("group"), py::arg("k"), py::arg("temperature"),
        py::arg("entropy_top_k"), py::arg("q"), py::arg("theta"), py::arg("initial_threshold"),
        py::arg("seed"), py::arg("offset"), py::arg("room_check") = false,
        "One EAGer step. room_check=True: raise ValueError before any change when a group would "
        "overflow the history's capacity (what ek.eager_step does on CPU); False: flag it in "
        "hist_overflow and leave the group unchanged (as the CUDA kernels do).");
  m.def("philox_uniform", &py_uniforms, py::arg("rows"), py::arg("cols"), py::arg("seed"), py::arg("offset"),
        "The uniform stream as the kernels compute it (tests compare it with reference.philox_uniform).");
  m.def("gumbel_bounds", &py_gumbel_bounds, "Upper bounds of the Gumbel noise per lzcnt bucket.");
  m.def("gumbel_line", &py_gumbel_line, "(a, b): the AVX2 kernels' bound a * lz + b for the buckets lz = 1..23.");
  m.def("isa", &isa_name, "The chunk kernels in use: 'avx512', 'avx2' or 'scalar'.");
  m.def("set_isa", &set_isa, py::arg("name"), "Choose 'auto', 'avx512', 'avx2' or 'scalar' kernels (for tests).");
  m.def("avx512_supported", &avx512_cpu_supported);
  m.def("avx2_supported", &avx2_cpu_supported);
}
