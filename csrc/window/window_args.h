// Host-side argument checks of the sliding-window ops, shared by the CPU and CUDA entry points. The Python
// layer (nas3d_fast/ops/window.py) validates first, with the same messages; these guard direct callers.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "../common/checks.h"

namespace nas3d {
namespace window {

// starts may have any strides (the entry points read a contiguous copy: N x 4 values).
inline void check_starts(const at::Tensor& starts, const at::Tensor& like) {
  NAS3D_CHECK_DIM(starts, "starts", 2);
  TORCH_CHECK(starts.size(1) == 4, "starts must have shape (N, 4) (b, z, y, x), got ", starts.sizes());
  TORCH_CHECK(starts.scalar_type() == at::kLong, "starts must be an int64 tensor, got ", starts.scalar_type());
  NAS3D_CHECK_SAME_DEVICE(like, starts, "the volume", "starts");
}

inline void check_gather_args(const at::Tensor& volume, const at::Tensor& starts, at::IntArrayRef roi) {
  NAS3D_CHECK_DIM(volume, "volume", 5);
  NAS3D_CHECK_FLOATING(volume, "volume");
  check_starts(starts, volume);
  TORCH_CHECK(roi.size() == 3, "roi must have 3 entries (rd, rh, rw), got ", roi);
  for (int d = 0; d < 3; ++d) {
    TORCH_CHECK(roi[d] >= 1 && roi[d] <= volume.size(2 + d), "roi must lie in [1, volume.shape[2:]] = ",
                volume.sizes().slice(2), ", got ", roi);
  }
}

inline void check_stitch_args(const at::Tensor& out, const at::Tensor& pred, const at::Tensor& weight,
                              const at::Tensor& starts) {
  NAS3D_CHECK_DIM(out, "out", 5);
  NAS3D_CHECK_DIM(pred, "pred", 5);
  NAS3D_CHECK_DIM(weight, "weight", 3);
  NAS3D_CHECK_FLOATING(out, "out");
  NAS3D_CHECK_SAME_DTYPE(out, pred, "out", "pred");
  NAS3D_CHECK_SAME_DTYPE(out, weight, "out", "weight");
  NAS3D_CHECK_SAME_DEVICE(out, pred, "out", "pred");
  NAS3D_CHECK_SAME_DEVICE(out, weight, "out", "weight");
  TORCH_CHECK(out.is_contiguous(), "out must be contiguous (it is accumulated in place)");
  TORCH_CHECK(weight.is_contiguous(), "weight must be contiguous");
  check_starts(starts, out);
  TORCH_CHECK(starts.size(0) == pred.size(0), "starts must have one row per window of pred (", pred.size(0),
              "), got ", starts.size(0));
  TORCH_CHECK(pred.size(1) == out.size(1), "pred must have the channels of out (", out.size(1), "), got ",
              pred.size(1));
  TORCH_CHECK(weight.sizes() == pred.sizes().slice(2), "weight must have the window shape of pred ",
              pred.sizes().slice(2), ", got ", weight.sizes());
  for (int d = 0; d < 3; ++d) {
    TORCH_CHECK(pred.size(2 + d) <= out.size(2 + d), "pred windows ", pred.sizes().slice(2),
                " must fit in out ", out.sizes().slice(2));
  }
}

inline bool is_label_dtype(at::ScalarType t) {
  return t == at::kByte || t == at::kShort || t == at::kInt || t == at::kLong;
}

// The largest class index a labels dtype holds.
inline int64_t max_label(at::ScalarType t) {
  switch (t) {
    case at::kByte: return 255;
    case at::kShort: return 32767;
    case at::kInt: return 2147483647LL;
    default: return INT64_MAX;
  }
}

inline void check_argmax_args(const at::Tensor& acc, const c10::optional<at::Tensor>& weight_sum,
                              const at::Tensor& labels) {
  NAS3D_CHECK_DIM(acc, "acc", 4);
  NAS3D_CHECK_FLOATING(acc, "acc");
  NAS3D_CHECK_DIM(labels, "labels", 3);
  TORCH_CHECK(is_label_dtype(labels.scalar_type()), "labels must have dtype uint8, int16, int32 or int64, got ",
              labels.scalar_type());
  NAS3D_CHECK_SAME_DEVICE(acc, labels, "acc", "labels");
  TORCH_CHECK(labels.sizes() == acc.sizes().slice(1), "labels must have the spatial shape of acc ",
              acc.sizes().slice(1), ", got ", labels.sizes());
  TORCH_CHECK(acc.size(0) >= 1, "acc must have at least one class, got shape ", acc.sizes());
  TORCH_CHECK(acc.size(0) - 1 <= max_label(labels.scalar_type()), "labels of dtype ", labels.scalar_type(),
              " cannot hold ", acc.size(0), " classes");
  if (weight_sum.has_value()) {
    const at::Tensor& w = *weight_sum;
    NAS3D_CHECK_DIM(w, "weight_sum", 3);
    NAS3D_CHECK_SAME_DTYPE(acc, w, "acc", "weight_sum");
    NAS3D_CHECK_SAME_DEVICE(acc, w, "acc", "weight_sum");
    TORCH_CHECK(w.sizes() == acc.sizes().slice(1), "weight_sum must have the spatial shape of acc ",
                acc.sizes().slice(1), ", got ", w.sizes());
  }
}

// Starts that put every window inside `shape` (b, and z/y/x with the window extent `roi`); host data only.
// Overflow-safe: `start + roi <= size` wraps for a start near 2^63 and passes (the kernels then read and
// write outside the buffer), so the bound is `start <= size - roi`, after `roi <= size` (checked by the
// callers, and again here), which cannot wrap for sizes and extents >= 0. starts_cpu: (N, 4), any strides.
inline void check_start_values(const at::Tensor& starts_cpu, at::IntArrayRef shape, at::IntArrayRef roi) {
  TORCH_CHECK_VALUE(starts_cpu.device().is_cpu() && starts_cpu.scalar_type() == at::kLong && starts_cpu.dim() == 2 &&
                        starts_cpu.size(1) == 4,
                    "starts must be a (N, 4) int64 tensor on the host here, got ", starts_cpu.sizes());
  TORCH_CHECK_VALUE(shape.size() == 5 && roi.size() == 3, "window shape check needs a 5D shape and 3 extents");
  for (int d = 0; d < 3; ++d) {
    TORCH_CHECK_VALUE(roi[d] >= 0 && roi[d] <= shape[2 + d], "the window ", roi, " must fit in the spatial shape ",
                      shape.slice(2));
  }
  const int64_t* s = starts_cpu.const_data_ptr<int64_t>();
  const int64_t s0 = starts_cpu.stride(0), s1 = starts_cpu.stride(1);
  for (int64_t n = 0; n < starts_cpu.size(0); ++n) {
    const int64_t* r = s + n * s0;
    const int64_t b = r[0];
    TORCH_CHECK_VALUE(b >= 0 && b < shape[0], "starts[", n, "] batch index ", b, " outside [0, ", shape[0], ")");
    for (int d = 0; d < 3; ++d) {
      const int64_t start = r[(1 + d) * s1];
      TORCH_CHECK_VALUE(start >= 0 && start <= shape[2 + d] - roi[d], "starts[", n, "] puts the window of ", roi,
                        " outside the spatial shape ", shape.slice(2), " (start ", start, " on axis ", d,
                        "; 0 <= start <= size - roi)");
    }
  }
}

}  // namespace window
}  // namespace nas3d
