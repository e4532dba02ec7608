// Standalone driver of the C++ chunk kernels (no torch, no Python): one chunk per row, as
// run_pass does for B >= 4, over B rows of 3 * randn logits (+14 on five columns per row
// with `peaked`), the eager_step's pass (top-20 list, log-sum-exp sums, Gumbel arg-max at
// T = 0.6, or greedy). Prints the fastest of `iters` timings and a checksum of the chosen
// columns (equal across tiers). For comparing kernel versions on a loaded machine (one
// thread, minimum of the runs) and for instruction counts by source line:
//
//   g++ -O3 -g -std=c++17 -ffp-contract=off -Icsrc benchmarks/cpu_chunk_driver.cpp \
//       csrc/kernels_scalar.cpp csrc/kernels_avx2.cpp csrc/kernels_avx512.cpp -o /tmp/chunk_driver
//   /tmp/chunk_driver TIER B V MODE PEAKED ITERS BF16      # TIER avx512|avx2|scalar, MODE 0 sampling, 1 greedy
//   valgrind --tool=callgrind --toggle-collect='*chunk_kernel*' /tmp/chunk_driver avx2 2 152064 0 0 1
//   callgrind_annotate --auto=yes callgrind.out.<pid> csrc/kernels_avx2.cpp
//
// The Gumbel bound table is built as ops.cpp's GumbelTable builds it.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>
#include <algorithm>
#include "eager_cpu.h"
using namespace eager_cpu;
int main(int argc, char** argv) {
  const char* tier = argc > 1 ? argv[1] : "avx2";
  int B = argc > 2 ? atoi(argv[2]) : 8;
  int64_t V = argc > 3 ? atoll(argv[3]) : 152064;
  int mode = argc > 4 ? atoi(argv[4]) : 0;  // 0 sampling step, 1 greedy step
  int peaked = argc > 5 ? atoi(argv[5]) : 0;
  int iters = argc > 6 ? atoi(argv[6]) : 3;
  int bf16 = argc > 7 ? atoi(argv[7]) : 0;
  std::mt19937 g(1); std::normal_distribution<float> nd(0, 1);
  std::vector<float> x(B * V);
  for (auto& v : x) v = 3 * nd(g);
  if (peaked) for (int r = 0; r < B; ++r) for (int j = 0; j < 5; ++j) x[r * V + g() % V] += 14;
  std::vector<uint16_t> xh(B * V);
  for (size_t i = 0; i < x.size(); ++i) { uint32_t b; memcpy(&b, &x[i], 4); xh[i] = b >> 16; }
  float bound[kGumbelTable];
  for (int lz = 1; lz <= 32; ++lz) {
    const uint32_t dmin = lz == 32 ? 0u : (1u << (31 - lz));
    const uint32_t folded = 0x7FFFFFFFu - dmin;
    float u = static_cast<float>(static_cast<int32_t>(folded)) * kUniformScale;
    u = u < kUniformScale ? kUniformScale : u;
    const double gg = -std::log(-std::log(static_cast<double>(u)));
    bound[lz & 31] = static_cast<float>(gg + 1e-3 + 1e-4 * std::fabs(gg));
  }
  int kind = bf16 ? kBF16 : kF32;
  ChunkFn fn = !strcmp(tier, "avx512") ? avx512_chunk_fn(kind, 1) : !strcmp(tier, "avx2") ? avx2_chunk_fn(kind, 1) : scalar_chunk_fn(kind, 1);
  float tv[64]; int64_t ti[64];
  double best_t = 1e9; long long checksum = 0;
  for (int it = 0; it < iters; ++it) {
    auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < B; ++r) {
      ChunkParams p{};
      p.row = bf16 ? (const void*)(xh.data() + r * V) : (const void*)(x.data() + r * V);
      p.begin = 0; p.end = V; p.row_index = r; p.kp = 20; p.sample = mode == 0; p.temperature = 0.6f;
      p.noise_bound = 0.6f * bound[0]; p.key0 = 1; p.key1 = 0; p.ctr2 = 0; p.ctr3 = 0; p.gumbel_bound = bound;
      p.gumbel_line_b = gumbel_line_b(bound);
      ChunkResult R{}; R.top_val = tv; R.top_id = ti;
      fn(p, R);
      checksum += R.best_id + R.top_id[0];
    }
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best_t = std::min(best_t, dt);
  }
  printf("%s B=%d V=%lld mode=%d peaked=%d bf16=%d: min %.1f us (%.3f ns/el) checksum %lld\n", tier, B, (long long)V, mode, peaked, bf16, best_t * 1e6, best_t * 1e9 / (B * V), checksum);
}
