// CPU kernels of nas3d::weighted_sum, weighted_sum_backward (the fused weight gradient), kernel_merge
// and kernel_merge_backward. float and double sum tensor by tensor over chunks (vectorised); half and
// bfloat16 run the per-element functions of weighted_sum.h that the CUDA kernel runs.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "line_pass.h"
#include "weighted_sum.h"
#include "weighted_sum_args.h"

namespace nas3d {
namespace wsum {
namespace {

constexpr int64_t kMergeRowsPerBlock = 1024;  // (out, in) channel pairs per weight-gradient block

std::vector<at::Tensor> contiguous_all(at::TensorList xs) {
  std::vector<at::Tensor> out;
  out.reserve(xs.size());
  for (const auto& x : xs) out.push_back(x.contiguous());
  return out;
}

// A kernel (O, I, k0, k1, k2) read in place whatever its strides: the composed P3D kernels arrive as
// permuted views, and copying each to contiguous memory took three allocations per kernel per
// training step (forward, backward, and the forward recomputed in backward).
struct KernelView {
  int64_t in_channels, out_stride, in_stride;
  std::vector<int64_t> tap;  // offset of each (k0, k1, k2) tap, row-major
  int64_t row(int64_t r) const { return (r / in_channels) * out_stride + (r % in_channels) * in_stride; }
};

KernelView view_of(const at::Tensor& k) {
  KernelView v{k.size(1), k.stride(0), k.stride(1), {}};
  for (int64_t a = 0; a < k.size(2); ++a)
    for (int64_t b = 0; b < k.size(3); ++b)
      for (int64_t c = 0; c < k.size(4); ++c) v.tap.push_back(a * k.stride(2) + b * k.stride(3) + c * k.stride(4));
  return v;
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

// Where each element of kernel j's (k0, k1, k2) row lands in a merged row (merged_index of row 0).
std::vector<int64_t> landing(const Box& box, const int64_t* k) {
  std::vector<int64_t> table(k[0] * k[1] * k[2]);
  for (int64_t q = 0; q < static_cast<int64_t>(table.size()); ++q) table[q] = merged_index(box, k, q);
  return table;
}

at::Tensor kernel_merge_cpu(at::TensorList kernels_in, const at::Tensor& weights_in, at::IntArrayRef size) {
  const auto ks = check_kernel_args(kernels_in, weights_in, size);
  const bool in_place = kernels_in[0].scalar_type() == at::kFloat || kernels_in[0].scalar_type() == at::kDouble;
  const auto kernels = in_place ? kernels_in.vec() : contiguous_all(kernels_in);
  const at::Tensor weights = weights_in.contiguous();
  const Box box{size[0], size[1], size[2]};
  at::Tensor out = at::empty({kernels[0].size(0), kernels[0].size(1), size[0], size[1], size[2]}, weights.options());
  const int64_t K = static_cast<int64_t>(kernels.size());
  const int64_t vol = box.s0 * box.s1 * box.s2, rows = kernels[0].size(0) * kernels[0].size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "kernel_merge_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const auto p = pointers<scalar_t>(kernels);
    const scalar_t* w = weights.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    if constexpr (std::is_same_v<scalar_t, acc>) {
      // Row by row, kernel after kernel: each element gets 0 + w0 k0 + w1 k1 + ... in merge_at's order,
      // without its per-element index arithmetic (a 256-channel merge is 1.8 M elements per kernel).
      std::vector<std::vector<int64_t>> tables;
      std::vector<KernelView> views;
      for (int64_t j = 0; j < K; ++j) {
        tables.push_back(landing(box, ks.data() + 3 * j));
        views.push_back(view_of(kernels[j]));
      }
      at::parallel_for(0, rows, std::max<int64_t>(1, kElementsPerTask / vol), [&](int64_t begin, int64_t end) {
        std::fill(o + begin * vol, o + end * vol, acc(0));
        for (int64_t j = 0; j < K; ++j) {
          const int64_t kv = static_cast<int64_t>(tables[j].size());
          const int64_t* t = tables[j].data();
          const int64_t* tap = views[j].tap.data();
          const scalar_t wj = w[j];
          for (int64_t r = begin; r < end; ++r) {
            const scalar_t* kr = p[j] + views[j].row(r);
            scalar_t* orow = o + r * vol;
            for (int64_t q = 0; q < kv; ++q) orow[t[q]] += wj * kr[tap[q]];
          }
        }
      });
    } else {
      at::parallel_for(0, out.numel(), kElementsPerTask, [&](int64_t begin, int64_t end) {
        for (int64_t e = begin; e < end; ++e) o[e] = static_cast<scalar_t>(merge_at<acc>(p.data(), ks.data(), w, K, box, e));
      });
    }
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> kernel_merge_backward_cpu(const at::Tensor& grad_in,
                                                                          at::TensorList kernels_in,
                                                                          const at::Tensor& weights_in) {
  TORCH_CHECK_VALUE(grad_in.dim() == 5, "kernel_merge_backward: grad must have 5 dimensions, got ", grad_in.sizes());
  const auto ks = check_kernel_args(kernels_in, weights_in, grad_in.sizes().slice(2));
  NAS3D_CHECK_SAME_DTYPE(weights_in, grad_in, "weights", "grad");
  const auto kernels = kernels_in.vec();  // read in place (KernelView)
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor weights = weights_in.contiguous();
  const Box box{grad.size(2), grad.size(3), grad.size(4)};
  const int64_t K = static_cast<int64_t>(kernels.size());
  std::vector<at::Tensor> grad_kernels;
  at::Tensor grad_w = at::empty({K}, weights.options());
  const int64_t rows = kernels[0].size(0) * kernels[0].size(1);
  const int64_t blocks = (rows + kMergeRowsPerBlock - 1) / kMergeRowsPerBlock;
  for (int64_t j = 0; j < K; ++j) grad_kernels.push_back(at::empty(kernels[j].sizes(), kernels[j].options()));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "kernel_merge_backward_cpu", [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* w = weights.const_data_ptr<scalar_t>();
    scalar_t* gw = grad_w.mutable_data_ptr<scalar_t>();
    const int64_t vol = box.s0 * box.s1 * box.s2;
    // Blocks of rows in parallel; each block's dot in double, then the blocks in order: the same
    // bits whatever the thread count.
    std::vector<double> partial(K * blocks);
    for (int64_t j = 0; j < K; ++j) {
      const auto table = landing(box, ks.data() + 3 * j);
      const int64_t kv = static_cast<int64_t>(table.size());
      const KernelView view = view_of(kernels[j]);
      const scalar_t* kp = kernels[j].const_data_ptr<scalar_t>();
      scalar_t* gkp = grad_kernels[j].mutable_data_ptr<scalar_t>();
      const double wj = static_cast<double>(w[j]);
      at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          double dot = 0;
          const int64_t r1 = std::min(rows, (b + 1) * kMergeRowsPerBlock);
          for (int64_t r = b * kMergeRowsPerBlock; r < r1; ++r) {
            for (int64_t q = 0; q < kv; ++q) {
              const double ge = static_cast<double>(g[r * vol + table[q]]);
              gkp[r * kv + q] = static_cast<scalar_t>(wj * ge);
              dot += ge * static_cast<double>(kp[view.row(r) + view.tap[q]]);
            }
          }
          partial[j * blocks + b] = dot;
        }
      });
      double total = 0;
      for (int64_t b = 0; b < blocks; ++b) total += partial[j * blocks + b];
      gw[j] = static_cast<scalar_t>(total);
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
