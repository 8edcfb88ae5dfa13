// CPU kernels of nas3d::gumbel_topk. Rows are processed in chunks, in parallel: a chunk's noise is
// gathered into a small contiguous buffer, turned into h = log(-log(u)) = -g by the vectorised logs
// of vec_log.h, and each row is then perturbed, validated, ranked and renormalised in one pass. No
// ATen op runs inside the kernel: at E ~ 200 their dispatch would cost more than the arithmetic.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/SmallVector.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <limits>

#include "../common/counter_rng.h"
#include "../common/vec_log.h"
#include "gumbel.h"
#include "gumbel_args.h"

namespace nas3d {
namespace gumbel {
namespace {

// Rows per task: a row costs ~K compares and exps, so small E stays on one thread.
int64_t grain_size(int64_t K) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(K, 1)); }

// Rows per chunk of the noise buffer: ~1024 values, enough for the vector loop, small enough for L1.
int64_t chunk_rows(int64_t K) { return std::max<int64_t>(1, 1024 / std::max<int64_t>(K, 1)); }

// h = log(-log(u)) = -g in the accumulation type, contiguous (rows, K), for rows [r0, r1) of the
// (strided) noise; callers subtract it (z = (l - h) / tau). False if check_noise finds a value
// outside (0, 1).
template <typename scalar_t, typename acc>
bool neg_gumbel_rows(const scalar_t* u, int64_t us0, int64_t us1, int64_t r0, int64_t r1, int64_t K,
                     bool check_noise, acc* h) {
  bool ok = true;
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* ur = u + r * us0;
    acc* hr = h + (r - r0) * K;
    for (int64_t j = 0; j < K; ++j) {
      const acc uv = static_cast<acc>(ur[j * us1]);
      ok &= !check_noise || (uv > 0 && uv < 1);
      hr[j] = uv;
    }
  }
  log_neg_log_inplace(h, (r1 - r0) * K);
  return ok;
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
  std::atomic<bool> bad_noise{false}, bad_logit{false}, masked_row{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gumbel_topk_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* l = logits.const_data_ptr<scalar_t>();
    const scalar_t* u = noise.const_data_ptr<scalar_t>();
    scalar_t* w = weights.mutable_data_ptr<scalar_t>();
    int64_t* idx = indices.mutable_data_ptr<int64_t>();
    const int64_t ls0 = logits.stride(0), ls1 = logits.stride(1);
    const int64_t us0 = noise.stride(0), us1 = noise.stride(1);
    const acc inv_tau = static_cast<acc>(1.0 / tau);
    const int64_t chunk = chunk_rows(K);
    at::parallel_for(0, E, grain_size(K), [&](int64_t begin, int64_t end) {
      // -g of one chunk of rows, then z of one row (computed once, validated in the same pass).
      c10::SmallVector<acc, 1024> h(std::min(chunk, end - begin) * K);  // on the stack unless K > 1024
      c10::SmallVector<acc, 64> z(K);
      bool noise_ok = true, logits_ok = true, rows_ok = true;
      for (int64_t r0 = begin; r0 < end; r0 += chunk) {
        const int64_t r1 = std::min(end, r0 + chunk);
        noise_ok &= neg_gumbel_rows(u, us0, us1, r0, r1, K, check_noise, h.data());
        for (int64_t r = r0; r < r1; ++r) {
          const scalar_t* lr = l + r * ls0;
          const acc* hr = h.data() + (r - r0) * K;
          bool finite_entry = false;
          for (int64_t j = 0; j < K; ++j) {
            const acc lv = static_cast<acc>(lr[j * ls1]);
            logits_ok &= lv < std::numeric_limits<acc>::infinity();  // false for NaN too
            finite_entry |= lv > -std::numeric_limits<acc>::infinity();
            z[j] = (lv - hr[j]) * inv_tau;
          }
          rows_ok &= finite_entry;
          forward_row<acc>([&](int64_t j) { return z[j]; }, K, k, w + r * K, idx + r * k);
        }
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
  check_sampling_args(logits, tau, k, hard);  // before drawing: a refused call leaves the generator as it was
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gumbel_topk_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* gradp = grad.const_data_ptr<scalar_t>();
    const scalar_t* l = logits.const_data_ptr<scalar_t>();
    const scalar_t* u = noise.const_data_ptr<scalar_t>();
    const scalar_t* w = weights.const_data_ptr<scalar_t>();
    scalar_t* out = grad_logits.mutable_data_ptr<scalar_t>();
    const int64_t gs0 = grad.stride(0), gs1 = grad.stride(1);
    const int64_t ls0 = logits.stride(0), ls1 = logits.stride(1);
    const int64_t us0 = noise.stride(0), us1 = noise.stride(1);
    const int64_t ws0 = weights.stride(0), ws1 = weights.stride(1);
    const acc inv_tau = static_cast<acc>(1.0 / tau);
    const int64_t chunk = chunk_rows(K);
    at::parallel_for(0, E, grain_size(K), [&](int64_t begin, int64_t end) {
      c10::SmallVector<acc, 1024> h(hard ? std::min(chunk, end - begin) * K : 0);
      for (int64_t r0 = begin; r0 < end; r0 += chunk) {
        const int64_t r1 = std::min(end, r0 + chunk);
        if (hard) neg_gumbel_rows(u, us0, us1, r0, r1, K, /*check_noise=*/false, h.data());
        for (int64_t r = r0; r < r1; ++r) {
          auto grad_at = [&](int64_t j) { return static_cast<acc>(gradp[r * gs0 + j * gs1]); };
          if (hard) {
            const acc* hr = h.data() + (r - r0) * K;
            auto z_at = [&](int64_t j) { return (static_cast<acc>(l[r * ls0 + j * ls1]) - hr[j]) * inv_tau; };
            backward_row_hard<acc>(grad_at, z_at, K, inv_tau, out + r * K);
          } else {
            auto p_at = [&](int64_t j) { return static_cast<acc>(w[r * ws0 + j * ws1]); };
            backward_row_soft<acc>(grad_at, p_at, K, inv_tau, out + r * K);
          }
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
