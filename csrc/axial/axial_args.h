// Host-side argument checks and line geometry of the axial_attention entry points (CPU and CUDA).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "../common/checks.h"

namespace nas3d {
namespace axial {

// Where the lines of one (B, C, X, Y, Z) tensor live: line n = ((b * H + h) * S1 + o1) * S2 + o2, where
// o1, o2 index the two spatial axes other than `axis` (in order); element (i, d) of the line is at
// base(n) + i * s_axis + d * s_c. Any strides (slices of one qkv tensor, channels-last) are read in place.
struct Strides {
  int64_t b, c, axis, o1, o2;
  Strides() = default;
  Strides(const at::Tensor& t, int64_t axis_dim, int64_t d1, int64_t d2)
      : b(t.stride(0)), c(t.stride(1)), axis(t.stride(axis_dim)), o1(t.stride(d1)), o2(t.stride(d2)) {}
};

struct Geometry {
  int64_t B, H, D, L, S1, S2, axis, d1, d2;
  int64_t lines() const { return B * H * S1 * S2; }
  int64_t R() const { return 2 * L - 1; }
  // Offset of line n's element (0, 0) in a tensor with strides st (64-bit).
  int64_t base(int64_t n, const Strides& st) const {
    const int64_t o2 = n % S2;
    int64_t rest = n / S2;
    const int64_t o1 = rest % S1;
    rest /= S1;
    const int64_t h = rest % H;
    const int64_t b = rest / H;
    return b * st.b + h * D * st.c + o1 * st.o1 + o2 * st.o2;
  }
};

inline Geometry make_geometry(const at::Tensor& q, int64_t axis, int64_t num_heads) {
  Geometry g;
  g.axis = axis;
  g.d1 = axis == 2 ? 3 : 2;
  g.d2 = axis == 4 ? 3 : 4;
  g.B = q.size(0);
  g.H = num_heads;
  g.D = q.size(1) / num_heads;
  g.L = q.size(axis);
  g.S1 = q.size(g.d1);
  g.S2 = q.size(g.d2);
  return g;
}

inline void check_rel(const std::optional<at::Tensor>& rel, const char* name, const at::Tensor& q, int64_t L,
                      int64_t D) {
  if (!rel.has_value()) return;
  const at::Tensor& t = *rel;
  TORCH_CHECK(t.dim() == 2 && t.size(0) == 2 * L - 1 && t.size(1) == D, name,
              " must have shape (2L-1, head_dim) = (", 2 * L - 1, ", ", D, ") for axis length L = ", L, ", got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), name, " must have the dtype of q (", q.scalar_type(), "), got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == q.device(), name, " must be on the device of q (", q.device(), "), got ", t.device());
}

inline void check_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t axis, int64_t num_heads,
                       const std::optional<at::Tensor>& rel_q, const std::optional<at::Tensor>& rel_k,
                       const std::optional<at::Tensor>& rel_v) {
  NAS3D_CHECK_DIM(q, "q", 5);
  NAS3D_CHECK_FLOATING(q, "q");
  NAS3D_CHECK_SAME_SHAPE(q, k, "q", "k");
  NAS3D_CHECK_SAME_SHAPE(q, v, "q", "v");
  NAS3D_CHECK_SAME_DTYPE(q, k, "q", "k");
  NAS3D_CHECK_SAME_DTYPE(q, v, "q", "v");
  NAS3D_CHECK_SAME_DEVICE(q, k, "q", "k");
  NAS3D_CHECK_SAME_DEVICE(q, v, "q", "v");
  TORCH_CHECK(axis >= 2 && axis <= 4, "axis must be 2, 3 or 4 (a spatial axis of (B, C, X, Y, Z)), got ", axis);
  TORCH_CHECK(num_heads >= 1 && q.size(1) % num_heads == 0, "num_heads must be >= 1 and divide the channels C = ",
              q.size(1), ", got ", num_heads);
  const int64_t L = q.size(axis);
  const int64_t D = q.size(1) / num_heads;
  check_rel(rel_q, "rel_q", q, L, D);
  check_rel(rel_k, "rel_k", q, L, D);
  check_rel(rel_v, "rel_v", q, L, D);
}

inline void check_backward_args(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& out,
                                const at::Tensor& lse, const Geometry& g) {
  NAS3D_CHECK_SAME_SHAPE(q, grad_out, "q", "grad_out");
  NAS3D_CHECK_SAME_SHAPE(q, out, "q", "out");
  NAS3D_CHECK_SAME_DTYPE(q, grad_out, "q", "grad_out");
  NAS3D_CHECK_SAME_DTYPE(q, out, "q", "out");
  NAS3D_CHECK_SAME_DEVICE(q, grad_out, "q", "grad_out");
  NAS3D_CHECK_SAME_DEVICE(q, out, "q", "out");
  NAS3D_CHECK_SAME_DEVICE(q, lse, "q", "lse");
  TORCH_CHECK(lse.is_contiguous() && lse.dim() == 5 && lse.size(0) == g.B && lse.size(1) == g.H &&
                  lse.size(2) == g.S1 && lse.size(3) == g.S2 && lse.size(4) == g.L,
              "lse must be the contiguous (B, num_heads, S1, S2, L) log-sum-exp of the forward, got ", lse.sizes());
  const auto lse_dtype = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(lse.scalar_type() == lse_dtype, "lse must have dtype ", lse_dtype, ", got ", lse.scalar_type());
}

}  // namespace axial
}  // namespace nas3d
