// See vec_log.h. The AVX2 paths are compiled for that target only (function attributes), chosen at
// run time, and call SLEEF through weak references: a libtorch without these symbols (another
// architecture, another SLEEF build) leaves them null and the scalar path runs.
#include "vec_log.h"

#include <cmath>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define NAS3D_SLEEF_AVX2 1
#include <immintrin.h>
extern "C" {
__m256 Sleef_logf8_u10avx2(__m256) __attribute__((weak));
__m256d Sleef_logd4_u10avx2(__m256d) __attribute__((weak));
}
#endif

namespace nas3d {
namespace {

template <typename T>
void log_neg_log_scalar(T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::log(-std::log(x[i]));
}

#ifdef NAS3D_SLEEF_AVX2
// ATEN_CPU_CAPABILITY=default, which makes ATen's own kernels scalar, does the same here.
bool use_avx2() {
  static const bool ok = [] {
    const char* forced = std::getenv("ATEN_CPU_CAPABILITY");
    if (forced != nullptr && std::strcmp(forced, "default") == 0) return false;
    return Sleef_logf8_u10avx2 != nullptr && Sleef_logd4_u10avx2 != nullptr && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma");
  }();
  return ok;
}

__attribute__((target("avx2,fma"))) void log_neg_log_avx2(float* x, int64_t n) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 minus_log = _mm256_xor_ps(Sleef_logf8_u10avx2(_mm256_loadu_ps(x + i)), sign);
    _mm256_storeu_ps(x + i, Sleef_logf8_u10avx2(minus_log));
  }
  log_neg_log_scalar(x + i, n - i);  // the tail, < 8 values
}

__attribute__((target("avx2,fma"))) void log_neg_log_avx2(double* x, int64_t n) {
  const __m256d sign = _mm256_set1_pd(-0.0);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m256d minus_log = _mm256_xor_pd(Sleef_logd4_u10avx2(_mm256_loadu_pd(x + i)), sign);
    _mm256_storeu_pd(x + i, Sleef_logd4_u10avx2(minus_log));
  }
  log_neg_log_scalar(x + i, n - i);
}
#endif

template <typename T>
void log_neg_log_dispatch(T* x, int64_t n) {
#ifdef NAS3D_SLEEF_AVX2
  if (use_avx2()) return log_neg_log_avx2(x, n);
#endif
  log_neg_log_scalar(x, n);
}

}  // namespace

void log_neg_log_inplace(float* x, int64_t n) { log_neg_log_dispatch(x, n); }
void log_neg_log_inplace(double* x, int64_t n) { log_neg_log_dispatch(x, n); }

}  // namespace nas3d
