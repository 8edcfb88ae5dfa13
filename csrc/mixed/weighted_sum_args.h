// Host-side argument checks of nas3d::weighted_sum and nas3d::kernel_merge, shared by CPU and CUDA.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "../common/checks.h"

namespace nas3d {
namespace wsum {

inline void check_sum_args(at::TensorList xs, const at::Tensor& weights, const char* op, const char* what) {
  TORCH_CHECK_VALUE(!xs.empty(), op, ": ", what, " must hold at least one tensor");
  NAS3D_CHECK_DIM(weights, "weights", 1);
  TORCH_CHECK_VALUE(weights.size(0) == static_cast<int64_t>(xs.size()), op, ": weights must have one entry per ",
                    what, " tensor (", xs.size(), "), got shape ", weights.sizes());
  NAS3D_CHECK_FLOATING(weights, "weights");
  for (const auto& x : xs) {
    NAS3D_CHECK_FLOATING(x, "each tensor");
    NAS3D_CHECK_SAME_DEVICE(weights, x, "weights", "each tensor");
    NAS3D_CHECK_SAME_DTYPE(weights, x, "weights", "each tensor");
  }
}

inline void check_same_shapes(at::TensorList xs, const char* op) {
  for (const auto& x : xs)
    TORCH_CHECK_VALUE(x.sizes() == xs[0].sizes(), op, ": every tensor must have the shape of the first ",
                      xs[0].sizes(), ", got ", x.sizes());
}

// kernels: (O, I, k0, k1, k2) each, the same O and I, odd sizes within `size`. Returns the sizes
// flattened (3 per kernel).
inline std::vector<int64_t> check_kernel_args(at::TensorList kernels, const at::Tensor& weights,
                                              at::IntArrayRef size) {
  check_sum_args(kernels, weights, "kernel_merge", "kernels");
  TORCH_CHECK_VALUE(size.size() == 3, "kernel_merge: size must have 3 entries, got ", size);
  std::vector<int64_t> ks;
  for (const auto& k : kernels) {
    TORCH_CHECK_VALUE(k.dim() == 5 && k.size(0) == kernels[0].size(0) && k.size(1) == kernels[0].size(1),
                      "kernel_merge: kernels must have shape (O, I, k0, k1, k2) with the O and I of the first, got ",
                      k.sizes());
    for (int d = 0; d < 3; ++d) {
      const int64_t n = k.size(2 + d);
      TORCH_CHECK_VALUE(n % 2 == 1 && n <= size[d], "kernel_merge: kernel sizes must be odd and at most size ",
                        size, ", got ", k.sizes());
      ks.push_back(n);
    }
  }
  return ks;
}

}  // namespace wsum
}  // namespace nas3d
