// Host-side argument checks and sizes of nas3d::depthwise_conv3, shared by the CPU and CUDA entry points.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <vector>

#include "../common/checks.h"
#include "dwconv3.h"

namespace nas3d {
namespace dwconv3 {

struct Sizes {
  int64_t N, C, X, Y, Z, OX, OY, OZ;
  static Sizes of(at::IntArrayRef x, int64_t s) {
    Sizes z;
    z.N = x[0], z.C = x[1], z.X = x[2], z.Y = x[3], z.Z = x[4];
    z.OX = out_size(z.X, s), z.OY = out_size(z.Y, s), z.OZ = out_size(z.Z, s);
    return z;
  }
  std::vector<int64_t> out_shape() const { return {N, C, OX, OY, OZ}; }
};

inline void check_args(const at::Tensor& x, const at::Tensor& weight, int64_t stride, int64_t dilation) {
  NAS3D_CHECK_FLOATING(x, "x");
  NAS3D_CHECK_DIM(x, "x", 5);
  NAS3D_CHECK_SAME_DEVICE(x, weight, "x", "weight");
  NAS3D_CHECK_SAME_DTYPE(x, weight, "x", "weight");
  TORCH_CHECK_VALUE(weight.dim() == 5 && weight.size(0) == x.size(1) && weight.size(1) == 1 && weight.size(2) == 3 &&
                        weight.size(3) == 3 && weight.size(4) == 3,
                    "depthwise_conv3: weight must have shape (C, 1, 3, 3, 3) with C = x.shape[1] = ", x.size(1),
                    ", got ", weight.sizes());
  TORCH_CHECK_VALUE(stride == 1 || stride == 2, "depthwise_conv3: stride must be 1 or 2, got ", stride);
  TORCH_CHECK_VALUE(dilation >= 1, "depthwise_conv3: dilation must be >= 1, got ", dilation);
  for (int d = 2; d < 5; ++d)
    TORCH_CHECK_VALUE(x.size(d) > 0, "depthwise_conv3: x must have non-empty spatial sizes, got ", x.sizes());
}

// The dilation the kernels run with: a dilation >= every spatial size leaves only the centre tap inside
// the volume, as that size does, so it is clamped to the largest size. The index arithmetic (src, dst,
// tap_range: o * s +- r, -off + s - 1) then stays far from int64 overflow: with r near 2^63 it wrapped,
// and tap_range's lower bound went negative (writes in front of every output row; issue 27).
inline int64_t effective_dilation(at::IntArrayRef x, int64_t dilation) {
  int64_t largest = 1;
  for (int d = 2; d < 5; ++d) largest = std::max(largest, x[d]);
  return std::min(dilation, largest);
}

}  // namespace dwconv3
}  // namespace nas3d
