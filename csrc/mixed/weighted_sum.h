// The weighted multi-tensor sum of a supernet edge, out = sum_k w[k] * xs[k], its fused weight
// gradient grad_w[k] = <grad, xs[k]>, and the kernel merge (the same sum over convolution kernels
// zero-padded to a common size). Per-element functions shared by the CPU and CUDA kernels.
#pragma once

#include "../common/macros.h"

namespace nas3d {
namespace wsum {

// Elements per block of the weight-gradient reduction. Every backend sums a block in index order and
// then the blocks in order, so the result does not depend on the thread count.
constexpr int64_t kBlock = 16384;

template <typename acc, typename T, typename W>
NAS3D_HOST_DEVICE acc sum_at(const T* const* xs, const W* w, int64_t K, int64_t i) {
  acc total = 0;
  for (int64_t k = 0; k < K; ++k) total += static_cast<acc>(w[k]) * static_cast<acc>(xs[k][i]);
  return total;
}

// sum of g[i] * x[i] over block b of n elements, in index order.
template <typename acc, typename T>
NAS3D_HOST_DEVICE acc block_dot(const T* g, const T* x, int64_t n, int64_t b) {
  const int64_t begin = b * kBlock, end = begin + kBlock < n ? begin + kBlock : n;
  acc total = 0;
  for (int64_t i = begin; i < end; ++i) total += static_cast<acc>(g[i]) * static_cast<acc>(x[i]);
  return total;
}

// Kernel merge. A kernel of sizes (k0, k1, k2), all odd, sits centred in the merged (s0, s1, s2):
// merged position p reads kernel position p - (s - k) / 2 per axis.
struct Box {
  int64_t s0, s1, s2;  // merged sizes
};

// The flat index into one (k0, k1, k2) kernel row of merged position (p0, p1, p2), or -1 outside.
NAS3D_HOST_DEVICE int64_t kernel_index(const Box& box, const int64_t* k, int64_t p0, int64_t p1, int64_t p2) {
  const int64_t q0 = p0 - (box.s0 - k[0]) / 2, q1 = p1 - (box.s1 - k[1]) / 2, q2 = p2 - (box.s2 - k[2]) / 2;
  if (q0 < 0 || q0 >= k[0] || q1 < 0 || q1 >= k[1] || q2 < 0 || q2 >= k[2]) return -1;
  return (q0 * k[1] + q1) * k[2] + q2;
}

// Merged element e = row * (s0 s1 s2) + p: sum over kernels j of w[j] * kernel_j[row, p - offset_j].
// kernels[j] is contiguous (rows, k0, k1, k2) with sizes ksizes[3 j .. 3 j + 2].
template <typename acc, typename T>
NAS3D_HOST_DEVICE acc merge_at(const T* const* kernels, const int64_t* ksizes, const T* w, int64_t K, const Box& box,
                               int64_t e) {
  const int64_t vol = box.s0 * box.s1 * box.s2, row = e / vol, p = e % vol;
  const int64_t p0 = p / (box.s1 * box.s2), p1 = (p / box.s2) % box.s1, p2 = p % box.s2;
  acc total = 0;
  for (int64_t j = 0; j < K; ++j) {
    const int64_t* k = ksizes + 3 * j;
    const int64_t q = kernel_index(box, k, p0, p1, p2);
    if (q >= 0) total += static_cast<acc>(w[j]) * static_cast<acc>(kernels[j][row * k[0] * k[1] * k[2] + q]);
  }
  return total;
}

// Kernel j's element e = row * (k0 k1 k2) + q reads merged position q + offset: its gradient is
// w[j] * grad there; it also returns that merged index for the weight-gradient dot.
NAS3D_HOST_DEVICE int64_t merged_index(const Box& box, const int64_t* k, int64_t e) {
  const int64_t kvol = k[0] * k[1] * k[2], row = e / kvol, q = e % kvol;
  const int64_t q0 = q / (k[1] * k[2]), q1 = (q / k[2]) % k[1], q2 = q % k[2];
  const int64_t p0 = q0 + (box.s0 - k[0]) / 2, p1 = q1 + (box.s1 - k[1]) / 2, p2 = q2 + (box.s2 - k[2]) / 2;
  return row * box.s0 * box.s1 * box.s2 + (p0 * box.s1 + p1) * box.s2 + p2;
}

}  // namespace wsum
}  // namespace nas3d
