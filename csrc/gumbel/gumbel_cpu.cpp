// CPU kernels of nas3d::gumbel_topk: rows in parallel (at::parallel_for), the row math of gumbel.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "gumbel.h"
#include "gumbel_args.h"

namespace nas3d {
namespace gumbel {
namespace {

// Rows per task: a row costs ~K transcendental pairs, so small E stays on one thread.
int64_t grain_size(int64_t K) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(K, 1)); }

std::tuple<at::Tensor, at::Tensor> gumbel_topk_cpu(const at::Tensor& logits, const at::Tensor& noise,
                                                   double tau, int64_t k, bool hard) {
  check_forward_args(logits, noise, tau, k, hard);
  const int64_t E = logits.size(0);
  const int64_t K = logits.size(1);
  at::Tensor weights = at::empty({E, K}, logits.options());
  at::Tensor indices = at::empty({E, k}, logits.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gumbel_topk_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* l = logits.const_data_ptr<scalar_t>();
    const scalar_t* u = noise.const_data_ptr<scalar_t>();
    scalar_t* w = weights.mutable_data_ptr<scalar_t>();
    int64_t* idx = indices.mutable_data_ptr<int64_t>();
    const int64_t ls0 = logits.stride(0), ls1 = logits.stride(1);
    const int64_t us0 = noise.stride(0), us1 = noise.stride(1);
    const acc inv_tau = static_cast<acc>(1.0 / tau);
    at::parallel_for(0, E, grain_size(K), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        forward_row<scalar_t>(l + r * ls0, ls1, u + r * us0, us1, K, inv_tau, k, w + r * K, idx + r * k);
      }
    });
  });
  return {weights, indices};
}

at::Tensor gumbel_topk_backward_cpu(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& noise,
                                    const at::Tensor& weights, double tau, bool hard) {
  check_backward_args(grad, logits, noise, weights, tau);
  const int64_t E = logits.size(0);
  const int64_t K = logits.size(1);
  at::Tensor grad_logits = at::empty({E, K}, logits.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gumbel_topk_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* l = logits.const_data_ptr<scalar_t>();
    const scalar_t* u = noise.const_data_ptr<scalar_t>();
    const scalar_t* w = weights.const_data_ptr<scalar_t>();
    scalar_t* out = grad_logits.mutable_data_ptr<scalar_t>();
    const int64_t gs0 = grad.stride(0), gs1 = grad.stride(1);
    const int64_t ls0 = logits.stride(0), ls1 = logits.stride(1);
    const int64_t us0 = noise.stride(0), us1 = noise.stride(1);
    const int64_t ws0 = weights.stride(0), ws1 = weights.stride(1);
    const acc inv_tau = static_cast<acc>(1.0 / tau);
    at::parallel_for(0, E, grain_size(K), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        backward_row<scalar_t>(g + r * gs0, gs1, l + r * ls0, ls1, u + r * us0, us1, w + r * ws0, ws1, K, inv_tau,
                               hard, out + r * K);
      }
    });
  });
  return grad_logits;
}

}  // namespace

TORCH_LIBRARY_IMPL(nas3d, CPU, m) {
  m.impl("gumbel_topk", &gumbel_topk_cpu);
  m.impl("gumbel_topk_backward", &gumbel_topk_backward_cpu);
}

}  // namespace gumbel
}  // namespace nas3d
