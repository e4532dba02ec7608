// Accuracy of the AVX2 tier's exp of the sums (exp_nonpos in csrc/kernels_avx2.cpp) against
// exp in double, in ulp of the float32 result, over evenly spaced d in [lo, 0] (the figures
// in that function's comment and in docs/cpu_tiers.md). Compiles the kernel file itself into
// this program, so it measures the code as it is:
//
//   g++ -O2 -std=c++17 -Icsrc benchmarks/avx2_exp_accuracy.cpp -o /tmp/avx2_exp_accuracy
//   /tmp/avx2_exp_accuracy            # needs a CPU with AVX2 + FMA
#include <cmath>
#include <cstdio>

#include "../csrc/kernels_avx2.cpp"

#pragma GCC target("avx2,fma,f16c,bmi,bmi2,popcnt")

static double ulp_error(float got, double want) {
  int e;
  std::frexp(want, &e);
  return std::fabs(static_cast<double>(got) - want) / std::ldexp(1.0, e - 24);
}

int main() {
  if (!eager_cpu::avx2_cpu_supported()) {
    std::printf("this CPU has no AVX2/FMA\n");
    return 1;
  }
  const long n = 4000000;
  for (double lo : {-1.0, -10.0, -86.5}) {
    double worst = 0, sum = 0, worst_d = 0;
    for (long i = 0; i < n; i += 8) {
      alignas(32) float d[8], e[8];
      for (int k = 0; k < 8; ++k) d[k] = static_cast<float>(lo * (static_cast<double>(i + k) / n));
      _mm256_store_ps(e, eager_cpu::exp_nonpos(_mm256_load_ps(d)));
      for (int k = 0; k < 8; ++k) {
        const double u = ulp_error(e[k], std::exp(static_cast<double>(d[k])));
        sum += u;
        if (u > worst) worst = u, worst_d = d[k];
      }
    }
    std::printf("d in [%6.1f, 0]: max %.2f ulp (at d = %.4f), mean %.3f ulp, %ld points\n", lo, worst, worst_d,
                sum / n, n);
  }
  return 0;
}
