// Autograd of nas3d::gumbel_topk, in C++ so that a training step pays no Python autograd overhead for
// an op it calls every iteration. Device-agnostic: it redispatches to the CPU or CUDA kernels.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace nas3d {
namespace gumbel {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor> call_forward(const at::Tensor& logits, const at::Tensor& noise, double tau,
                                                int64_t k, bool hard) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("nas3d::gumbel_topk", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double,
                                                                 int64_t, bool)>();
  return op.call(logits, noise, tau, k, hard);
}

at::Tensor call_backward(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& noise,
                         const at::Tensor& weights, double tau, bool hard) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("nas3d::gumbel_topk_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, double, bool)>();
  return op.call(grad, logits, noise, weights, tau, hard);
}

class GumbelTopk : public torch::autograd::Function<GumbelTopk> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& noise, double tau,
                               int64_t k, bool hard) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [weights, indices] = call_forward(logits, noise, tau, k, hard);
    ctx->saved_data["tau"] = tau;
    ctx->saved_data["hard"] = hard;
    ctx->save_for_backward({logits, noise, weights});
    ctx->mark_non_differentiable({indices});
    ctx->set_materialize_grads(false);  // no zero-filled gradient for the int64 indices
    return {weights, indices};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const auto saved = ctx->get_saved_variables();
    const at::Tensor grad_logits = call_backward(grads[0], saved[0], saved[1], saved[2],
                                                 ctx->saved_data["tau"].toDouble(), ctx->saved_data["hard"].toBool());
    return {grad_logits, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> gumbel_topk_autograd(const at::Tensor& logits, const at::Tensor& noise,
                                                        double tau, int64_t k, bool hard) {
  const auto out = GumbelTopk::apply(logits, noise, tau, k, hard);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(nas3d, Autograd, m) { m.impl("gumbel_topk", &gumbel_topk_autograd); }

}  // namespace gumbel
}  // namespace nas3d
