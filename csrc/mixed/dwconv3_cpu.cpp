// CPU kernels of nas3d::depthwise_conv3 (forward, input gradient, weight gradient). Each output row
// (n, c, ox, oy) is formed tap by tap over whole rows (axpy_tap), which vectorises along Z; half and
// bfloat16 go element by element through the functions the CUDA kernel runs (see dwconv3.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <optional>
#include <type_traits>
#include <vector>

#include "dwconv3.h"
#include "dwconv3_args.h"
#include "line_pass.h"

namespace nas3d {
namespace dwconv3 {
namespace {

template <typename T>
constexpr bool kRowPath = std::is_same_v<T, float> || std::is_same_v<T, double>;

at::Tensor forward_cpu(const at::Tensor& x_in, const at::Tensor& weight_in, int64_t s, int64_t r) {
  check_args(x_in, weight_in, s, r);
  r = effective_dilation(x_in.sizes(), r);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const auto z = Sizes::of(x.sizes(), s);
  at::Tensor out = at::empty(z.out_shape(), x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "depthwise_conv3_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int64_t rows = z.N * z.C * z.OX * z.OY;
    at::parallel_for(0, rows, std::max<int64_t>(1, kElementsPerTask / (27 * z.OZ)), [&](int64_t begin, int64_t end) {
      std::vector<acc> line(z.OZ);
      const scalar_t* taps[9];
      for (int64_t row = begin; row < end; ++row) {
        const int64_t oy = row % z.OY, ox = (row / z.OY) % z.OX, nc = row / (z.OY * z.OX);
        const scalar_t* w = wp + (nc % z.C) * 27;
        input_rows(xp + nc * z.X * z.Y * z.Z, z.X, z.Y, z.Z, ox, oy, s, r, taps);
        scalar_t* orow = op + row * z.OZ;
        if constexpr (kRowPath<scalar_t>) {
          std::fill(line.begin(), line.end(), acc(0));
          for (int t = 0; t < 9; ++t) {
            if (taps[t] == nullptr) continue;
            for (int dz = 0; dz < 3; ++dz) {
              int64_t lo, hi;
              tap_range(z.Z, z.OZ, s, r, dz, lo, hi);
              axpy_tap<acc>(line.data(), taps[t], static_cast<acc>(w[t * 3 + dz]), lo, hi, s, (dz - 1) * r);
            }
          }
          for (int64_t oz = 0; oz < z.OZ; ++oz) orow[oz] = static_cast<scalar_t>(line[oz]);
        } else {
          for (int64_t oz = 0; oz < z.OZ; ++oz) orow[oz] = static_cast<scalar_t>(forward_at<acc>(taps, w, oz, z.Z, s, r));
        }
      }
    });
  });
  return out;
}

at::Tensor grad_input_cpu(const at::Tensor& grad, const at::Tensor& weight, at::IntArrayRef input_size, int64_t s,
                          int64_t r) {
  const auto z = Sizes::of(input_size, s);
  at::Tensor dx = at::empty(input_size, grad.options());
  if (dx.numel() == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "depthwise_conv3_grad_input_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    scalar_t* dp = dx.mutable_data_ptr<scalar_t>();
    const int64_t rows = z.N * z.C * z.X * z.Y;
    at::parallel_for(0, rows, std::max<int64_t>(1, kElementsPerTask / (27 * z.Z)), [&](int64_t begin, int64_t end) {
      std::vector<acc> line(z.Z);
      const scalar_t* taps[9];
      for (int64_t row = begin; row < end; ++row) {
        const int64_t iy = row % z.Y, ix = (row / z.Y) % z.X, nc = row / (z.Y * z.X);
        const scalar_t* w = wp + (nc % z.C) * 27;
        grad_rows(gp + nc * z.OX * z.OY * z.OZ, z.OX, z.OY, z.OZ, ix, iy, s, r, taps);
        scalar_t* drow = dp + row * z.Z;
        if constexpr (kRowPath<scalar_t>) {
          std::fill(line.begin(), line.end(), acc(0));
          for (int t = 0; t < 9; ++t) {
            if (taps[t] == nullptr) continue;
            for (int dz = 0; dz < 3; ++dz) {
              int64_t lo, hi;
              tap_range(z.Z, z.OZ, s, r, dz, lo, hi);
              axpy_tap_adjoint<acc>(line.data(), taps[t], static_cast<acc>(w[t * 3 + dz]), lo, hi, s, (dz - 1) * r);
            }
          }
          for (int64_t iz = 0; iz < z.Z; ++iz) drow[iz] = static_cast<scalar_t>(line[iz]);
        } else {
          for (int64_t iz = 0; iz < z.Z; ++iz)
            drow[iz] = static_cast<scalar_t>(grad_input_at<acc>(taps, w, iz, z.OZ, s, r));
        }
      }
    });
  });
  return dx;
}

// One task per channel, the rows of every batch entry in a fixed order: deterministic whatever the
// thread count. Row sums are added in double.
at::Tensor grad_weight_cpu(const at::Tensor& grad, const at::Tensor& x, int64_t s, int64_t r) {
  const auto z = Sizes::of(x.sizes(), s);
  at::Tensor gw = at::empty({z.C, 1, 3, 3, 3}, grad.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "depthwise_conv3_grad_weight_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* wp = gw.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, z.C, 1, [&](int64_t begin, int64_t end) {
      const scalar_t* taps[9];
      for (int64_t c = begin; c < end; ++c) {
        double total[27] = {0};
        for (int64_t n = 0; n < z.N; ++n) {
          const int64_t nc = n * z.C + c;
          const scalar_t* xs = xp + nc * z.X * z.Y * z.Z;
          const scalar_t* gs = gp + nc * z.OX * z.OY * z.OZ;
          for (int64_t ox = 0; ox < z.OX; ++ox)
            for (int64_t oy = 0; oy < z.OY; ++oy) {
              input_rows(xs, z.X, z.Y, z.Z, ox, oy, s, r, taps);
              const scalar_t* grow = gs + (ox * z.OY + oy) * z.OZ;
              for (int t = 0; t < 9; ++t) {
                if (taps[t] == nullptr) continue;
                for (int dz = 0; dz < 3; ++dz) {
                  int64_t lo, hi;
                  tap_range(z.Z, z.OZ, s, r, dz, lo, hi);
                  total[t * 3 + dz] += dot_tap<acc>(grow, taps[t], lo, hi, s, (dz - 1) * r);
                }
              }
            }
        }
        for (int t = 0; t < 27; ++t) wp[c * 27 + t] = static_cast<scalar_t>(total[t]);
      }
    });
  });
  return gw;
}

std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>> backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                const at::Tensor& weight_in, int64_t s, int64_t r,
                                                std::array<bool, 2> mask) {
  check_args(x_in, weight_in, s, r);
  r = effective_dilation(x_in.sizes(), r);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor grad = grad_in.contiguous();
  const auto z = Sizes::of(x.sizes(), s);
  TORCH_CHECK_VALUE(grad.sizes() == at::IntArrayRef(z.out_shape()), "depthwise_conv3_backward: grad must have the ",
                    "output shape ", at::IntArrayRef(z.out_shape()), ", got ", grad.sizes());
  NAS3D_CHECK_SAME_DTYPE(x, grad, "x", "grad");
  std::optional<at::Tensor> dx, dw;
  if (mask[0]) dx = grad_input_cpu(grad, weight, x.sizes(), s, r);
  if (mask[1]) dw = grad.numel() ? grad_weight_cpu(grad, x, s, r) : at::zeros_like(weight);
  return {dx, dw};
}

}  // namespace

TORCH_LIBRARY_IMPL(nas3d, CPU, m) {
  m.impl("depthwise_conv3", &forward_cpu);
  m.impl("depthwise_conv3_backward", &backward_cpu);
}

}  // namespace dwconv3
}  // namespace nas3d
