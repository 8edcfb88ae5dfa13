// Gumbel top-k sampling (SCNAS Algorithm 1): the per-row arithmetic shared by the CPU and CUDA kernels.
//
// For one row of K logits l, uniform noise u in (0, 1) and temperature tau:
//   z_j = (l_j - log(-log(u_j))) / tau,   y = softmax(z)
// the top-k entries of z (equivalently of y; ties to the lower index) are chosen and
//   weights_i = y_i / sum_{chosen} y  =  exp(z_i - z_top1) / sum_{chosen j} exp(z_j - z_top1)
// for chosen i, 0 elsewhere. hard (k = 1) gives a one-hot row.
// Backward, with p = weights (soft) or p = y (hard, straight-through):
//   dL/dl_j = p_j * (g_j - sum_i p_i g_i) / tau
#pragma once

#include "../common/macros.h"

namespace nas3d {
namespace gumbel {

// z_j of a strided row: (logits[j] + Gumbel(noise[j])) / tau, in the accumulation type.
template <typename scalar_t>
NAS3D_HOST_DEVICE acc_t<scalar_t> perturbed_logit(const scalar_t* logits, int64_t logits_stride,
                                                  const scalar_t* noise, int64_t noise_stride, int64_t j,
                                                  acc_t<scalar_t> inv_tau) {
  using acc = acc_t<scalar_t>;
  const acc u = static_cast<acc>(noise[j * noise_stride]);
  return (static_cast<acc>(logits[j * logits_stride]) - math_log(-math_log(u))) * inv_tau;
}

// One row of the forward. logits/noise are strided rows of length K; weights is a contiguous row of
// length K; indices a contiguous row of length k (k in {1, 2}, k <= K).
template <typename scalar_t>
NAS3D_HOST_DEVICE void forward_row(const scalar_t* logits, int64_t logits_stride, const scalar_t* noise,
                                   int64_t noise_stride, int64_t K, acc_t<scalar_t> inv_tau, int64_t k,
                                   scalar_t* weights, int64_t* indices) {
  using acc = acc_t<scalar_t>;
  int64_t i1 = 0;
  int64_t i2 = -1;
  acc z1 = perturbed_logit(logits, logits_stride, noise, noise_stride, 0, inv_tau);
  acc z2 = z1;
  for (int64_t j = 1; j < K; ++j) {
    const acc z = perturbed_logit(logits, logits_stride, noise, noise_stride, j, inv_tau);
    // Strict comparisons keep the lower index on ties.
    if (z > z1) {
      i2 = i1;
      z2 = z1;
      i1 = j;
      z1 = z;
    } else if (i2 < 0 || z > z2) {
      i2 = j;
      z2 = z;
    }
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

// One row of the backward. grad/weights/logits/noise are strided rows of length K; grad_logits is a
// contiguous row of length K. weights is read when !hard, logits and noise when hard (y is recomputed
// rather than stored: it costs three cheap passes over K and saves an (E, K) buffer).
template <typename scalar_t>
NAS3D_HOST_DEVICE void backward_row(const scalar_t* grad, int64_t grad_stride, const scalar_t* logits,
                                    int64_t logits_stride, const scalar_t* noise, int64_t noise_stride,
                                    const scalar_t* weights, int64_t weights_stride, int64_t K,
                                    acc_t<scalar_t> inv_tau, bool hard, scalar_t* grad_logits) {
  using acc = acc_t<scalar_t>;
  if (!hard) {
    acc dot = 0;
    for (int64_t j = 0; j < K; ++j)
      dot += static_cast<acc>(weights[j * weights_stride]) * static_cast<acc>(grad[j * grad_stride]);
    for (int64_t j = 0; j < K; ++j) {
      const acc p = static_cast<acc>(weights[j * weights_stride]);
      grad_logits[j] = static_cast<scalar_t>(p * (static_cast<acc>(grad[j * grad_stride]) - dot) * inv_tau);
    }
    return;
  }
  acc m = perturbed_logit(logits, logits_stride, noise, noise_stride, 0, inv_tau);
  for (int64_t j = 1; j < K; ++j) {
    const acc z = perturbed_logit(logits, logits_stride, noise, noise_stride, j, inv_tau);
    m = z > m ? z : m;
  }
  acc sum = 0;
  acc dot = 0;
  for (int64_t j = 0; j < K; ++j) {
    const acc e = math_exp(perturbed_logit(logits, logits_stride, noise, noise_stride, j, inv_tau) - m);
    sum += e;
    dot += e * static_cast<acc>(grad[j * grad_stride]);
  }
  dot /= sum;
  for (int64_t j = 0; j < K; ++j) {
    const acc y = math_exp(perturbed_logit(logits, logits_stride, noise, noise_stride, j, inv_tau) - m) / sum;
    grad_logits[j] = static_cast<scalar_t>(y * (static_cast<acc>(grad[j * grad_stride]) - dot) * inv_tau);
  }
}

}  // namespace gumbel
}  // namespace nas3d
