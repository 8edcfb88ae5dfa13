// Depthwise 3x3x3 convolution with dilation r, padding r ("same" for stride 1) and stride s: the
// first half of the depthwise-separable dilated candidates (sep_dil3x3x3_r2/3/4).
//   out[n, c, o] = sum over taps (dx, dy, dz) of w[c, dx, dy, dz] * x[n, c, o * s + (d - 1) * r]
// Index arithmetic and the per-element sums are shared by the CPU and CUDA kernels. The CPU kernel
// runs float and double through the row functions (one tap over a whole row: contiguous, vectorised)
// and half/bfloat16 through the per-element functions the CUDA kernel runs, so both are tested here.
#pragma once

#include "../common/macros.h"

namespace nas3d {
namespace dwconv3 {

NAS3D_HOST_DEVICE int64_t out_size(int64_t n_in, int64_t s) { return (n_in - 1) / s + 1; }

// Input index read by tap d (0, 1, 2) of output o.
NAS3D_HOST_DEVICE int64_t src(int64_t o, int64_t s, int64_t r, int d) { return o * s + (d - 1) * r; }

// The outputs [lo, hi) whose tap d reads inside [0, n_in).
NAS3D_HOST_DEVICE void tap_range(int64_t n_in, int64_t n_out, int64_t s, int64_t r, int d, int64_t& lo,
                                 int64_t& hi) {
  const int64_t off = (d - 1) * r;
  lo = off >= 0 ? 0 : (-off + s - 1) / s;
  const int64_t last = n_in - 1 - off;  // o * s <= last
  hi = last < 0 ? 0 : last / s + 1;
  if (hi > n_out) hi = n_out;
  if (lo > hi) lo = hi;
}

// The output index whose tap d reads input i, or -1.
NAS3D_HOST_DEVICE int64_t dst(int64_t i, int64_t n_out, int64_t s, int64_t r, int d) {
  const int64_t t = i - (d - 1) * r;
  if (t < 0 || t % s != 0 || t / s >= n_out) return -1;
  return t / s;
}

// rows[dx * 3 + dy]: the input row (x, y) read by taps (dx, dy) of output row (ox, oy) of one
// contiguous (X, Y, Z) slice, or nullptr where the tap falls in the padding.
template <typename T>
NAS3D_HOST_DEVICE void input_rows(const T* slice, int64_t X, int64_t Y, int64_t Z, int64_t ox, int64_t oy, int64_t s,
                                  int64_t r, const T** rows) {
  for (int dx = 0; dx < 3; ++dx)
    for (int dy = 0; dy < 3; ++dy) {
      const int64_t ix = src(ox, s, r, dx), iy = src(oy, s, r, dy);
      rows[dx * 3 + dy] = (ix >= 0 && ix < X && iy >= 0 && iy < Y) ? slice + (ix * Y + iy) * Z : nullptr;
    }
}

// rows[dx * 3 + dy]: the output-gradient row whose taps (dx, dy) read input row (ix, iy), or nullptr.
template <typename T>
NAS3D_HOST_DEVICE void grad_rows(const T* slice, int64_t OX, int64_t OY, int64_t OZ, int64_t ix, int64_t iy,
                                 int64_t s, int64_t r, const T** rows) {
  for (int dx = 0; dx < 3; ++dx)
    for (int dy = 0; dy < 3; ++dy) {
      const int64_t ox = dst(ix, OX, s, r, dx), oy = dst(iy, OY, s, r, dy);
      rows[dx * 3 + dy] = (ox >= 0 && oy >= 0) ? slice + (ox * OY + oy) * OZ : nullptr;
    }
}

// One output element: taps in (dx, dy, dz) order.
template <typename acc, typename T>
NAS3D_HOST_DEVICE acc forward_at(const T* const* rows, const T* w, int64_t oz, int64_t Z, int64_t s, int64_t r) {
  acc total = 0;
  for (int t = 0; t < 9; ++t) {
    if (rows[t] == nullptr) continue;
    for (int dz = 0; dz < 3; ++dz) {
      const int64_t iz = src(oz, s, r, dz);
      if (iz >= 0 && iz < Z) total += static_cast<acc>(w[t * 3 + dz]) * static_cast<acc>(rows[t][iz]);
    }
  }
  return total;
}

// One input-gradient element: the output gradients that read input iz, taps in (dx, dy, dz) order.
template <typename acc, typename T>
NAS3D_HOST_DEVICE acc grad_input_at(const T* const* grows, const T* w, int64_t iz, int64_t OZ, int64_t s,
                                    int64_t r) {
  acc total = 0;
  for (int t = 0; t < 9; ++t) {
    if (grows[t] == nullptr) continue;
    for (int dz = 0; dz < 3; ++dz) {
      const int64_t oz = dst(iz, OZ, s, r, dz);
      if (oz >= 0) total += static_cast<acc>(w[t * 3 + dz]) * static_cast<acc>(grows[t][oz]);
    }
  }
  return total;
}

// Row functions (one tap over a whole row).
// out_row[o] += w * in_row[o * s + off] for o in [lo, hi).
template <typename acc, typename T>
NAS3D_HOST_DEVICE void axpy_tap(acc* out_row, const T* in_row, acc w, int64_t lo, int64_t hi, int64_t s, int64_t off) {
  for (int64_t o = lo; o < hi; ++o) out_row[o] += w * static_cast<acc>(in_row[o * s + off]);
}

// in_row[o * s + off] receives w * grad_row[o] for o in [lo, hi) (the adjoint of axpy_tap).
template <typename acc, typename T>
NAS3D_HOST_DEVICE void axpy_tap_adjoint(acc* in_row, const T* grad_row, acc w, int64_t lo, int64_t hi, int64_t s,
                                        int64_t off) {
  for (int64_t o = lo; o < hi; ++o) in_row[o * s + off] += w * static_cast<acc>(grad_row[o]);
}

// sum over o in [lo, hi) of grad_row[o] * in_row[o * s + off]: one tap's weight gradient over one row.
template <typename acc, typename T>
NAS3D_HOST_DEVICE acc dot_tap(const T* grad_row, const T* in_row, int64_t lo, int64_t hi, int64_t s, int64_t off) {
  acc total = 0;
  for (int64_t o = lo; o < hi; ++o) total += static_cast<acc>(grad_row[o]) * static_cast<acc>(in_row[o * s + off]);
  return total;
}

}  // namespace dwconv3
}  // namespace nas3d
