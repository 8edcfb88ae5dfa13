// CUDA kernels of nas3d::weighted_sum (+ its fused weight gradient) and nas3d::kernel_merge (+ backward),
// through the per-element functions of weighted_sum.h. Reductions use fixed blocks and a fixed tree
// (deterministic, no atomics). Tensors are passed as pointer tables of at most kMaxTensors per launch;
// longer lists run in chunks that add to the output in order.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/cuda_utils.cuh"
#include "weighted_sum.h"
#include "weighted_sum_args.h"

namespace nas3d {
namespace wsum {
namespace {

constexpr int kMaxTensors = 16;

template <typename T>
struct Table {
  const T* p[kMaxTensors];
  int64_t sizes[3 * kMaxTensors];
};

template <typename scalar_t>
__global__ void sum_kernel(Table<scalar_t> xs, const scalar_t* __restrict__ w, int64_t K, bool accumulate,
                           scalar_t* __restrict__ out, int64_t n) {
  using acc = acc_t<scalar_t>;
  NAS3D_CUDA_LOOP(i, n) {
    const acc v = sum_at<acc>(xs.p, w, K, i);
    out[i] = static_cast<scalar_t>(accumulate ? static_cast<acc>(out[i]) + v : v);
  }
}

// Block (k, b): the dot of grad and xs[k] over block b of kBlock elements, into partial[k, b].
template <typename scalar_t>
__global__ void dot_kernel(const scalar_t* __restrict__ grad, Table<scalar_t> xs, int64_t n, int64_t blocks,
                           double* __restrict__ partial) {
  using acc = acc_t<scalar_t>;
  const int64_t k = blockIdx.y, b = blockIdx.x;
  const int64_t begin = b * kBlock, end = std::min(begin + kBlock, n);
  acc total = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x)
    total += static_cast<acc>(grad[i]) * static_cast<acc>(xs.p[k][i]);
  const double sum = block_sum(static_cast<double>(total));
  if (threadIdx.x == 0) partial[k * blocks + b] = sum;
}

template <typename scalar_t>
__global__ void merge_kernel(Table<scalar_t> ks, const scalar_t* __restrict__ w, int64_t K, Box box, bool accumulate,
                             scalar_t* __restrict__ out, int64_t n) {
  using acc = acc_t<scalar_t>;
  NAS3D_CUDA_LOOP(e, n) {
    const acc v = merge_at<acc>(ks.p, ks.sizes, w, K, box, e);
    out[e] = static_cast<scalar_t>(accumulate ? static_cast<acc>(out[e]) + v : v);
  }
}

// One block per kernel j: grad_kernel_j = w_j * grad at the kernel's place, and grad_w[j] = their dot.
template <typename scalar_t>
__global__ void merge_backward_kernel(const scalar_t* __restrict__ grad, Table<scalar_t> ks, const scalar_t* __restrict__ w,
                                      Box box, int64_t row_count, scalar_t** __restrict__ grad_kernels,
                                      scalar_t* __restrict__ grad_w) {
  const int64_t j = blockIdx.x;
  const int64_t* k = ks.sizes + 3 * j;
  const int64_t n = row_count * k[0] * k[1] * k[2];
  const double wj = static_cast<double>(w[j]);
  double total = 0;
  for (int64_t e = threadIdx.x; e < n; e += blockDim.x) {
    const double g = static_cast<double>(grad[merged_index(box, k, e)]);
    grad_kernels[j][e] = static_cast<scalar_t>(wj * g);
    total += g * static_cast<double>(ks.p[j][e]);
  }
  total = block_sum(total);
  if (threadIdx.x == 0) grad_w[j] = static_cast<scalar_t>(total);
}

std::vector<at::Tensor> contiguous_all(at::TensorList xs) {
  std::vector<at::Tensor> out;
  for (const auto& x : xs) out.push_back(x.contiguous());
  return out;
}

template <typename T>
Table<T> table(const std::vector<at::Tensor>& xs, int64_t first, int64_t count) {
  Table<T> t{};
  for (int64_t j = 0; j < count; ++j) {
    t.p[j] = xs[first + j].const_data_ptr<T>();
    for (int d = 0; d < 3 && xs[first + j].dim() == 5; ++d) t.sizes[3 * j + d] = xs[first + j].size(2 + d);
  }
  return t;
}

at::Tensor weighted_sum_cuda(at::TensorList xs_in, const at::Tensor& weights_in) {
  check_sum_args(xs_in, weights_in, "weighted_sum", "xs");
  check_same_shapes(xs_in, "weighted_sum");
  const c10::cuda::CUDAGuard guard(weights_in.device());
  const auto xs = contiguous_all(xs_in);
  const at::Tensor weights = weights_in.contiguous();
  at::Tensor out = at::empty(xs[0].sizes(), xs[0].options());
  const int64_t n = out.numel(), K = static_cast<int64_t>(xs.size());
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "weighted_sum_cuda", [&] {
    for (int64_t first = 0; first < K; first += kMaxTensors) {
      const int64_t count = std::min<int64_t>(kMaxTensors, K - first);
      sum_kernel<scalar_t><<<cuda_blocks(n), kCudaThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          table<scalar_t>(xs, first, count), weights.const_data_ptr<scalar_t>() + first, count, first > 0,
          out.mutable_data_ptr<scalar_t>(), n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

at::Tensor weighted_sum_backward_cuda(const at::Tensor& grad_in, at::TensorList xs_in) {
  TORCH_CHECK_VALUE(!xs_in.empty(), "weighted_sum_backward: xs must hold at least one tensor");
  check_same_shapes(xs_in, "weighted_sum_backward");
  NAS3D_CHECK_SAME_SHAPE(xs_in[0], grad_in, "xs[0]", "grad");
  for (const auto& x : xs_in) NAS3D_CHECK_SAME_DTYPE(grad_in, x, "grad", "each tensor of xs");
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const auto xs = contiguous_all(xs_in);
  const at::Tensor grad = grad_in.contiguous();
  const int64_t n = grad.numel(), K = static_cast<int64_t>(xs.size());
  const int64_t blocks = std::max<int64_t>(1, (n + kBlock - 1) / kBlock);
  at::Tensor partial = at::zeros({K, blocks}, grad.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "weighted_sum_backward_cuda", [&] {
    for (int64_t first = 0; first < K && n; first += kMaxTensors) {
      const int64_t count = std::min<int64_t>(kMaxTensors, K - first);
      const dim3 grid(static_cast<unsigned int>(blocks), static_cast<unsigned int>(count));
      dot_kernel<scalar_t><<<grid, kCudaThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          grad.const_data_ptr<scalar_t>(), table<scalar_t>(xs, first, count), n, blocks,
          partial.mutable_data_ptr<double>() + first * blocks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return at::sum(partial, {1}).to(grad.scalar_type());
}

at::Tensor kernel_merge_cuda(at::TensorList kernels_in, const at::Tensor& weights_in, at::IntArrayRef size) {
  const auto ks = check_kernel_args(kernels_in, weights_in, size);
  const c10::cuda::CUDAGuard guard(weights_in.device());
  const auto kernels = contiguous_all(kernels_in);
  const at::Tensor weights = weights_in.contiguous();
  const Box box{size[0], size[1], size[2]};
  at::Tensor out = at::empty({kernels[0].size(0), kernels[0].size(1), size[0], size[1], size[2]}, weights.options());
  const int64_t n = out.numel(), K = static_cast<int64_t>(kernels.size());
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "kernel_merge_cuda", [&] {
    for (int64_t first = 0; first < K; first += kMaxTensors) {
      const int64_t count = std::min<int64_t>(kMaxTensors, K - first);
      merge_kernel<scalar_t><<<cuda_blocks(n), kCudaThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          table<scalar_t>(kernels, first, count), weights.const_data_ptr<scalar_t>() + first, count, box, first > 0,
          out.mutable_data_ptr<scalar_t>(), n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> kernel_merge_backward_cuda(const at::Tensor& grad_in,
                                                                           at::TensorList kernels_in,
                                                                           const at::Tensor& weights_in) {
  TORCH_CHECK_VALUE(grad_in.dim() == 5, "kernel_merge_backward: grad must have 5 dimensions, got ", grad_in.sizes());
  check_kernel_args(kernels_in, weights_in, grad_in.sizes().slice(2));
  NAS3D_CHECK_SAME_DTYPE(weights_in, grad_in, "weights", "grad");
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const auto kernels = contiguous_all(kernels_in);
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor weights = weights_in.contiguous();
  const Box box{grad.size(2), grad.size(3), grad.size(4)};
  const int64_t K = static_cast<int64_t>(kernels.size()), rows = grad.size(0) * grad.size(1);
  std::vector<at::Tensor> grad_kernels;
  for (const auto& k : kernels) grad_kernels.push_back(at::empty(k.sizes(), k.options()));
  at::Tensor grad_w = at::empty({K}, weights.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "kernel_merge_backward_cuda", [&] {
    for (int64_t first = 0; first < K; first += kMaxTensors) {
      const int64_t count = std::min<int64_t>(kMaxTensors, K - first);
      // The output pointers go to the device as a small table (they do not fit the by-value Table).
      at::Tensor host = at::empty({count}, at::TensorOptions().dtype(at::kLong));
      for (int64_t j = 0; j < count; ++j)
        host.mutable_data_ptr<int64_t>()[j] = reinterpret_cast<int64_t>(grad_kernels[first + j].mutable_data_ptr<scalar_t>());
      const at::Tensor out_table = host.to(grad.device());
      merge_backward_kernel<scalar_t><<<static_cast<unsigned int>(count), kCudaThreads, 0,
                                        c10::cuda::getCurrentCUDAStream()>>>(
          grad.const_data_ptr<scalar_t>(), table<scalar_t>(kernels, first, count),
          weights.const_data_ptr<scalar_t>() + first, box, rows,
          reinterpret_cast<scalar_t**>(out_table.data_ptr<int64_t>()), grad_w.mutable_data_ptr<scalar_t>() + first);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_kernels, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(nas3d, CUDA, m) {
  m.impl("weighted_sum", &weighted_sum_cuda);
  m.impl("weighted_sum_backward", &weighted_sum_backward_cuda);
  m.impl("kernel_merge", &kernel_merge_cuda);
  m.impl("kernel_merge_backward", &kernel_merge_backward_cuda);
}

}  // namespace wsum
}  // namespace nas3d
