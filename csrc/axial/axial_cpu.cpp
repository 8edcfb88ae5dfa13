// CPU entry points of nas3d::axial_attention: argument checks, allocation, the relative embeddings in
// the accumulation type, and the choice between the kernels compiled for AVX2 + FMA
// (axial_cpu_avx2.cpp) and for the baseline ISA (this file). NAS3D_AXIAL_ISA=generic in the environment
// forces the baseline kernels (tests run both).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <optional>
#include <vector>

#include "axial.h"
#include "axial_args.h"

#define NAS3D_AXIAL_ISA generic
#include "axial_cpu_kernel.h"
#undef NAS3D_AXIAL_ISA

#include "axial_cpu_isa.h"

namespace nas3d {
namespace axial {
namespace {

bool use_avx2() {
  const char* forced = std::getenv("NAS3D_AXIAL_ISA");
  if (forced != nullptr && std::strcmp(forced, "generic") == 0) return false;
  return avx2_supported();
}

at::ScalarType acc_dtype(const at::Tensor& q) { return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

constexpr int64_t kRelPad = 8;  // >= the SIMD lanes of axial_cpu_kernel.h

// The kernels' reversed table [D][R + kRelPad]: entry x = R-1-r of row r, optionally times `mul`, zero
// past R; undefined when the embedding is absent.
at::Tensor reversed(const std::optional<at::Tensor>& rel, at::ScalarType dtype, double mul = 1.0) {
  if (!rel.has_value()) return at::Tensor();
  const int64_t R = rel->size(0), D = rel->size(1);
  at::Tensor table = at::zeros({D, R + kRelPad}, rel->options().dtype(dtype));
  at::Tensor src = rel->to(dtype).flip({0}).t();
  if (mul != 1.0) src = src * mul;
  table.narrow(1, 0, R).copy_(src);
  return table;
}

std::tuple<at::Tensor, at::Tensor> axial_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                       int64_t axis, int64_t num_heads, double scale,
                                                       const std::optional<at::Tensor>& rel_q,
                                                       const std::optional<at::Tensor>& rel_k,
                                                       const std::optional<at::Tensor>& rel_v) {
  check_args(q, k, v, axis, num_heads, rel_q, rel_k, rel_v);
  const Geometry g = make_geometry(q, axis, num_heads);
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty({g.B, g.H, g.S1, g.S2, g.L}, q.options().dtype(acc_dtype(q)));
  if (q.numel() == 0) return {out, lse};
  const auto dt = acc_dtype(q);
  const at::Tensor rq = reversed(rel_q, dt), rk = reversed(rel_k, dt, scale), rv = reversed(rel_v, dt);
  if (use_avx2()) {
    avx2_forward(g, q, k, v, rq, rk, rv, scale, out, lse);
  } else {
    generic::forward(g, q, k, v, rq, rk, rv, scale, out, lse);
  }
  return {out, lse};
}

// Chunks of line groups with their own relative-gradient accumulators: fixed by the shapes
// (deterministic sums), at most 64, and at most ~32 MiB of accumulators.
int64_t rel_chunks(const Geometry& g) {
  const int64_t per_chunk = 3 * g.D * (g.R() + kRelPad) * 4;
  const int64_t cap = std::max<int64_t>(1, (int64_t{32} << 20) / std::max<int64_t>(per_chunk, 1));
  return std::max<int64_t>(1, std::min({generic::num_groups(g), int64_t{64}, cap}));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> axial_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, int64_t axis, int64_t num_heads, double scale, const std::optional<at::Tensor>& rel_q,
    const std::optional<at::Tensor>& rel_k, const std::optional<at::Tensor>& rel_v) {
  check_args(q, k, v, axis, num_heads, rel_q, rel_k, rel_v);
  const Geometry g = make_geometry(q, axis, num_heads);
  check_backward_args(grad_out, q, out, lse, g);
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(q.sizes(), q.options());
  at::Tensor dv = at::empty(q.sizes(), q.options());
  const auto dt = acc_dtype(q);
  const bool any_rel = rel_q.has_value() || rel_k.has_value() || rel_v.has_value();
  const int64_t R = g.R(), D = g.D;
  auto rel_grad = [&](const std::optional<at::Tensor>& rel) {
    return rel.has_value() ? at::zeros({R, D}, q.options()) : at::empty({0}, q.options());
  };
  at::Tensor drq = rel_grad(rel_q), drk = rel_grad(rel_k), drv = rel_grad(rel_v);
  if (q.numel() == 0) {
    dq.zero_(), dk.zero_(), dv.zero_();
    return {dq, dk, dv, drq, drk, drv};
  }
  const at::Tensor rq = reversed(rel_q, dt), rk = reversed(rel_k, dt, scale), rvT = reversed(rel_v, dt);
  const int64_t chunks = any_rel ? rel_chunks(g) : generic::num_groups(g);
  at::Tensor drel = any_rel ? at::zeros({chunks, 3, D, R + kRelPad}, q.options().dtype(dt)) : at::Tensor();
  if (use_avx2()) {
    avx2_backward(g, grad_out, q, k, v, out, lse, rq, rk, rvT, scale, dq, dk, dv, drel, chunks, rel_q.has_value(),
                  rel_k.has_value(), rel_v.has_value());
  } else {
    generic::backward(g, grad_out, q, k, v, out, lse, rq, rk, rvT, scale, dq, dk, dv, drel, chunks,
                      rel_q.has_value(), rel_k.has_value(), rel_v.has_value());
  }
  if (any_rel) {
    // Sum the chunks in order (deterministic), reversed [D][R + pad] -> [R][D]; drel_k carries the scale.
    at::Tensor total = at::zeros({3, D, R + kRelPad}, drel.options());
    AT_DISPATCH_FLOATING_TYPES(dt, "axial_attention_rel_sum", [&] {
      const scalar_t* src = drel.const_data_ptr<scalar_t>();
      scalar_t* dst = total.mutable_data_ptr<scalar_t>();
      const int64_t n = 3 * D * (R + kRelPad);
      for (int64_t c = 0; c < chunks; ++c)
        for (int64_t e = 0; e < n; ++e) dst[e] += src[c * n + e];
    });
    total = total.narrow(2, 0, R).flip({2});
    if (rel_q.has_value()) drq = total[0].t().to(q.scalar_type()).contiguous();
    if (rel_k.has_value()) drk = (total[1] * scale).t().to(q.scalar_type()).contiguous();
    if (rel_v.has_value()) drv = total[2].t().to(q.scalar_type()).contiguous();
  }
  return {dq, dk, dv, drq, drk, drv};
}

}  // namespace

TORCH_LIBRARY_IMPL(nas3d, CPU, m) {
  m.impl("axial_attention", &axial_attention_cpu);
  m.impl("axial_attention_backward", &axial_attention_backward_cpu);
}

}  // namespace axial
}  // namespace nas3d
