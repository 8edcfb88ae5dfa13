// Host-side argument checks for the gumbel_topk entry points, shared by the CPU and CUDA files.
#pragma once

#include <ATen/core/Tensor.h>

#include "../common/checks.h"

namespace nas3d {
namespace gumbel {

inline void check_forward_args(const at::Tensor& logits, const at::Tensor& noise, double tau, int64_t k,
                               bool hard) {
  NAS3D_CHECK_DIM(logits, "logits", 2);
  NAS3D_CHECK_FLOATING(logits, "logits");
  TORCH_CHECK(logits.size(1) >= 1, "logits must have at least one column (K >= 1), got shape ", logits.sizes());
  NAS3D_CHECK_SAME_SHAPE(logits, noise, "logits", "noise");
  NAS3D_CHECK_SAME_DTYPE(logits, noise, "logits", "noise");
  NAS3D_CHECK_SAME_DEVICE(logits, noise, "logits", "noise");
  TORCH_CHECK(tau > 0, "tau must be > 0, got ", tau);
  TORCH_CHECK(k == 1 || k == 2, "k must be 1 or 2, got ", k);
  TORCH_CHECK(k <= logits.size(1), "k must be <= K = logits.shape[1] = ", logits.size(1), ", got ", k);
  TORCH_CHECK(!hard || k == 1, "hard=True needs k=1 (straight-through one-hot), got k=", k);
}

inline void check_backward_args(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& noise,
                                const at::Tensor& weights, double tau) {
  NAS3D_CHECK_DIM(logits, "logits", 2);
  NAS3D_CHECK_SAME_SHAPE(logits, grad, "logits", "grad_weights");
  NAS3D_CHECK_SAME_SHAPE(logits, noise, "logits", "noise");
  NAS3D_CHECK_SAME_SHAPE(logits, weights, "logits", "weights");
  NAS3D_CHECK_SAME_DTYPE(logits, grad, "logits", "grad_weights");
  NAS3D_CHECK_SAME_DTYPE(logits, noise, "logits", "noise");
  NAS3D_CHECK_SAME_DTYPE(logits, weights, "logits", "weights");
  NAS3D_CHECK_SAME_DEVICE(logits, grad, "logits", "grad_weights");
  NAS3D_CHECK_SAME_DEVICE(logits, noise, "logits", "noise");
  NAS3D_CHECK_SAME_DEVICE(logits, weights, "logits", "weights");
  TORCH_CHECK(tau > 0, "tau must be > 0, got ", tau);
}

}  // namespace gumbel
}  // namespace nas3d
