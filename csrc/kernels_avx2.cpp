// The portable kernels of kernels_scalar.cpp compiled a second time with AVX2 + FMA + F16C
// intrinsics in their dense loops (EK_AVX2), under the names avx2_chunk_fn / avx2_uniforms.
// Chosen at run time on CPUs with AVX2, FMA and F16C but no AVX-512 (ops.cpp). GCC only,
// as the AVX-512 file; other compilers build the portable kernels alone.
#include "eager_cpu.h"

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(_M_X64))

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,popcnt")
#define EK_AVX2 1
#define EK_PORTABLE_NAME(name) avx2_##name
#include "kernels_scalar.cpp"
#pragma GCC pop_options

namespace eager_cpu {
bool avx2_cpu_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
}  // namespace eager_cpu

#else

namespace eager_cpu {
ChunkFn avx2_chunk_fn(int, int) { return nullptr; }
bool avx2_cpu_supported() { return false; }
void avx2_uniforms(uint32_t, int64_t, uint32_t, uint32_t, uint32_t, uint32_t, float*) {}
}  // namespace eager_cpu

#endif
