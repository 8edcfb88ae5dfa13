// Autograd of nas3d::gumbel_topk, in C++ so that a training step pays no Python autograd overhead for
// an op it calls every iteration. Device-agnostic: it redispatches to the CPU or CUDA kernels.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "gumbel_python.h"

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

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_sample(const at::Tensor& logits, double tau, int64_t k, bool hard,
                                                           const std::optional<at::Generator>& generator) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("nas3d::gumbel_topk_sample", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, double, int64_t, bool,
                                                                             std::optional<at::Generator>)>();
  return op.call(logits, tau, k, hard, generator);
}

// Gradient of the weights (soft) or straight-through (hard); see gumbel.h.
variable_list backward_from(AutogradContext* ctx, const variable_list& grads, size_t num_inputs) {
  variable_list out(num_inputs);
  if (!grads[0].defined()) return out;
  const auto saved = ctx->get_saved_variables();
  out[0] = call_backward(grads[0], saved[0], saved[1], saved[2], ctx->saved_data["tau"].toDouble(),
                         ctx->saved_data["hard"].toBool());
  return out;
}

void save_for_backward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& noise,
                       const at::Tensor& weights, double tau, bool hard) {
  ctx->saved_data["tau"] = tau;
  ctx->saved_data["hard"] = hard;
  ctx->save_for_backward({logits, noise, weights});
  ctx->set_materialize_grads(false);  // no zero-filled gradients for the non-differentiable outputs
}

class GumbelTopk : public torch::autograd::Function<GumbelTopk> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& noise, double tau,
                               int64_t k, bool hard) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [weights, indices] = call_forward(logits, noise, tau, k, hard);
    save_for_backward(ctx, logits, noise, weights, tau, hard);
    ctx->mark_non_differentiable({indices});
    return {weights, indices};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) { return backward_from(ctx, grads, 5); }
};

class GumbelTopkSample : public torch::autograd::Function<GumbelTopkSample> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, double tau, int64_t k, bool hard,
                               const std::optional<at::Generator>& generator) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [weights, indices, noise] = call_sample(logits, tau, k, hard, generator);
    save_for_backward(ctx, logits, noise, weights, tau, hard);
    ctx->mark_non_differentiable({indices, noise});
    return {weights, indices, noise};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) { return backward_from(ctx, grads, 5); }
};

std::tuple<at::Tensor, at::Tensor> gumbel_topk_autograd(const at::Tensor& logits, const at::Tensor& noise,
                                                        double tau, int64_t k, bool hard) {
  const auto out = GumbelTopk::apply(logits, noise, tau, k, hard);
  return {out[0], out[1]};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> gumbel_topk_sample_autograd(const at::Tensor& logits, double tau,
                                                                           int64_t k, bool hard,
                                                                           std::optional<at::Generator> generator) {
  const auto out = GumbelTopkSample::apply(logits, tau, k, hard, generator);
  return {out[0], out[1], out[2]};
}

// The backward op is not differentiable itself (no double backward). An unboxed kernel that goes straight
// below autograd spares every training step the boxed autograd fallback.
at::Tensor gumbel_topk_backward_autograd(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& noise,
                                         const at::Tensor& weights, double tau, bool hard) {
  TORCH_CHECK(!(at::GradMode::is_enabled() && grad.requires_grad()),
              "nas3d::gumbel_topk_backward is not differentiable (double backward of gumbel_topk is not supported)");
  at::AutoDispatchBelowADInplaceOrView guard;
  return call_backward(grad, logits, noise, weights, tau, hard);
}

std::tuple<at::Tensor, at::Tensor> gumbel_topk_sample_pair(const at::Tensor& logits, double tau, int64_t k,
                                                           bool hard) {
  auto [weights, indices, noise] = call_sample(logits, tau, k, hard, std::nullopt);
  return {weights, indices};
}

TORCH_LIBRARY_IMPL(nas3d, Autograd, m) {
  m.impl("gumbel_topk", &gumbel_topk_autograd);
  m.impl("gumbel_topk_sample", &gumbel_topk_sample_autograd);
  m.impl("gumbel_topk_backward", &gumbel_topk_backward_autograd);
}

}  // namespace gumbel
}  // namespace nas3d
