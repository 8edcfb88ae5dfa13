// CUDA kernels of the sliding-window ops: one thread per voxel (64-bit indices), the shared math of
// window.h. Stitching launches one kernel per window, in order, on the current stream: each voxel's sum is
// formed in window order with no atomics (deterministic). The argmax visits the classes of one voxel per
// thread. Valid for sm_70 and newer.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>

#include "window.h"
#include "window_args.h"

namespace nas3d {
namespace window {
namespace {

constexpr int kThreads = 256;

struct Strides5 {
  int64_t s[5];
};

Strides5 strides_of(const at::Tensor& t) {
  Strides5 r;
  for (int d = 0; d < 5; ++d) r.s[d] = t.stride(d);
  return r;
}

// Grid-stride loop over `total` voxels, so any size fits the grid limits.
template <typename scalar_t>
__global__ void gather_kernel(const scalar_t* __restrict__ volume, Strides5 vs, const int64_t* __restrict__ starts,
                              int64_t C, int64_t rd, int64_t rh, int64_t rw, int64_t total,
                              scalar_t* __restrict__ out) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t per_window = C * rd * rh * rw;
    const int64_t n = i / per_window;
    const WindowIndex w = unravel_window(i - n * per_window, rd, rh, rw);
    const int64_t* st = starts + 4 * n;
    out[i] = volume[offset5(vs.s, st[0], w.c, st[1] + w.z, st[2] + w.y, st[3] + w.x)];
  }
}

template <typename scalar_t>
__global__ void stitch_kernel(scalar_t* __restrict__ out, Strides5 os, const scalar_t* __restrict__ pred, Strides5 ps,
                              const scalar_t* __restrict__ weight, const int64_t* __restrict__ starts, int64_t n,
                              int64_t rd, int64_t rh, int64_t rw, int64_t total) {
  using acc = acc_t<scalar_t>;
  const int64_t* st = starts + 4 * n;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const WindowIndex w = unravel_window(i, rd, rh, rw);
    scalar_t* o = out + offset5(os.s, st[0], w.c, st[1] + w.z, st[2] + w.y, st[3] + w.x);
    const acc p = static_cast<acc>(pred[offset5(ps.s, n, w.c, w.z, w.y, w.x)]);
    const acc wt = static_cast<acc>(weight[(w.z * rh + w.y) * rw + w.x]);
    *o = static_cast<scalar_t>(stitch_value<acc>(static_cast<acc>(*o), wt, p));
  }
}

struct Strides4 {
  int64_t s[4];
};

// One thread per voxel (z, y, x) of the slab: the classes in order, the shared score and tie rule of
// window.h, one store of the label.
template <typename scalar_t, typename label_t, bool kNormalise>
__global__ void argmax_kernel(const scalar_t* __restrict__ acc, Strides4 as, const scalar_t* __restrict__ weight_sum,
                              Strides4 ws, label_t* __restrict__ labels, Strides4 ls, int64_t C, int64_t H, int64_t W,
                              int64_t total) {
  using accum = acc_t<scalar_t>;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t x = i % W, y = (i / W) % H, z = i / (W * H);
    const scalar_t* a = acc + z * as.s[1] + y * as.s[2] + x * as.s[3];
    const accum norm = kNormalise ? static_cast<accum>(weight_sum[z * ws.s[0] + y * ws.s[1] + x * ws.s[2]]) : accum(1);
    accum best = label_score<scalar_t>(static_cast<accum>(a[0]), norm, kNormalise);
    int64_t label = 0;
    for (int64_t c = 1; c < C; ++c) {
      const accum score = label_score<scalar_t>(static_cast<accum>(a[c * as.s[0]]), norm, kNormalise);
      if (beats(score, best)) {
        best = score;
        label = c;
      }
    }
    labels[z * ls.s[0] + y * ls.s[1] + x * ls.s[2]] = static_cast<label_t>(label);
  }
}

unsigned int num_blocks(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::min<int64_t>(blocks, 65535LL * 32));
}

at::Tensor window_gather_cuda(const at::Tensor& volume, const at::Tensor& starts_in, at::IntArrayRef roi) {
  check_gather_args(volume, starts_in, roi);
  const c10::cuda::CUDAGuard guard(volume.device());
  const at::Tensor starts = starts_in.contiguous();  // any strides: the kernel reads rows of 4
  // The bounds check needs the values on the host: one copy of N x 4 int64 (and a sync), as the Python
  // layer did before; the kernels trust the starts, so direct callers are checked too.
  check_start_values(starts.cpu(), volume.sizes(), roi);
  const int64_t N = starts.size(0), C = volume.size(1);
  at::Tensor out = at::empty({N, C, roi[0], roi[1], roi[2]}, volume.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, volume.scalar_type(), "window_gather_cuda", [&] {
    gather_kernel<scalar_t><<<num_blocks(total), kThreads, 0, stream>>>(
        volume.const_data_ptr<scalar_t>(), strides_of(volume), starts.const_data_ptr<int64_t>(), C, roi[0], roi[1],
        roi[2], total, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

void window_stitch_cuda(at::Tensor& out, const at::Tensor& pred, const at::Tensor& weight,
                        const at::Tensor& starts_in) {
  check_stitch_args(out, pred, weight, starts_in);
  const c10::cuda::CUDAGuard guard(out.device());
  const at::Tensor starts = starts_in.contiguous();
  check_start_values(starts.cpu(), out.sizes(), pred.sizes().slice(2));
  const int64_t N = pred.size(0);
  const int64_t rd = pred.size(2), rh = pred.size(3), rw = pred.size(4);
  const int64_t total = pred.size(1) * rd * rh * rw;
  if (N == 0 || total == 0) return;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "window_stitch_cuda", [&] {
    for (int64_t n = 0; n < N; ++n) {  // windows in order
      stitch_kernel<scalar_t><<<num_blocks(total), kThreads, 0, stream>>>(
          out.mutable_data_ptr<scalar_t>(), strides_of(out), pred.const_data_ptr<scalar_t>(), strides_of(pred),
          weight.const_data_ptr<scalar_t>(), starts.const_data_ptr<int64_t>(), n, rd, rh, rw, total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

template <int dims>
Strides4 strides4_of(const at::Tensor& t) {
  Strides4 r{};
  for (int d = 0; d < dims; ++d) r.s[d] = t.stride(d);
  return r;
}

void window_argmax_cuda(const at::Tensor& acc, const c10::optional<at::Tensor>& weight_sum, at::Tensor& labels) {
  check_argmax_args(acc, weight_sum, labels);
  const c10::cuda::CUDAGuard guard(acc.device());
  const int64_t C = acc.size(0), H = acc.size(2), W = acc.size(3);
  const int64_t total = labels.numel();
  if (total == 0) return;
  const bool normalise = weight_sum.has_value();
  const at::Tensor& w = normalise ? *weight_sum : acc;  // unread when there is no weight sum
  const Strides4 ws = normalise ? strides4_of<3>(w) : Strides4{};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, acc.scalar_type(), "window_argmax_cuda", [&] {
    auto launch = [&](auto* l) {
      using label_t = std::remove_pointer_t<decltype(l)>;
      if (normalise) {
        argmax_kernel<scalar_t, label_t, true><<<num_blocks(total), kThreads, 0, stream>>>(
            acc.const_data_ptr<scalar_t>(), strides4_of<4>(acc), w.const_data_ptr<scalar_t>(), ws, l,
            strides4_of<3>(labels), C, H, W, total);
      } else {
        argmax_kernel<scalar_t, label_t, false><<<num_blocks(total), kThreads, 0, stream>>>(
            acc.const_data_ptr<scalar_t>(), strides4_of<4>(acc), acc.const_data_ptr<scalar_t>(), ws, l,
            strides4_of<3>(labels), C, H, W, total);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    switch (labels.scalar_type()) {
      case at::kByte: launch(labels.mutable_data_ptr<uint8_t>()); break;
      case at::kShort: launch(labels.mutable_data_ptr<int16_t>()); break;
      case at::kInt: launch(labels.mutable_data_ptr<int32_t>()); break;
      default: launch(labels.mutable_data_ptr<int64_t>()); break;
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(nas3d, CUDA, m) {
  m.impl("window_gather", &window_gather_cuda);
  m.impl("window_stitch", &window_stitch_cuda);
  m.impl("window_argmax", &window_argmax_cuda);
}

}  // namespace window
}  // namespace nas3d
