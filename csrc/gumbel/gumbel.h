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
  // Top-2 by z with strict comparisons (the lower index wins ties), written with selects rather than
  // branches: on random logits the branches are unpredictable (CPU) or divergent (GPU warps).
  acc z1 = z_at(0);
  int64_t i1 = 0;
  acc z2 = z1;
  int64_t i2 = 0;
  if (K > 1) {
    const acc z = z_at(1);
    const bool first = z > z1;
    z2 = first ? z1 : z;
    i2 = first ? 0 : 1;
    z1 = first ? z : z1;
    i1 = first ? 1 : 0;
  }
  for (int64_t j = 2; j < K; ++j) {
    const acc z = z_at(j);
    const bool gt1 = z > z1;
    const bool gt2 = z > z2;
    z2 = gt1 ? z1 : (gt2 ? z : z2);
    i2 = gt1 ? i1 : (gt2 ? j : i2);
    z1 = gt1 ? z : z1;
    i1 = gt1 ? j : i1;
  }
  for (int64_t j = 0; j < K; ++j) weights[j] = static_cast<scalar_t>(0);
  indices[0] = i1;
  if (k == 1) {
    weights[i1] = static_cast<scalar_t>(1);
    return;
  }
  indices[1] = i2;
  const acc e = math_exp(z2 - z1);  // <= 1, so no overflow
  const acc s = static_cast<acc>(1) + e;
  weights[i1] = static_cast<scalar_t>(static_cast<acc>(1) / s);
  weights[i2] = static_cast<scalar_t>(e / s);
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
