// Host-side argument checks and sizes of the pool3 ops, shared by the CPU and CUDA entry points.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "../common/checks.h"
#include "pool3.h"

namespace nas3d {
namespace pool3 {

// Sizes of a (N, C, X, Y, Z) input and its pooled output; B = N * C slices.
struct Sizes {
  int64_t N, C, B, X, Y, Z, OX, OY, OZ;
  static Sizes of(const at::Tensor& x, int64_t s) {
    Sizes z;
    z.N = x.size(0), z.C = x.size(1), z.B = z.N * z.C;
    z.X = x.size(2), z.Y = x.size(3), z.Z = x.size(4);
    z.OX = out_size(z.X, s), z.OY = out_size(z.Y, s), z.OZ = out_size(z.Z, s);
    return z;
  }
  std::vector<int64_t> out_shape() const { return {N, C, OX, OY, OZ}; }
};

inline void check_stride(int64_t stride, const char* op) {
  TORCH_CHECK_VALUE(stride == 1 || stride == 2, op, ": stride must be 1 or 2, got ", stride);
}

inline void check_forward_args(const at::Tensor& x, int64_t stride, const char* op) {
  NAS3D_CHECK_FLOATING(x, "x");
  NAS3D_CHECK_DIM(x, "x", 5);
  check_stride(stride, op);
  for (int d = 2; d < 5; ++d)
    TORCH_CHECK_VALUE(x.size(d) > 0, op, ": x must have non-empty spatial sizes, got ", x.sizes());
}

inline void check_backward_args(const at::Tensor& grad, at::IntArrayRef input_size, int64_t stride, const char* op) {
  NAS3D_CHECK_FLOATING(grad, "grad");
  NAS3D_CHECK_DIM(grad, "grad", 5);
  check_stride(stride, op);
  TORCH_CHECK_VALUE(input_size.size() == 5, op, ": input_size must have 5 entries, got ", input_size);
  for (int d = 2; d < 5; ++d)
    TORCH_CHECK_VALUE(input_size[d] > 0, op, ": input_size must have non-empty spatial sizes, got ", input_size);
  for (int d = 0; d < 5; ++d) {
    const int64_t expect = d < 2 ? input_size[d] : out_size(input_size[d], stride);
    TORCH_CHECK_VALUE(grad.size(d) == expect, op, ": grad must have shape ", "(N, C, (X-1)/s+1, ...) = ",
                      "the pooled shape of input_size ", input_size, ", got ", grad.sizes());
  }
}

}  // namespace pool3
}  // namespace nas3d
