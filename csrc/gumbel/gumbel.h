// Gumbel top-k sampling (SCNAS Algorithm 1): the per-row arithmetic shared by the CPU and CUDA kernels.
//
// For one row of K logits l, uniform noise u in (0, 1) and temperature tau:
//   g_j = -log(-log(u_j)),   z_j = (l_j + g_j) / tau,   y = softmax(z)
// the top-k entries of z (equivalently of y; ties to the lower index) are chosen and
//   weights_i = y_i / sum_{chosen} y  =  exp(z_i - z_top1) / sum_{chosen j} exp(z_j - z_top1)
// for chosen i, 0 elsewhere. hard (k = 1) gives a one-hot row.
// Backward, with p = weights (soft) or p = y (hard, straight-through):
//   dL/dl_j = p_j * (grad_j - sum_i p_i grad_i) / tau
//
// The row functions read z through an accessor z_at(j): the CUDA kernels compute g from u inline
// (gumbel_from_uniform); the CPU kernels take g precomputed by ATen's vectorised log.
#pragma once

#include "../common/macros.h"

namespace nas3d {
namespace gumbel {

template <typename acc>
NAS3D_HOST_DEVICE acc gumbel_from_uniform(acc u) {
  return -math_log(-math_log(u));
}

// One row of the forward: writes the contiguous weights row (K) and indices row (k in {1, 2}, k <= K).
template <typename acc, typename scalar_t, typename ZAt>
NAS3D_HOST_DEVICE void forward_row(ZAt z_at, int64_t K, int64_t k, scalar_t* weights, int64_t* indices) {
  // Top-2 by z with strict comparisons (the lower index wins ties). On random logits a branch per
  // entry is unpredictable (CPU) or divergent (GPU warps), and compilers turn plain selects back into
  // branches (skip the entry when z <= z2), so the values go through min/max selects and the indices
  // through bit masks.
  acc z1 = z_at(0);
  int64_t i1 = 0;
  acc z2 = z1;
  int64_t i2 = 0;
  if (K > 1) {  // the second entry is the runner-up whatever its value (-inf included)
    const acc z = z_at(1);
    const bool first = z > z1;
    z2 = first ? z1 : z;
    i2 = first ? 0 : 1;
    z1 = first ? z : z1;
    i1 = first ? 1 : 0;
  }
  for (int64_t j = 2; j < K; ++j) {
    const acc z = z_at(j);
    const int64_t above1 = -static_cast<int64_t>(z > z1);  // all ones when z takes first place
    const int64_t above2 = -static_cast<int64_t>(z > z2);  // all ones when z beats the second
    i2 = (above1 & i1) | (~above1 & ((above2 & j) | (~above2 & i2)));
    i1 = (above1 & j) | (~above1 & i1);
    const acc low = z < z1 ? z : z1;  // new second: max(z2, min(z, z1))
    z2 = low > z2 ? low : z2;
    z1 = z > z1 ? z : z1;
  }
  for (int64_t j = 0; j < K; ++j) weights[j] = static_cast<scalar_t>(0);
  indices[0] = i1;
  if (k == 1) {
    weights[i1] = static_cast<scalar_t>(1);
    return;
  }
  indices[1] = i2;
  const acc e = math_exp(z2 - z1);  // <= 1, so no overflow
  const acc inv_sum = static_cast<acc>(1) / (static_cast<acc>(1) + e);  // one division per row, not two
  weights[i1] = static_cast<scalar_t>(inv_sum);
  weights[i2] = static_cast<scalar_t>(e * inv_sum);
}

// One row of the backward with p = weights (soft): grad_at(j) and p_at(j) read the strided rows.
template <typename acc, typename scalar_t, typename GradAt, typename PAt>
NAS3D_HOST_DEVICE void backward_row_soft(GradAt grad_at, PAt p_at, int64_t K, acc inv_tau, scalar_t* grad_logits) {
  acc dot = 0;
  for (int64_t j = 0; j < K; ++j) dot += p_at(j) * grad_at(j);
  for (int64_t j = 0; j < K; ++j) grad_logits[j] = static_cast<scalar_t>(p_at(j) * (grad_at(j) - dot) * inv_tau);
}

// One row of the straight-through backward: p = y = softmax(z), recomputed from z_at rather than
// stored (three cheap passes over K save an (E, K) buffer).
template <typename acc, typename scalar_t, typename GradAt, typename ZAt>
NAS3D_HOST_DEVICE void backward_row_hard(GradAt grad_at, ZAt z_at, int64_t K, acc inv_tau, scalar_t* grad_logits) {
  acc m = z_at(0);
  for (int64_t j = 1; j < K; ++j) {
    const acc z = z_at(j);
    m = z > m ? z : m;
  }
  acc sum = 0;
  acc dot = 0;
  for (int64_t j = 0; j < K; ++j) {
    const acc e = math_exp(z_at(j) - m);
    sum += e;
    dot += e * grad_at(j);
  }
  dot /= sum;
  for (int64_t j = 0; j < K; ++j) {
    const acc y = math_exp(z_at(j) - m) / sum;
    grad_logits[j] = static_cast<scalar_t>(y * (grad_at(j) - dot) * inv_tau);
  }
}

}  // namespace gumbel
}  // namespace nas3d
