// In-place log(-log(x)) of a contiguous CPU buffer, vectorised where the CPU allows.
//
// For small buffers (a few thousand values, as in gumbel_topk at E ~ 200) a kernel cannot afford
// ATen's at::log: its dispatch, allocation and TensorIterator set-up cost more than the logs. These
// helpers run the logs inline instead: 8 (float) or 4 (double) lanes at a time through the SLEEF
// routines libtorch_cpu ships (the same 1-ulp functions ATen's vectorised log uses) on AVX2 machines,
// std::log elsewhere, or when ATEN_CPU_CAPABILITY=default.
#pragma once

#include <cstdint>

namespace nas3d {

// x = log(-log(x)) for x in (0, 1): minus the Gumbel transform of uniform samples.
void log_neg_log_inplace(float* x, int64_t n);
void log_neg_log_inplace(double* x, int64_t n);

}  // namespace nas3d
