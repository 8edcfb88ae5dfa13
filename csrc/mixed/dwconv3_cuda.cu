// CUDA kernels of nas3d::depthwise_conv3: one thread per output (forward) or input element (input
// gradient, gather form: no atomics), through the per-element functions of dwconv3.h that the cpu
// backend runs for half/bfloat16; the weight gradient is one block per (channel, tap) reducing the
// rows in a fixed order (deterministic).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "../common/cuda_utils.cuh"
#include "dwconv3.h"
#include "dwconv3_args.h"

namespace nas3d {
namespace dwconv3 {
namespace {

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                               scalar_t* __restrict__ out, int64_t total, Sizes z, int64_t s, int64_t r) {
  using acc = acc_t<scalar_t>;
  NAS3D_CUDA_LOOP(e, total) {
    const int64_t oz = e % z.OZ, oy = (e / z.OZ) % z.OY, ox = (e / (z.OZ * z.OY)) % z.OX, nc = e / (z.OZ * z.OY * z.OX);
    const scalar_t* taps[9];
    input_rows(x + nc * z.X * z.Y * z.Z, z.X, z.Y, z.Z, ox, oy, s, r, taps);
    out[e] = static_cast<scalar_t>(forward_at<acc>(taps, w + (nc % z.C) * 27, oz, z.Z, s, r));
  }
}

template <typename scalar_t>
__global__ void grad_input_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ w,
                                  scalar_t* __restrict__ dx, int64_t total, Sizes z, int64_t s, int64_t r) {
  using acc = acc_t<scalar_t>;
  NAS3D_CUDA_LOOP(e, total) {
    const int64_t iz = e % z.Z, iy = (e / z.Z) % z.Y, ix = (e / (z.Z * z.Y)) % z.X, nc = e / (z.Z * z.Y * z.X);
    const scalar_t* taps[9];
    grad_rows(grad + nc * z.OX * z.OY * z.OZ, z.OX, z.OY, z.OZ, ix, iy, s, r, taps);
    dx[e] = static_cast<scalar_t>(grad_input_at<acc>(taps, w + (nc % z.C) * 27, iz, z.OZ, s, r));
  }
}

// Block (c, tap): each thread sums the rows (n, ox, oy) it strides over, then a fixed tree.
template <typename scalar_t>
__global__ void grad_weight_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                   scalar_t* __restrict__ dw, Sizes z, int64_t s, int64_t r) {
  using acc = acc_t<scalar_t>;
  const int64_t c = blockIdx.x / 27;
  const int tap = static_cast<int>(blockIdx.x % 27), t = tap / 3, dz = tap % 3;
  int64_t lo, hi;
  tap_range(z.Z, z.OZ, s, r, dz, lo, hi);
  const int64_t rows = z.N * z.OX * z.OY;
  double total = 0;
  for (int64_t row = threadIdx.x; row < rows; row += blockDim.x) {
    const int64_t oy = row % z.OY, ox = (row / z.OY) % z.OX, n = row / (z.OY * z.OX);
    const int64_t nc = n * z.C + c;
    const scalar_t* taps[9];
    input_rows(x + nc * z.X * z.Y * z.Z, z.X, z.Y, z.Z, ox, oy, s, r, taps);
    if (taps[t] == nullptr) continue;
    const scalar_t* grow = grad + nc * z.OX * z.OY * z.OZ + (ox * z.OY + oy) * z.OZ;
    total += static_cast<double>(dot_tap<acc>(grow, taps[t], lo, hi, s, (dz - 1) * r));
  }
  total = block_sum(total);
  if (threadIdx.x == 0) dw[c * 27 + tap] = static_cast<scalar_t>(total);
}

at::Tensor forward_cuda(const at::Tensor& x_in, const at::Tensor& weight_in, int64_t s, int64_t r) {
  check_args(x_in, weight_in, s, r);
  r = effective_dilation(x_in.sizes(), r);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const auto z = Sizes::of(x.sizes(), s);
  at::Tensor out = at::empty(z.out_shape(), x.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "depthwise_conv3_cuda", [&] {
    forward_kernel<scalar_t><<<cuda_blocks(total), kCudaThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), total, z,
        s, r);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>> backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& weight_in, int64_t s, int64_t r,
    std::array<bool, 2> mask) {
  check_args(x_in, weight_in, s, r);
  r = effective_dilation(x_in.sizes(), r);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor grad = grad_in.contiguous();
  const auto z = Sizes::of(x.sizes(), s);
  TORCH_CHECK_VALUE(grad.sizes() == at::IntArrayRef(z.out_shape()), "depthwise_conv3_backward: grad must have the ",
                    "output shape ", at::IntArrayRef(z.out_shape()), ", got ", grad.sizes());
  NAS3D_CHECK_SAME_DTYPE(x, grad, "x", "grad");
  std::optional<at::Tensor> dx, dw;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "depthwise_conv3_backward_cuda", [&] {
    auto stream = c10::cuda::getCurrentCUDAStream();
    if (mask[0]) {
      at::Tensor d = at::empty(x.sizes(), x.options());
      const int64_t total = d.numel();
      if (total) {
        grad_input_kernel<scalar_t><<<cuda_blocks(total), kCudaThreads, 0, stream>>>(
            grad.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), d.mutable_data_ptr<scalar_t>(),
            total, z, s, r);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      dx = d;
    }
    if (mask[1]) {
      at::Tensor d = grad.numel() ? at::empty(weight.sizes(), weight.options()) : at::zeros_like(weight);
      if (grad.numel() && z.C) {
        grad_weight_kernel<scalar_t><<<static_cast<unsigned int>(z.C * 27), kCudaThreads, 0, stream>>>(
            grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), d.mutable_data_ptr<scalar_t>(), z, s, r);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      dw = d;
    }
  });
  return {dx, dw};
}

}  // namespace

TORCH_LIBRARY_IMPL(nas3d, CUDA, m) {
  m.impl("depthwise_conv3", &forward_cuda);
  m.impl("depthwise_conv3_backward", &backward_cuda);
}

}  // namespace dwconv3
}  // namespace nas3d
