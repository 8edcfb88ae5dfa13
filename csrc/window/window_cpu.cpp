// CPU kernels of the sliding-window ops. Both work row by row (one contiguous run of rw voxels along the
// last axis), rows in parallel (at::parallel_for). Stitching visits the windows one after the other, so
// every voxel's sum is formed in window order: deterministic, whatever the thread count, no atomics.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>

#include "window.h"
#include "window_args.h"

namespace nas3d {
namespace window {
namespace {

// Rows per task: a row is rw voxels; aim at ~32k voxels per task.
int64_t row_grain(int64_t rw) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(rw, 1)); }

at::Tensor window_gather_cpu(const at::Tensor& volume, const at::Tensor& starts, at::IntArrayRef roi) {
  check_gather_args(volume, starts, roi);
  check_start_values(starts, volume.sizes(), roi);
  const int64_t N = starts.size(0), C = volume.size(1);
  const int64_t rd = roi[0], rh = roi[1], rw = roi[2];
  at::Tensor out = at::empty({N, C, rd, rh, rw}, volume.options());
  const int64_t rows = N * C * rd * rh;
  if (rows == 0 || rw == 0) return out;
  const int64_t* s = starts.const_data_ptr<int64_t>();
  int64_t vs[5];
  for (int d = 0; d < 5; ++d) vs[d] = volume.stride(d);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, volume.scalar_type(), "window_gather_cpu", [&] {
    const scalar_t* v = volume.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(rw), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        // r = ((n * C + c) * rd + z) * rh + y
        int64_t i = r;
        const int64_t y = i % rh;
        i /= rh;
        const int64_t z = i % rd;
        i /= rd;
        const int64_t c = i % C;
        const int64_t n = i / C;
        const int64_t* st = s + 4 * n;
        const scalar_t* src = v + offset5(vs, st[0], c, st[1] + z, st[2] + y, st[3]);
        scalar_t* dst = o + r * rw;
        if (vs[4] == 1) {
          std::memcpy(dst, src, sizeof(scalar_t) * rw);
        } else {
          for (int64_t x = 0; x < rw; ++x) dst[x] = src[x * vs[4]];
        }
      }
    });
  });
  return out;
}

template <typename scalar_t, bool kContiguousRow>
void stitch_rows(scalar_t* __restrict__ o, const scalar_t* __restrict__ p, const scalar_t* __restrict__ w, int64_t rw,
                 int64_t ps4) {
  using acc = acc_t<scalar_t>;
  for (int64_t x = 0; x < rw; ++x) {
    const acc pv = static_cast<acc>(kContiguousRow ? p[x] : p[x * ps4]);
    o[x] = static_cast<scalar_t>(stitch_value<acc>(static_cast<acc>(o[x]), static_cast<acc>(w[x]), pv));
  }
}

void window_stitch_cpu(at::Tensor& out, const at::Tensor& pred, const at::Tensor& weight, const at::Tensor& starts) {
  check_stitch_args(out, pred, weight, starts);
  const int64_t N = pred.size(0), C = pred.size(1);
  const int64_t rd = pred.size(2), rh = pred.size(3), rw = pred.size(4);
  check_start_values(starts, out.sizes(), pred.sizes().slice(2));
  const int64_t rows = C * rd * rh;
  if (N == 0 || rows == 0 || rw == 0) return;
  const int64_t* s = starts.const_data_ptr<int64_t>();
  int64_t os[5], ps[5];
  for (int d = 0; d < 5; ++d) {
    os[d] = out.stride(d);
    ps[d] = pred.stride(d);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "window_stitch_cpu", [&] {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const scalar_t* p = pred.const_data_ptr<scalar_t>();
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    // Windows in order (they may overlap); the rows of one window are disjoint, so they run in parallel.
    for (int64_t n = 0; n < N; ++n) {
      const int64_t* st = s + 4 * n;
      at::parallel_for(0, rows, row_grain(rw), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const int64_t y = r % rh;
          const int64_t z = (r / rh) % rd;
          const int64_t c = r / (rh * rd);
          scalar_t* orow = o + offset5(os, st[0], c, st[1] + z, st[2] + y, st[3]);
          const scalar_t* prow = p + offset5(ps, n, c, z, y, 0);
          const scalar_t* wrow = w + (z * rh + y) * rw;
          if (ps[4] == 1) {
            stitch_rows<scalar_t, true>(orow, prow, wrow, rw, 1);
          } else {
            stitch_rows<scalar_t, false>(orow, prow, wrow, rw, ps[4]);
          }
        }
      });
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(nas3d, CPU, m) {
  m.impl("window_gather", &window_gather_cpu);
  m.impl("window_stitch", &window_stitch_cpu);
}

}  // namespace window
}  // namespace nas3d
