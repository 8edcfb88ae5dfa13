// CUDA kernels of nas3d::gumbel_topk: one thread per row (K is small: the 2-13 candidate ops of an edge),
// the row math of gumbel.h. Valid for sm_70 and newer; 64-bit row indices.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/rand.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "gumbel.h"
#include "gumbel_args.h"

namespace nas3d {
namespace gumbel {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ logits, int64_t ls0, int64_t ls1,
                               const scalar_t* __restrict__ noise, int64_t us0, int64_t us1, int64_t E, int64_t K,
                               acc_t<scalar_t> inv_tau, int64_t k, scalar_t* __restrict__ weights,
                               int64_t* __restrict__ indices) {
  using acc = acc_t<scalar_t>;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= E) return;
  const scalar_t* lr = logits + r * ls0;
  const scalar_t* ur = noise + r * us0;
  auto z_at = [&](int64_t j) {
    return (static_cast<acc>(lr[j * ls1]) + gumbel_from_uniform(static_cast<acc>(ur[j * us1]))) * inv_tau;
  };
  forward_row<acc>(z_at, K, k, weights + r * K, indices + r * k);
}

template <typename scalar_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad, int64_t gs0, int64_t gs1,
                                const scalar_t* __restrict__ logits, int64_t ls0, int64_t ls1,
                                const scalar_t* __restrict__ noise, int64_t us0, int64_t us1,
                                const scalar_t* __restrict__ weights, int64_t ws0, int64_t ws1, int64_t E,
                                int64_t K, acc_t<scalar_t> inv_tau, bool hard, scalar_t* __restrict__ out) {
  using acc = acc_t<scalar_t>;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= E) return;
  auto grad_at = [&](int64_t j) { return static_cast<acc>(grad[r * gs0 + j * gs1]); };
  if (hard) {
    auto z_at = [&](int64_t j) {
      return (static_cast<acc>(logits[r * ls0 + j * ls1]) +
              gumbel_from_uniform(static_cast<acc>(noise[r * us0 + j * us1]))) *
             inv_tau;
    };
    backward_row_hard<acc>(grad_at, z_at, K, inv_tau, out + r * K);
  } else {
    auto p_at = [&](int64_t j) { return static_cast<acc>(weights[r * ws0 + j * ws1]); };
    backward_row_soft<acc>(grad_at, p_at, K, inv_tau, out + r * K);
  }
}

unsigned int num_blocks(int64_t E) { return static_cast<unsigned int>((E + kThreads - 1) / kThreads); }

std::tuple<at::Tensor, at::Tensor> gumbel_topk_cuda(const at::Tensor& logits, const at::Tensor& noise,
                                                    double tau, int64_t k, bool hard) {
  check_forward_args(logits, noise, tau, k, hard);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t E = logits.size(0);
  const int64_t K = logits.size(1);
  at::Tensor weights = at::empty({E, K}, logits.options());
  at::Tensor indices = at::empty({E, k}, logits.options().dtype(at::kLong));
  if (E == 0) return {weights, indices};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gumbel_topk_cuda", [&] {
    forward_kernel<scalar_t><<<num_blocks(E), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        logits.const_data_ptr<scalar_t>(), logits.stride(0), logits.stride(1), noise.const_data_ptr<scalar_t>(),
        noise.stride(0), noise.stride(1), E, K, static_cast<acc_t<scalar_t>>(1.0 / tau), k,
        weights.mutable_data_ptr<scalar_t>(), indices.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {weights, indices};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gumbel_topk_sample_cuda(const at::Tensor& logits, double tau,
                                                                       int64_t k, bool hard,
                                                                       std::optional<at::Generator> generator) {
  check_sampling_args(logits, tau, k, hard);
  const c10::cuda::CUDAGuard guard(logits.device());
  // torch.rand's Philox stream; exact zeros are lifted to the smallest normal so g stays finite.
  at::Tensor noise = at::rand(logits.sizes(), generator, logits.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gumbel_topk_sample_cuda", [&] {
    noise.clamp_min_(static_cast<double>(std::numeric_limits<scalar_t>::min()));
  });
  auto [weights, indices] = gumbel_topk_cuda(logits, noise, tau, k, hard);
  return {weights, indices, noise};
}

at::Tensor gumbel_topk_backward_cuda(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& noise,
                                     const at::Tensor& weights, double tau, bool hard) {
  check_backward_args(grad, logits, noise, weights, tau);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t E = logits.size(0);
  const int64_t K = logits.size(1);
  at::Tensor grad_logits = at::empty({E, K}, logits.options());
  if (E == 0) return grad_logits;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gumbel_topk_backward_cuda", [&] {
    backward_kernel<scalar_t><<<num_blocks(E), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        grad.const_data_ptr<scalar_t>(), grad.stride(0), grad.stride(1), logits.const_data_ptr<scalar_t>(),
        logits.stride(0), logits.stride(1), noise.const_data_ptr<scalar_t>(), noise.stride(0), noise.stride(1),
        weights.const_data_ptr<scalar_t>(), weights.stride(0), weights.stride(1), E, K,
        static_cast<acc_t<scalar_t>>(1.0 / tau), hard, grad_logits.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_logits;
}

}  // namespace

TORCH_LIBRARY_IMPL(nas3d, CUDA, m) {
  m.impl("gumbel_topk", &gumbel_topk_cuda);
  m.impl("gumbel_topk_sample", &gumbel_topk_sample_cuda);
  m.impl("gumbel_topk_backward", &gumbel_topk_backward_cuda);
}

}  // namespace gumbel
}  // namespace nas3d
