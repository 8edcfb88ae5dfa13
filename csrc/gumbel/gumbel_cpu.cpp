// CPU kernels of nas3d::gumbel_topk. The Gumbel transform g = -log(-log(u)) runs through ATen's
// vectorised log (dispatched at run time to the CPU's widest vector unit); the rest of each row
// (perturb, top-k, renormalise, validate) is one fused pass, rows in parallel.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/log.h>
#include <torch/library.h>

#include <atomic>
#include <limits>
#include <vector>

#include "../common/counter_rng.h"
#include "gumbel.h"
#include "gumbel_args.h"

namespace nas3d {
namespace gumbel {
namespace {

// Rows per task: a row costs ~K compares and exps, so small E stays on one thread.
int64_t grain_size(int64_t K) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(K, 1)); }

// h = log(-log(u)) = -g in the accumulation dtype (float for half/bfloat16 noise), contiguous (E, K);
// callers subtract it (z = (l - h) / tau), which saves a pass.
at::Tensor neg_gumbel_noise(const at::Tensor& noise) {
  const auto acc_dtype = noise.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // log_out into a contiguous buffer: at::log would keep the layout of a column-major noise.
  at::Tensor h = at::empty(noise.sizes(), noise.options().dtype(acc_dtype));
  at::log_out(h, noise.to(acc_dtype));
  return h.neg_().log_();
}

// check_noise=false when the noise was drawn by gumbel_topk_sample_cpu, which only draws values in (0, 1).
std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& logits, const at::Tensor& noise, double tau,
                                               int64_t k, bool hard, bool check_noise) {
  check_forward_args(logits, noise, tau, k, hard);
  const int64_t E = logits.size(0);
  const int64_t K = logits.size(1);
  at::Tensor weights = at::empty({E, K}, logits.options());
  at::Tensor indices = at::empty({E, k}, logits.options().dtype(at::kLong));
  if (E == 0) return {weights, indices};
  const at::Tensor h = neg_gumbel_noise(noise);
  std::atomic<bool> bad_noise{false}, bad_logit{false}, masked_row{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gumbel_topk_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* l = logits.const_data_ptr<scalar_t>();
    const scalar_t* u = noise.const_data_ptr<scalar_t>();
    const acc* hp = h.const_data_ptr<acc>();
    scalar_t* w = weights.mutable_data_ptr<scalar_t>();
    int64_t* idx = indices.mutable_data_ptr<int64_t>();
    const int64_t ls0 = logits.stride(0), ls1 = logits.stride(1);
    const int64_t us0 = noise.stride(0), us1 = noise.stride(1);
    const acc inv_tau = static_cast<acc>(1.0 / tau);
    at::parallel_for(0, E, grain_size(K), [&](int64_t begin, int64_t end) {
      // z of one row, computed once (and validated in the same pass) into a small local buffer.
      std::vector<acc> z(K);
      bool noise_ok = true, logits_ok = true, rows_ok = true;
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* lr = l + r * ls0;
        const scalar_t* ur = u + r * us0;
        const acc* hr = hp + r * K;
        bool finite_entry = false;
        for (int64_t j = 0; j < K; ++j) {
          const acc lv = static_cast<acc>(lr[j * ls1]);
          const acc uv = static_cast<acc>(ur[j * us1]);
          noise_ok &= !check_noise || (uv > 0 && uv < 1);
          logits_ok &= lv < std::numeric_limits<acc>::infinity();  // false for NaN too
          finite_entry |= lv > -std::numeric_limits<acc>::infinity();
          z[j] = (lv - hr[j]) * inv_tau;
        }
        rows_ok &= finite_entry;
        forward_row<acc>([&](int64_t j) { return z[j]; }, K, k, w + r * K, idx + r * k);
      }
      if (!noise_ok) bad_noise.store(true, std::memory_order_relaxed);
      if (!logits_ok) bad_logit.store(true, std::memory_order_relaxed);
      if (!rows_ok) masked_row.store(true, std::memory_order_relaxed);
    });
  });
  TORCH_CHECK_VALUE(!bad_noise, "noise must hold uniform samples strictly inside (0, 1)");
  TORCH_CHECK_VALUE(!bad_logit, "logits must not contain NaN or +inf");
  TORCH_CHECK_VALUE(!masked_row, "logits must have at least one finite entry in every row");
  return {weights, indices};
}

std::tuple<at::Tensor, at::Tensor> gumbel_topk_cpu(const at::Tensor& logits, const at::Tensor& noise,
                                                   double tau, int64_t k, bool hard) {
  return forward_cpu(logits, noise, tau, k, hard, /*check_noise=*/true);
}

template <typename scalar_t>
constexpr int uniform_bits() {
  return std::numeric_limits<scalar_t>::digits - 1;
}

// One 64-bit seed is taken from the generator (under its lock); the noise itself comes from the
// counter-based generator of counter_rng.h, in parallel: a seeded generator gives the same noise
// whatever the thread count.
std::tuple<at::Tensor, at::Tensor, at::Tensor> gumbel_topk_sample_cpu(const at::Tensor& logits, double tau,
                                                                      int64_t k, bool hard,
                                                                      std::optional<at::Generator> generator) {
  NAS3D_CHECK_DIM(logits, "logits", 2);
  NAS3D_CHECK_FLOATING(logits, "logits");
  at::Tensor noise = at::empty(logits.sizes(), logits.options());
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  uint64_t seed;
  {
    std::lock_guard<std::mutex> lock(gen->mutex_);
    seed = gen->random64();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gumbel_topk_sample_cpu", [&] {
    using acc = acc_t<scalar_t>;
    scalar_t* u = noise.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, noise.numel(), 16384, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        u[i] = static_cast<scalar_t>(open_uniform<acc>(splitmix64_draw(seed, i), uniform_bits<scalar_t>()));
      }
    });
  });
  auto [weights, indices] = forward_cpu(logits, noise, tau, k, hard, /*check_noise=*/false);
  return {weights, indices, noise};
}

at::Tensor gumbel_topk_backward_cpu(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& noise,
                                    const at::Tensor& weights, double tau, bool hard) {
  check_backward_args(grad, logits, noise, weights, tau);
  const int64_t E = logits.size(0);
  const int64_t K = logits.size(1);
  at::Tensor grad_logits = at::empty({E, K}, logits.options());
  if (E == 0) return grad_logits;
  const at::Tensor h = hard ? neg_gumbel_noise(noise) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gumbel_topk_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* gradp = grad.const_data_ptr<scalar_t>();
    const scalar_t* l = logits.const_data_ptr<scalar_t>();
    const scalar_t* w = weights.const_data_ptr<scalar_t>();
    const acc* hp = hard ? h.const_data_ptr<acc>() : nullptr;
    scalar_t* out = grad_logits.mutable_data_ptr<scalar_t>();
    const int64_t gs0 = grad.stride(0), gs1 = grad.stride(1);
    const int64_t ls0 = logits.stride(0), ls1 = logits.stride(1);
    const int64_t ws0 = weights.stride(0), ws1 = weights.stride(1);
    const acc inv_tau = static_cast<acc>(1.0 / tau);
    at::parallel_for(0, E, grain_size(K), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        auto grad_at = [&](int64_t j) { return static_cast<acc>(gradp[r * gs0 + j * gs1]); };
        if (hard) {
          auto z_at = [&](int64_t j) { return (static_cast<acc>(l[r * ls0 + j * ls1]) - hp[r * K + j]) * inv_tau; };
          backward_row_hard<acc>(grad_at, z_at, K, inv_tau, out + r * K);
        } else {
          auto p_at = [&](int64_t j) { return static_cast<acc>(w[r * ws0 + j * ws1]); };
          backward_row_soft<acc>(grad_at, p_at, K, inv_tau, out + r * K);
        }
      }
    });
  });
  return grad_logits;
}

}  // namespace

TORCH_LIBRARY_IMPL(nas3d, CPU, m) {
  m.impl("gumbel_topk", &gumbel_topk_cpu);
  m.impl("gumbel_topk_sample", &gumbel_topk_sample_cpu);
  m.impl("gumbel_topk_backward", &gumbel_topk_backward_cpu);
}

}  // namespace gumbel
}  // namespace nas3d
