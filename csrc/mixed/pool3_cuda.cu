// CUDA kernels of nas3d::max_pool3 / avg_pool3 and their backward: one thread per output (forward) or
// per input element (backward, gather form: no atomics), running the functions of pool3.h in the same
// nesting as the CPU's three passes (Z innermost, then Y, then X), so ties, NaN and the order of
// each sum match the cpu backend.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/cuda_utils.cuh"
#include "pool3.h"
#include "pool3_args.h"

namespace nas3d {
namespace pool3 {
namespace {

struct Dims {
  int64_t X, Y, Z, OX, OY, OZ;
};

template <typename scalar_t>
__global__ void max_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out,
                                   uint8_t* __restrict__ code, int64_t total, Dims d, int64_t s) {
  NAS3D_CUDA_LOOP(e, total) {
    const int64_t oz = e % d.OZ, oy = (e / d.OZ) % d.OY, ox = (e / (d.OZ * d.OY)) % d.OX;
    const int64_t b = e / (d.OZ * d.OY * d.OX);
    const scalar_t* slice = x + b * d.X * d.Y * d.Z;
    bool have_x = false;
    scalar_t best_x = scalar_t(0);
    int code_x = 0;
    for (int dx = 0; dx < 3; ++dx) {
      const int64_t ix = src(ox, s, dx);
      if (ix < 0 || ix >= d.X) continue;
      bool have_y = false;
      scalar_t best_y = scalar_t(0);
      int code_y = 0;
      for (int dy = 0; dy < 3; ++dy) {
        const int64_t iy = src(oy, s, dy);
        if (iy < 0 || iy >= d.Y) continue;
        int tz;
        const scalar_t v = max3(slice + (ix * d.Y + iy) * d.Z, int64_t{1}, d.Z, oz, s, tz);
        if (!have_y || beats(v, best_y)) best_y = v, code_y = dy * 3 + tz, have_y = true;
      }
      if (!have_x || beats(best_y, best_x)) best_x = best_y, code_x = dx * 9 + code_y, have_x = true;
    }
    out[e] = best_x;
    code[e] = static_cast<uint8_t>(code_x);
  }
}

template <typename scalar_t, int S>
__global__ void max_backward_kernel(const scalar_t* __restrict__ grad, const uint8_t* __restrict__ code,
                                    scalar_t* __restrict__ dx, int64_t total, Dims d) {
  using acc = acc_t<scalar_t>;
  NAS3D_CUDA_LOOP(e, total) {
    const int64_t iz = e % d.Z, iy = (e / d.Z) % d.Y, ix = (e / (d.Z * d.Y)) % d.X, b = e / (d.Z * d.Y * d.X);
    const int64_t out_slice = d.OX * d.OY * d.OZ;
    const scalar_t* grows[9];
    const uint8_t* crows[9];
    reader_rows<S>(grad + b * out_slice, d.OX, d.OY, d.OZ, ix, iy, grows);
    reader_rows<S>(code + b * out_slice, d.OX, d.OY, d.OZ, ix, iy, crows);
    dx[e] = static_cast<scalar_t>(max_grad_at<acc, S, true>(grows, crows, d.OZ, iz));
  }
}

template <typename scalar_t>
__global__ void avg_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, int64_t total, Dims d,
                                   int64_t s) {
  using acc = acc_t<scalar_t>;
  NAS3D_CUDA_LOOP(e, total) {
    const int64_t oz = e % d.OZ, oy = (e / d.OZ) % d.OY, ox = (e / (d.OZ * d.OY)) % d.OX;
    const scalar_t* slice = x + (e / (d.OZ * d.OY * d.OX)) * d.X * d.Y * d.Z;
    acc sum_x = 0;
    for (int dx = 0; dx < 3; ++dx) {
      const int64_t ix = src(ox, s, dx);
      if (ix < 0 || ix >= d.X) continue;
      acc sum_y = 0;
      for (int dy = 0; dy < 3; ++dy) {
        const int64_t iy = src(oy, s, dy);
        if (iy >= 0 && iy < d.Y) sum_y += sum3<acc>(slice + (ix * d.Y + iy) * d.Z, int64_t{1}, d.Z, oz, s);
      }
      sum_x += sum_y;
    }
    out[e] = static_cast<scalar_t>(sum_x * (acc(1) / acc(27)));
  }
}

// The adjoint, in the CPU's pass order: X first (innermost sum), then Y, then Z.
template <typename scalar_t, int S>
__global__ void avg_backward_kernel(const scalar_t* __restrict__ grad, scalar_t* __restrict__ dx, int64_t total,
                                    Dims d) {
  using acc = acc_t<scalar_t>;
  NAS3D_CUDA_LOOP(e, total) {
    const int64_t iz = e % d.Z, iy = (e / d.Z) % d.Y, ix = (e / (d.Z * d.Y)) % d.X;
    const scalar_t* slice = grad + (e / (d.Z * d.Y * d.X)) * d.OX * d.OY * d.OZ;
    acc sum_z = 0;
    for (int tz = 0; tz < 3; ++tz) {
      const int64_t oz = reader<S>(iz, d.OZ, tz);
      if (oz < 0) continue;
      acc sum_y = 0;
      for (int ty = 0; ty < 3; ++ty) {
        const int64_t oy = reader<S>(iy, d.OY, ty);
        if (oy < 0) continue;
        sum_y += sum3_adjoint<acc, S>(slice + oy * d.OZ + oz, d.OY * d.OZ, d.OX, ix);
      }
      sum_z += sum_y;
    }
    dx[e] = static_cast<scalar_t>(sum_z * (acc(1) / acc(27)));
  }
}

Dims dims_of(const Sizes& z) { return Dims{z.X, z.Y, z.Z, z.OX, z.OY, z.OZ}; }

std::tuple<at::Tensor, at::Tensor> max_pool3_cuda(const at::Tensor& x_in, int64_t stride) {
  check_forward_args(x_in, stride, "max_pool3");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const auto sz = Sizes::of(x, stride);
  at::Tensor out = at::empty(sz.out_shape(), x.options());
  at::Tensor code = at::empty(sz.out_shape(), x.options().dtype(at::kByte));
  const int64_t total = out.numel();
  if (total == 0) return {out, code};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool3_cuda", [&] {
    max_forward_kernel<scalar_t><<<cuda_blocks(total), kCudaThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), code.mutable_data_ptr<uint8_t>(), total,
        dims_of(sz), stride);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, code};
}

at::Tensor max_pool3_backward_cuda(const at::Tensor& grad_in, const at::Tensor& code_in, at::IntArrayRef input_size,
                                   int64_t stride) {
  check_backward_args(grad_in, input_size, stride, "max_pool3_backward");
  NAS3D_CHECK_SAME_SHAPE(grad_in, code_in, "grad", "code");
  TORCH_CHECK(code_in.scalar_type() == at::kByte, "code must be uint8, got ", code_in.scalar_type());
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor code = code_in.contiguous();
  at::Tensor dx = at::empty(input_size, grad.options());
  const auto sz = Sizes::of(dx, stride);
  const int64_t total = dx.numel();
  if (total == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "max_pool3_backward_cuda", [&] {
    auto launch = [&](auto kernel) {
      kernel<<<cuda_blocks(total), kCudaThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          grad.const_data_ptr<scalar_t>(), code.const_data_ptr<uint8_t>(), dx.mutable_data_ptr<scalar_t>(), total,
          dims_of(sz));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (stride == 1)
      launch(max_backward_kernel<scalar_t, 1>);
    else
      launch(max_backward_kernel<scalar_t, 2>);
  });
  return dx;
}

at::Tensor avg_pool3_cuda(const at::Tensor& x_in, int64_t stride) {
  check_forward_args(x_in, stride, "avg_pool3");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const auto sz = Sizes::of(x, stride);
  at::Tensor out = at::empty(sz.out_shape(), x.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "avg_pool3_cuda", [&] {
    avg_forward_kernel<scalar_t><<<cuda_blocks(total), kCudaThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), total, dims_of(sz), stride);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor avg_pool3_backward_cuda(const at::Tensor& grad_in, at::IntArrayRef input_size, int64_t stride) {
  check_backward_args(grad_in, input_size, stride, "avg_pool3_backward");
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  at::Tensor dx = at::empty(input_size, grad.options());
  const auto sz = Sizes::of(dx, stride);
  const int64_t total = dx.numel();
  if (total == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "avg_pool3_backward_cuda", [&] {
    auto launch = [&](auto kernel) {
      kernel<<<cuda_blocks(total), kCudaThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          grad.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), total, dims_of(sz));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (stride == 1)
      launch(avg_backward_kernel<scalar_t, 1>);
    else
      launch(avg_backward_kernel<scalar_t, 2>);
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(nas3d, CUDA, m) {
  m.impl("max_pool3", &max_pool3_cuda);
  m.impl("max_pool3_backward", &max_pool3_backward_cuda);
  m.impl("avg_pool3", &avg_pool3_cuda);
  m.impl("avg_pool3_backward", &avg_pool3_backward_cuda);
}

}  // namespace pool3
}  // namespace nas3d
