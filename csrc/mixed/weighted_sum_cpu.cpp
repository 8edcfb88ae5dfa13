// CPU kernels of nas3d::weighted_sum, weighted_sum_backward (the fused weight gradient), kernel_merge
// and kernel_merge_backward. float and double sum tensor by tensor over chunks (vectorised); half and
// bfloat16 run the per-element functions of weighted_sum.h that the CUDA kernel runs.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "line_pass.h"
#include "weighted_sum.h"
#include "weighted_sum_args.h"

namespace nas3d {
namespace wsum {
namespace {

std::vector<at::Tensor> contiguous_all(at::TensorList xs) {
  std::vector<at::Tensor> out;
  out.reserve(xs.size());
  for (const auto& x : xs) out.push_back(x.contiguous());
  return out;
}

template <typename T>
std::vector<const T*> pointers(const std::vector<at::Tensor>& xs) {
  std::vector<const T*> p;
  for (const auto& x : xs) p.push_back(x.const_data_ptr<T>());
  return p;
}

at::Tensor weighted_sum_cpu(at::TensorList xs_in, const at::Tensor& weights_in) {
  check_sum_args(xs_in, weights_in, "weighted_sum", "xs");
  check_same_shapes(xs_in, "weighted_sum");
  const auto xs = contiguous_all(xs_in);
  const at::Tensor weights = weights_in.contiguous();
  at::Tensor out = at::empty(xs[0].sizes(), xs[0].options());
  const int64_t n = out.numel(), K = static_cast<int64_t>(xs.size());
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "weighted_sum_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const auto p = pointers<scalar_t>(xs);
    const scalar_t* w = weights.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kElementsPerTask, [&](int64_t begin, int64_t end) {
      if constexpr (std::is_same_v<scalar_t, acc>) {
        // Same order per element as sum_at: w0 x0 first, then each tensor added in turn.
        for (int64_t i = begin; i < end; ++i) o[i] = acc(0) + w[0] * p[0][i];
        for (int64_t k = 1; k < K; ++k) {
          const scalar_t wk = w[k];
          const scalar_t* x = p[k];
          for (int64_t i = begin; i < end; ++i) o[i] += wk * x[i];
        }
      } else {
        for (int64_t i = begin; i < end; ++i) o[i] = static_cast<scalar_t>(sum_at<acc>(p.data(), w, K, i));
      }
    });
  });
  return out;
}

// grad_w[k] = <grad, xs[k]>: blocks of kBlock elements in parallel, then the blocks in order (double).
at::Tensor weighted_sum_backward_cpu(const at::Tensor& grad_in, at::TensorList xs_in) {
  TORCH_CHECK_VALUE(!xs_in.empty(), "weighted_sum_backward: xs must hold at least one tensor");
  check_same_shapes(xs_in, "weighted_sum_backward");
  NAS3D_CHECK_SAME_SHAPE(xs_in[0], grad_in, "xs[0]", "grad");
  for (const auto& x : xs_in) NAS3D_CHECK_SAME_DTYPE(grad_in, x, "grad", "each tensor of xs");
  const auto xs = contiguous_all(xs_in);
  const at::Tensor grad = grad_in.contiguous();
  const int64_t n = grad.numel(), K = static_cast<int64_t>(xs.size());
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  at::Tensor grad_w = at::empty({K}, grad.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "weighted_sum_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const auto p = pointers<scalar_t>(xs);
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    std::vector<double> partial(K * blocks);
    at::parallel_for(0, K * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t kb = begin; kb < end; ++kb) partial[kb] = block_dot<acc>(g, p[kb / blocks], n, kb % blocks);
    });
    scalar_t* gw = grad_w.mutable_data_ptr<scalar_t>();
    for (int64_t k = 0; k < K; ++k) {
      double total = 0;
      for (int64_t b = 0; b < blocks; ++b) total += partial[k * blocks + b];
      gw[k] = static_cast<scalar_t>(total);
    }
  });
  return grad_w;
}

at::Tensor kernel_merge_cpu(at::TensorList kernels_in, const at::Tensor& weights_in, at::IntArrayRef size) {
  const auto ks = check_kernel_args(kernels_in, weights_in, size);
  const auto kernels = contiguous_all(kernels_in);
  const at::Tensor weights = weights_in.contiguous();
  const Box box{size[0], size[1], size[2]};
  at::Tensor out = at::empty({kernels[0].size(0), kernels[0].size(1), size[0], size[1], size[2]}, weights.options());
  const int64_t K = static_cast<int64_t>(kernels.size());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "kernel_merge_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const auto p = pointers<scalar_t>(kernels);
    const scalar_t* w = weights.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, out.numel(), kElementsPerTask, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) o[e] = static_cast<scalar_t>(merge_at<acc>(p.data(), ks.data(), w, K, box, e));
    });
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> kernel_merge_backward_cpu(const at::Tensor& grad_in,
                                                                          at::TensorList kernels_in,
                                                                          const at::Tensor& weights_in) {
  TORCH_CHECK_VALUE(grad_in.dim() == 5, "kernel_merge_backward: grad must have 5 dimensions, got ", grad_in.sizes());
  const auto ks = check_kernel_args(kernels_in, weights_in, grad_in.sizes().slice(2));
  NAS3D_CHECK_SAME_DTYPE(weights_in, grad_in, "weights", "grad");
  const auto kernels = contiguous_all(kernels_in);
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor weights = weights_in.contiguous();
  const Box box{grad.size(2), grad.size(3), grad.size(4)};
  const int64_t K = static_cast<int64_t>(kernels.size());
  std::vector<at::Tensor> grad_kernels;
  at::Tensor grad_w = at::empty({K}, weights.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "kernel_merge_backward_cpu", [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* w = weights.const_data_ptr<scalar_t>();
    scalar_t* gw = grad_w.mutable_data_ptr<scalar_t>();
    for (int64_t j = 0; j < K; ++j) {
      at::Tensor gk = at::empty(kernels[j].sizes(), kernels[j].options());
      const scalar_t* kp = kernels[j].const_data_ptr<scalar_t>();
      scalar_t* gkp = gk.mutable_data_ptr<scalar_t>();
      double dot = 0;  // kernels are small: one thread, index order
      for (int64_t e = 0; e < gk.numel(); ++e) {
        const double ge = static_cast<double>(g[merged_index(box, ks.data() + 3 * j, e)]);
        gkp[e] = static_cast<scalar_t>(static_cast<double>(w[j]) * ge);
        dot += ge * static_cast<double>(kp[e]);
      }
      gw[j] = static_cast<scalar_t>(dot);
      grad_kernels.push_back(gk);
    }
  });
  return {grad_kernels, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(nas3d, CPU, m) {
  m.impl("weighted_sum", &weighted_sum_cpu);
  m.impl("weighted_sum_backward", &weighted_sum_backward_cpu);
  m.impl("kernel_merge", &kernel_merge_cpu);
  m.impl("kernel_merge_backward", &kernel_merge_backward_cpu);
}

}  // namespace wsum
}  // namespace nas3d
