// Shared arithmetic of the sliding-window ops (nas3d::window_gather, nas3d::window_stitch), used by the
// CPU (.cpp) and CUDA (.cu) kernels alike so the CPU tests exercise the GPU math.
//
// Layout conventions (all indices 64-bit):
//   volume / out   (B, C, D, H, W)      a padded image, or the stitched accumulator
//   windows / pred (N, C, rd, rh, rw)   one row per window
//   starts         (N, 4) int64         (b, z, y, x): batch index and the window's first voxel in volume/out
//   weight         (rd, rh, rw)         the importance map of one window
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
