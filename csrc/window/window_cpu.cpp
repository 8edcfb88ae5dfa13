// CPU kernels of the sliding-window ops. All three work row by row (one contiguous run of rw voxels along the
// last axis), rows in parallel (at::parallel_for, one parallel region per call). Stitching adds the windows
// covering an output row in window order, so every voxel's sum is formed in that order: deterministic,
// whatever the thread count, no atomics. The argmax reads a slab row by row, classes in order.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "window.h"
#include "window_args.h"

namespace nas3d {
namespace window {
namespace {

// Rows per task: a row is rw voxels (times the channels when stitching); aim at ~32k voxels per task.
int64_t row_grain(int64_t rw) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(rw, 1)); }

at::Tensor window_gather_cpu(const at::Tensor& volume, const at::Tensor& starts_in, at::IntArrayRef roi) {
  check_gather_args(volume, starts_in, roi);
  const at::Tensor starts = starts_in.contiguous();  // any strides: the kernel reads rows of 4
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

// One parallel region per call (a barrier per window costs dearly on a loaded machine): the tasks are the
// output rows (b, z, y) of the batch's bounding box, and each task adds the windows that cover its row
// in window order (all channels of one window row together, so its importance-map row is read once), so
// every voxel's sum is formed in the order n = 0, 1, ... with no two threads writing the same row.
void window_stitch_cpu(at::Tensor& out, const at::Tensor& pred, const at::Tensor& weight,
                       const at::Tensor& starts_in) {
  check_stitch_args(out, pred, weight, starts_in);
  const at::Tensor starts = starts_in.contiguous();
  const int64_t N = pred.size(0), C = pred.size(1);
  const int64_t rd = pred.size(2), rh = pred.size(3), rw = pred.size(4);
  check_start_values(starts, out.sizes(), pred.sizes().slice(2));
  if (N == 0 || C == 0 || rd == 0 || rh == 0 || rw == 0) return;
  const int64_t* s = starts.const_data_ptr<int64_t>();
  int64_t lo[3] = {s[0], s[1], s[2]}, hi[3] = {s[0] + 1, s[1] + rd, s[2] + rh};  // (b, z, y) box
  for (int64_t n = 1; n < N; ++n) {
    const int64_t* st = s + 4 * n;
    lo[0] = std::min(lo[0], st[0]);
    hi[0] = std::max(hi[0], st[0] + 1);
    lo[1] = std::min(lo[1], st[1]);
    hi[1] = std::max(hi[1], st[1] + rd);
    lo[2] = std::min(lo[2], st[2]);
    hi[2] = std::max(hi[2], st[2] + rh);
  }
  const int64_t nb = hi[0] - lo[0], nz = hi[1] - lo[1], ny = hi[2] - lo[2];
  const int64_t tasks = nb * nz * ny;
  int64_t os[5], ps[5];
  for (int d = 0; d < 5; ++d) {
    os[d] = out.stride(d);
    ps[d] = pred.stride(d);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "window_stitch_cpu", [&] {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const scalar_t* p = pred.const_data_ptr<scalar_t>();
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    at::parallel_for(0, tasks, row_grain(rw * C), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t y = lo[2] + t % ny;
        const int64_t z = lo[1] + (t / ny) % nz;
        const int64_t b = lo[0] + t / (ny * nz);
        for (int64_t n = 0; n < N; ++n) {  // window order: the fixed summation order of every voxel
          const int64_t* st = s + 4 * n;
          const int64_t wz = z - st[1], wy = y - st[2];
          if (st[0] != b || wz < 0 || wz >= rd || wy < 0 || wy >= rh) continue;
          const scalar_t* wrow = w + (wz * rh + wy) * rw;  // read once for every channel
          for (int64_t c = 0; c < C; ++c) {
            scalar_t* orow = o + offset5(os, b, c, z, y, st[3]);
            const scalar_t* prow = p + offset5(ps, n, c, wz, wy, 0);
            if (ps[4] == 1) {
              stitch_rows<scalar_t, true>(orow, prow, wrow, rw, 1);
            } else {
              stitch_rows<scalar_t, false>(orow, prow, wrow, rw, ps[4]);
            }
          }
        }
      }
    });
  });
}

// Labels of one row of W voxels along the last axis, in chunks of kChunk voxels: the best score and its
// class live in small stack arrays (no per-class temporaries), the classes are visited in order, and the
// inner loops over the chunk are plain compares and selects that the compiler vectorises when the row is
// contiguous.
template <typename scalar_t, typename label_t, bool kNormalise, bool kContiguous>
void argmax_row(const scalar_t* __restrict__ a, int64_t as_c, int64_t as_x, const scalar_t* __restrict__ w,
                int64_t ws_x, label_t* __restrict__ l, int64_t ls_x, int64_t C, int64_t W) {
  using acc = acc_t<scalar_t>;
  constexpr int64_t kChunk = 64;
  acc best[kChunk], norm[kChunk];
  int32_t lab[kChunk];
  for (int64_t x0 = 0; x0 < W; x0 += kChunk) {
    const int64_t n = std::min(kChunk, W - x0);
    for (int64_t i = 0; i < n; ++i) {
      norm[i] = kNormalise ? static_cast<acc>(w[(x0 + i) * (kContiguous ? 1 : ws_x)]) : acc(1);
    }
    const scalar_t* a0 = a + x0 * (kContiguous ? 1 : as_x);
    for (int64_t i = 0; i < n; ++i) {
      best[i] = label_score<scalar_t>(static_cast<acc>(a0[i * (kContiguous ? 1 : as_x)]), norm[i], kNormalise);
      lab[i] = 0;
    }
    for (int64_t c = 1; c < C; ++c) {
      const scalar_t* ac = a0 + c * as_c;
      const int32_t cc = static_cast<int32_t>(c);
      for (int64_t i = 0; i < n; ++i) {
        const acc score = label_score<scalar_t>(static_cast<acc>(ac[i * (kContiguous ? 1 : as_x)]), norm[i], kNormalise);
        const bool better = beats(score, best[i]);
        best[i] = better ? score : best[i];
        lab[i] = better ? cc : lab[i];
      }
    }
    label_t* l0 = l + x0 * (kContiguous ? 1 : ls_x);
    for (int64_t i = 0; i < n; ++i) l0[i * (kContiguous ? 1 : ls_x)] = static_cast<label_t>(lab[i]);
  }
}

template <typename label_t>
label_t* labels_data(at::Tensor& labels) {
  return labels.mutable_data_ptr<label_t>();
}

// labels[z, y, x] = argmax over c of acc[c, z, y, x] / weight_sum[z, y, x] (or of acc alone): one pass over
// the slab, rows (z, y) in parallel, any strides (e.g. cropped views of the streaming accumulator).
void window_argmax_cpu(const at::Tensor& acc, const c10::optional<at::Tensor>& weight_sum, at::Tensor& labels) {
  check_argmax_args(acc, weight_sum, labels);
  const int64_t C = acc.size(0), D = acc.size(1), H = acc.size(2), W = acc.size(3);
  if (D == 0 || H == 0 || W == 0) return;
  const bool normalise = weight_sum.has_value();
  const at::Tensor w = normalise ? *weight_sum : acc;  // an unread stand-in when there is no weight sum
  const int64_t as[4] = {acc.stride(0), acc.stride(1), acc.stride(2), acc.stride(3)};
  const int64_t ws[3] = {w.stride(-3), w.stride(-2), w.stride(-1)};
  const int64_t ls[3] = {labels.stride(0), labels.stride(1), labels.stride(2)};
  const bool contiguous = as[3] == 1 && ls[2] == 1 && (!normalise || ws[2] == 1);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(W * C, 1));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, acc.scalar_type(), "window_argmax_cpu", [&] {
    const scalar_t* a = acc.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    auto run = [&](auto* l) {
      using label_t = std::remove_pointer_t<decltype(l)>;
      at::parallel_for(0, D * H, grain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const int64_t z = r / H, y = r % H;
          const scalar_t* arow = a + z * as[1] + y * as[2];
          const scalar_t* wrow = normalise ? wp + z * ws[0] + y * ws[1] : wp;
          label_t* lrow = l + z * ls[0] + y * ls[1];
          if (normalise && contiguous) {
            argmax_row<scalar_t, label_t, true, true>(arow, as[0], 1, wrow, 1, lrow, 1, C, W);
          } else if (normalise) {
            argmax_row<scalar_t, label_t, true, false>(arow, as[0], as[3], wrow, ws[2], lrow, ls[2], C, W);
          } else if (contiguous) {
            argmax_row<scalar_t, label_t, false, true>(arow, as[0], 1, wrow, 0, lrow, 1, C, W);
          } else {
            argmax_row<scalar_t, label_t, false, false>(arow, as[0], as[3], wrow, 0, lrow, ls[2], C, W);
          }
        }
      });
    };
    switch (labels.scalar_type()) {
      case at::kByte: run(labels_data<uint8_t>(labels)); break;
      case at::kShort: run(labels_data<int16_t>(labels)); break;
      case at::kInt: run(labels_data<int32_t>(labels)); break;
      default: run(labels_data<int64_t>(labels)); break;
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(nas3d, CPU, m) {
  m.impl("window_gather", &window_gather_cpu);
  m.impl("window_stitch", &window_stitch_cpu);
  m.impl("window_argmax", &window_argmax_cpu);
}

}  // namespace window
}  // namespace nas3d
