// Host-side argument checks for the gumbel_topk entry points, shared by the CPU and CUDA files.
#pragma once

#include <ATen/core/Tensor.h>

#include "../common/checks.h"

namespace nas3d {
namespace gumbel {

// The Python wrapper's eager fast path leaves validation to these checks, so they raise the same
// ValueErrors (c10::ValueError) with the same messages.
inline void check_logits(const at::Tensor& logits) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "logits must have 2 dimensions, got shape ", logits.sizes());
  const auto dtype = logits.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble,
                    "logits must have dtype in (float16, bfloat16, float32, float64), got ", dtype);
  TORCH_CHECK_VALUE(logits.size(1) >= 1, "logits must have at least one column (K >= 1), got shape ",
                    logits.sizes());
}

// The temperatures every backend accepts (nas3d_fast.ops.gumbel.TAU_RANGE, checked there for every
// backend; here again for direct torch.ops calls): tau and 1 / tau stay in float16's normal range.
constexpr double kTauMin = 1e-4;
constexpr double kTauMax = 1e4;

inline void check_tau(double tau) {
  TORCH_CHECK_VALUE(tau >= kTauMin && tau <= kTauMax, "tau must be a number in [0.0001, 10000], got ", tau);
}

inline void check_sampling_args(const at::Tensor& logits, double tau, int64_t k, bool hard) {
  check_logits(logits);
  check_tau(tau);
  TORCH_CHECK_VALUE(k == 1 || k == 2, "k must be 1 or 2, got ", k);
  TORCH_CHECK_VALUE(k <= logits.size(1), "k must be <= K = logits.shape[1] = ", logits.size(1), ", got ", k);
  TORCH_CHECK_VALUE(!hard || k == 1, "hard=True needs k=1 (straight-through one-hot), got k=", k);
}

inline void check_forward_args(const at::Tensor& logits, const at::Tensor& noise, double tau, int64_t k,
                               bool hard) {
  check_sampling_args(logits, tau, k, hard);
  NAS3D_CHECK_SAME_SHAPE(logits, noise, "logits", "noise");
  NAS3D_CHECK_SAME_DTYPE(logits, noise, "logits", "noise");
  NAS3D_CHECK_SAME_DEVICE(logits, noise, "logits", "noise");
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
  check_tau(tau);
}

}  // namespace gumbel
}  // namespace nas3d
