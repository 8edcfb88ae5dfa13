// Shared arithmetic of the sliding-window ops (nas3d::window_gather, nas3d::window_stitch), used by the
// CPU (.cpp) and CUDA (.cu) kernels alike so the CPU tests exercise the GPU math.
//
// Layout conventions (all indices 64-bit):
//   volume / out   (B, C, D, H, W)      a padded image, or the stitched accumulator
//   windows / pred (N, C, rd, rh, rw)   one row per window
//   starts         (N, 4) int64         (b, z, y, x): batch index and the window's first voxel in volume/out
//   weight         (rd, rh, rw)         the importance map of one window
//   labels         (D, H, W)            argmax over the C classes of a (C, D, H, W) slab of out
#pragma once

#include "../common/macros.h"

namespace nas3d {
namespace window {

// The product w * p rounded on its own (no fused multiply-add), then added: the same two roundings as
// MONAI's `out[idx] += importance_map * seg_prob`, and the same bits on the CPU and on the GPU.
NAS3D_HOST_DEVICE float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
NAS3D_HOST_DEVICE double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

// One stitched voxel: the accumulator plus the weighted prediction, in the accumulation type.
template <typename acc>
NAS3D_HOST_DEVICE acc stitch_value(acc out, acc weight, acc pred) {
  return out + mul_rn(weight, pred);
}

// One voxel's class score as the labels see it: the stitched sum divided by the weight sum, rounded to
// the accumulator's dtype (MONAI's `output / count_map`, then argmax), or the sum itself when there is
// no weight sum (the argmax is the same up to ties that the division's rounding may create).
template <typename scalar_t>
NAS3D_HOST_DEVICE acc_t<scalar_t> label_score(acc_t<scalar_t> sum, acc_t<scalar_t> weight_sum, bool normalise) {
  using acc = acc_t<scalar_t>;
  return normalise ? static_cast<acc>(static_cast<scalar_t>(sum / weight_sum)) : sum;
}

// torch.argmax's order over the classes c = 0, 1, ...: a score replaces the best so far when it is
// larger, or when it is NaN and the best is not (NaN beats every number); the first of equal maxima, and
// the first NaN, keep their place.
template <typename acc>
NAS3D_HOST_DEVICE bool beats(acc score, acc best) {
  return score > best || (score != score && best == best);
}

// Coordinates (c, z, y, x) of element i of a contiguous (C, rd, rh, rw) window.
struct WindowIndex {
  int64_t c, z, y, x;
};
NAS3D_HOST_DEVICE WindowIndex unravel_window(int64_t i, int64_t rd, int64_t rh, int64_t rw) {
  WindowIndex w;
  w.x = i % rw;
  i /= rw;
  w.y = i % rh;
  i /= rh;
  w.z = i % rd;
  w.c = i / rd;
  return w;
}

// Offset of (b, c, z, y, x) in a strided 5D tensor.
NAS3D_HOST_DEVICE int64_t offset5(const int64_t* strides, int64_t b, int64_t c, int64_t z, int64_t y, int64_t x) {
  return b * strides[0] + c * strides[1] + z * strides[2] + y * strides[3] + x * strides[4];
}

}  // namespace window
}  // namespace nas3d
