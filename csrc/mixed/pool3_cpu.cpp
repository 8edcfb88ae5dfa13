// CPU kernels of nas3d::max_pool3 / avg_pool3 and their backward: three 1D passes (Z, Y, X) through
// the per-element functions of pool3.h. Max pooling keeps one byte per output (the chosen tap code),
// not the input, for its backward.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>
#include <type_traits>

#include "line_pass.h"
#include "pool3.h"
#include "pool3_args.h"

namespace nas3d {
namespace pool3 {
namespace {

// The max of three rows, element by element, with the tap codes: out[j] = max(r0[j], r1[j], r2[j])
// (first wins ties, NaN wins) and oc[j] = c_d[j] + d * step for the row d chosen. Codes travel in the
// value type (small integers, exact), so float and double run on one lane width: 16-byte GCC/Clang
// vector extensions (SSE2, NEON); the compiler does not vectorise the NaN-aware selects by itself.
// 16-byte vectors (the attribute is dropped on a template-dependent type, so spell them out).
typedef float float_x4 __attribute__((vector_size(16)));
typedef double double_x2 __attribute__((vector_size(16)));
template <typename T>
using vec16_t = std::conditional_t<std::is_same_v<T, float>, float_x4, double_x2>;

template <typename T>
void max_rows(const T* r0, const T* r1, const T* r2, const T* c0, const T* c1, const T* c2, T step, T* out, T* oc,
              int64_t n) {
  int64_t j = 0;
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    using V = vec16_t<T>;
    static_assert(sizeof(V) == 16);
    constexpr int64_t L = 16 / sizeof(T);
    auto load = [](const T* p) {
      V v;
      std::memcpy(&v, p, sizeof(V));
      return v;
    };
    for (; j + L <= n; j += L) {
      const V v0 = load(r0 + j), v1 = load(r1 + j), v2 = load(r2 + j);
      const auto b1 = ~(v1 <= v0) & (v0 == v0);  // beats(v1, v0), lane masks
      const V m = b1 ? v1 : v0;
      const auto b2 = ~(v2 <= m) & (m == m);
      const V best = b2 ? v2 : m;
      const V k0 = load(c0 + j), k1 = load(c1 + j) + step, k2 = load(c2 + j) + 2 * step;
      const V cm = b1 ? k1 : k0;
      const V code = b2 ? k2 : cm;
      std::memcpy(out + j, &best, sizeof(V));
      std::memcpy(oc + j, &code, sizeof(V));
    }
  }
  for (; j < n; ++j) {
    int tap;
    out[j] = select3(r0[j], r1[j], r2[j], tap);
    oc[j] = (tap == 0 ? c0[j] : tap == 1 ? c1[j] + step : c2[j] + 2 * step);
  }
}

// The same over the rows that exist (one or two at the ends of an axis): rows[d] or nullptr.
template <typename T>
void max_rows_edge(const T* const* rows, const T* const* codes, T step, T* out, T* oc, int64_t n) {
  int lo = 0;
  while (rows[lo] == nullptr) ++lo;
  for (int64_t j = 0; j < n; ++j) {
    T m = rows[lo][j];
    T cm = codes[lo][j] + lo * step;
    for (int d = lo + 1; d < 3 && rows[d] != nullptr; ++d)
      if (beats(rows[d][j], m)) m = rows[d][j], cm = codes[d][j] + d * step;
    out[j] = m;
    oc[j] = cm;
  }
}

// Codes ride in the value type for float and double, in float for half and bfloat16.
template <typename T>
using code_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Max pooling of one (X, Y, Z) slice, output plane by output plane. The Z and Y passes of an input
// plane go into a ring of three (OY, OZ) plane buffers (each input plane is reduced once), and the X
// pass combines the planes; the byte codes are written at the end.
template <typename T>
class MaxPlanes {
  using C = code_t<T>;
  // half/bfloat16 values are compared as float (exact) so that rows and codes share one type.
  using V = std::conditional_t<std::is_same_v<T, double>, double, float>;

 public:
  MaxPlanes(const Sizes& sz, int64_t s)
      : sz_(sz), s_(s), plane_(sz.OY * sz.OZ), zval_(sz.Y * sz.OZ), out_(plane_), zcode_(sz.Y * sz.OZ), code_out_(plane_) {
    for (int k = 0; k < 3; ++k) {
      val_[k].resize(plane_);
      code_[k].resize(plane_);
    }
    reset();
  }

  // Forget the held planes (before moving to another slice).
  void reset() {
    for (int k = 0; k < 3; ++k) held_[k] = -1;
  }

  // Output plane ox of slice x (contiguous X, Y, Z) into out/code (contiguous OY, OZ).
  void output_plane(const T* x, int64_t ox, T* out, uint8_t* code) {
    const V* rows[3] = {nullptr, nullptr, nullptr};
    const C* codes[3] = {nullptr, nullptr, nullptr};
    for (int d = 0; d < 3; ++d) {
      const int64_t ix = src(ox, s_, d);
      if (ix < 0 || ix >= sz_.X) continue;
      const int k = reduce_plane(x, ix);
      rows[d] = val_[k].data();
      codes[d] = code_[k].data();
    }
    if (rows[0] && rows[2])
      max_rows<V>(rows[0], rows[1], rows[2], codes[0], codes[1], codes[2], V(9), out_.data(), code_out_.data(), plane_);
    else
      max_rows_edge<V>(rows, codes, V(9), out_.data(), code_out_.data(), plane_);
    for (int64_t j = 0; j < plane_; ++j) {
      out[j] = static_cast<T>(out_[j]);
      code[j] = static_cast<uint8_t>(code_out_[j]);
    }
  }

 private:
  // The ring slot holding input plane ix reduced along Z and Y (computing it if needed).
  int reduce_plane(const T* x, int64_t ix) {
    for (int k = 0; k < 3; ++k)
      if (held_[k] == ix) return k;
    int k = 0;  // evict the plane with the smallest index: planes are visited in increasing order
    for (int j = 1; j < 3; ++j)
      if (held_[j] < held_[k]) k = j;
    held_[k] = ix;
    const T* plane = x + ix * sz_.Y * sz_.Z;
    // Z pass: the interior outputs (all three taps inside) branch-free, the two ends through max3.
    const int64_t lo = std::min<int64_t>(1, sz_.OZ);
    const int64_t hi = std::max<int64_t>(lo, std::min<int64_t>(sz_.OZ, (sz_.Z - 2) / s_ + 1));
    for (int64_t y = 0; y < sz_.Y; ++y) {
      const T* __restrict__ line = plane + y * sz_.Z;
      V* __restrict__ ov = zval_.data() + y * sz_.OZ;
      C* __restrict__ oc = zcode_.data() + y * sz_.OZ;
      auto edge = [&](int64_t o) {
        int tap;
        ov[o] = static_cast<V>(max3(line, int64_t{1}, sz_.Z, o, s_, tap));
        oc[o] = static_cast<C>(tap);
      };
      for (int64_t o = 0; o < lo; ++o) edge(o);
      for (int64_t o = lo; o < hi; ++o) {
        const int64_t i = o * s_;
        const V v0 = static_cast<V>(line[i - 1]), v1 = static_cast<V>(line[i]), v2 = static_cast<V>(line[i + 1]);
        const bool b1 = beats(v1, v0);
        const V m = b1 ? v1 : v0;
        const bool b2 = beats(v2, m);
        ov[o] = b2 ? v2 : m;
        oc[o] = b2 ? C(2) : (b1 ? C(1) : C(0));
      }
      for (int64_t o = hi; o < sz_.OZ; ++o) edge(o);
    }
    // Y pass: rows of the Z-reduced plane, three at a time.
    for (int64_t oy = 0; oy < sz_.OY; ++oy) {
      const V* rows[3] = {nullptr, nullptr, nullptr};
      const C* codes[3] = {nullptr, nullptr, nullptr};
      for (int d = 0; d < 3; ++d) {
        const int64_t iy = src(oy, s_, d);
        if (iy < 0 || iy >= sz_.Y) continue;
        rows[d] = zval_.data() + iy * sz_.OZ;
        codes[d] = zcode_.data() + iy * sz_.OZ;
      }
      V* ov = val_[k].data() + oy * sz_.OZ;
      C* oc = code_[k].data() + oy * sz_.OZ;
      if (rows[0] && rows[2])
        max_rows<V>(rows[0], rows[1], rows[2], codes[0], codes[1], codes[2], V(3), ov, oc, sz_.OZ);
      else
        max_rows_edge<V>(rows, codes, V(3), ov, oc, sz_.OZ);
    }
    return k;
  }

  Sizes sz_;
  int64_t s_, plane_;
  std::vector<V> val_[3], zval_, out_;
  std::vector<C> code_[3], zcode_, code_out_;
  int64_t held_[3];
};

template <typename acc, typename In, typename Out>
void sum_pass(const In* in, Out* out, int64_t outer, int64_t n_in, int64_t inner, int64_t s, acc scale) {
  const int64_t n_out = out_size(n_in, s);
  line_pass(in, outer, n_in, n_out, inner, [&](const In* line, int64_t step, int64_t p, int64_t o, int64_t j) {
    out[(p * n_out + o) * inner + j] = static_cast<Out>(sum3<acc>(line, step, n_in, o, s) * scale);
  });
}

template <typename acc, typename In, typename Out>
void adjoint_pass(const In* in, Out* out, int64_t outer, int64_t n_out, int64_t n_in, int64_t inner, int64_t s,
                  acc scale) {
  // Reads lines of n_out gradients and writes lines of n_in: the roles of the sizes swap.
  auto run = [&](auto stride) {
    constexpr int S = decltype(stride)::value;
    line_pass(in, outer, n_out, n_in, inner, [&](const In* line, int64_t step, int64_t p, int64_t i, int64_t j) {
      out[(p * n_in + i) * inner + j] = static_cast<Out>(sum3_adjoint<acc, S>(line, step, n_out, i) * scale);
    });
  };
  if (s == 1)
    run(std::integral_constant<int, 1>{});
  else
    run(std::integral_constant<int, 2>{});
}

std::tuple<at::Tensor, at::Tensor> max_pool3_cpu(const at::Tensor& x_in, int64_t stride) {
  check_forward_args(x_in, stride, "max_pool3");
  const at::Tensor x = x_in.contiguous();
  const auto sz = Sizes::of(x, stride);
  at::Tensor out = at::empty(sz.out_shape(), x.options());
  at::Tensor code = at::empty(sz.out_shape(), x.options().dtype(at::kByte));
  if (out.numel() == 0) return {out, code};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool3_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    uint8_t* cp = code.mutable_data_ptr<uint8_t>();
    const int64_t plane = sz.OY * sz.OZ;
    // Tasks are runs of output planes of one slice; each keeps its own plane ring.
    const int64_t per_task = std::max<int64_t>(1, std::min<int64_t>(sz.OX, kElementsPerTask * 4 / plane));
    const int64_t runs = (sz.OX + per_task - 1) / per_task;
    at::parallel_for(0, sz.B * runs, 1, [&](int64_t begin, int64_t end) {
      MaxPlanes<scalar_t> planes(sz, stride);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / runs, ox0 = (t % runs) * per_task, ox1 = std::min(sz.OX, ox0 + per_task);
        planes.reset();
        for (int64_t ox = ox0; ox < ox1; ++ox) {
          const int64_t at = (b * sz.OX + ox) * plane;
          planes.output_plane(xp + b * sz.X * sz.Y * sz.Z, ox, op + at, cp + at);
        }
      }
    });
  });
  return {out, code};
}

// float and double: each (n, c) slice by one thread, its outputs in index order adding their gradient
// to the input element their code names. Deterministic (one fixed order per slice, no atomics) and
// one pass over the outputs.
template <typename T>
void max_backward_scatter(const at::Tensor& grad, const at::Tensor& code, at::Tensor& dx, const Sizes& sz,
                          int64_t s) {
  const T* g = grad.const_data_ptr<T>();
  const uint8_t* c = code.const_data_ptr<uint8_t>();
  T* out = dx.mutable_data_ptr<T>();
  const int64_t out_slice = sz.OX * sz.OY * sz.OZ, in_slice = sz.X * sz.Y * sz.Z;
  at::parallel_for(0, sz.B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      T* d = out + b * in_slice;
      std::fill(d, d + in_slice, T(0));
      const T* gb = g + b * out_slice;
      const uint8_t* cb = c + b * out_slice;
      for (int64_t ox = 0; ox < sz.OX; ++ox)
        for (int64_t oy = 0; oy < sz.OY; ++oy) {
          const int64_t row = (ox * sz.OY + oy) * sz.OZ;
          for (int64_t oz = 0; oz < sz.OZ; ++oz) {
            const int k = cb[row + oz];
            const int64_t ix = src(ox, s, k / 9), iy = src(oy, s, (k / 3) % 3), iz = src(oz, s, k % 3);
            d[(ix * sz.Y + iy) * sz.Z + iz] += gb[row + oz];
          }
        }
    }
  });
}

// half and bfloat16: input rows (b, ix, iy) in parallel; each element gathers from the outputs that read it (no atomics).
template <typename T, int S>
void max_backward_rows(const at::Tensor& grad, const at::Tensor& code, at::Tensor& dx, const Sizes& sz) {
  using acc = acc_t<T>;
  const T* g = grad.const_data_ptr<T>();
  const uint8_t* c = code.const_data_ptr<uint8_t>();
  T* out = dx.mutable_data_ptr<T>();
  const int64_t out_slice = sz.OX * sz.OY * sz.OZ;
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / sz.Z);
  at::parallel_for(0, sz.B * sz.X * sz.Y, grain, [&](int64_t begin, int64_t end) {
    const T* grows[9];
    const uint8_t* crows[9];
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (sz.X * sz.Y), ix = (r / sz.Y) % sz.X, iy = r % sz.Y;
      reader_rows<S>(g + b * out_slice, sz.OX, sz.OY, sz.OZ, ix, iy, grows);
      reader_rows<S>(c + b * out_slice, sz.OX, sz.OY, sz.OZ, ix, iy, crows);
      T* row = out + r * sz.Z;
      // With stride 1, z taps 1 .. Z-2 read inside the line: the unchecked form vectorises.
      const int64_t lo = S == 1 ? std::min<int64_t>(1, sz.Z) : sz.Z, hi = S == 1 ? std::max<int64_t>(lo, sz.Z - 1) : sz.Z;
      for (int64_t iz = 0; iz < lo; ++iz) row[iz] = static_cast<T>(max_grad_at<acc, S, true>(grows, crows, sz.OZ, iz));
      for (int64_t iz = lo; iz < hi; ++iz) row[iz] = static_cast<T>(max_grad_at<acc, S, false>(grows, crows, sz.OZ, iz));
      for (int64_t iz = hi; iz < sz.Z; ++iz) row[iz] = static_cast<T>(max_grad_at<acc, S, true>(grows, crows, sz.OZ, iz));
    }
  });
}

at::Tensor max_pool3_backward_cpu(const at::Tensor& grad_in, const at::Tensor& code_in, at::IntArrayRef input_size,
                                  int64_t stride) {
  check_backward_args(grad_in, input_size, stride, "max_pool3_backward");
  NAS3D_CHECK_SAME_SHAPE(grad_in, code_in, "grad", "code");
  TORCH_CHECK(code_in.scalar_type() == at::kByte, "code must be uint8, got ", code_in.scalar_type());
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor code = code_in.contiguous();
  at::Tensor dx = at::empty(input_size, grad.options());
  const auto sz = Sizes::of(dx, stride);
  if (dx.numel() == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "max_pool3_backward_cpu", [&] {
    if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>)
      max_backward_scatter<scalar_t>(grad, code, dx, sz, stride);
    else if (stride == 1)
      max_backward_rows<scalar_t, 1>(grad, code, dx, sz);
    else
      max_backward_rows<scalar_t, 2>(grad, code, dx, sz);
  });
  return dx;
}

at::Tensor avg_pool3_cpu(const at::Tensor& x_in, int64_t stride) {
  check_forward_args(x_in, stride, "avg_pool3");
  const at::Tensor x = x_in.contiguous();
  const auto sz = Sizes::of(x, stride);
  at::Tensor out = at::empty(sz.out_shape(), x.options());
  if (out.numel() == 0) return out;
  const auto acc_opts = x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  at::Tensor t1 = at::empty({sz.B, sz.X, sz.Y, sz.OZ}, acc_opts);
  at::Tensor t2 = at::empty({sz.B, sz.X, sz.OY, sz.OZ}, acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "avg_pool3_cpu", [&] {
    using acc = acc_t<scalar_t>;
    sum_pass<acc>(x.const_data_ptr<scalar_t>(), t1.mutable_data_ptr<acc>(), sz.B * sz.X * sz.Y, sz.Z, 1, stride,
                  acc(1));
    sum_pass<acc>(t1.const_data_ptr<acc>(), t2.mutable_data_ptr<acc>(), sz.B * sz.X, sz.Y, sz.OZ, stride, acc(1));
    sum_pass<acc>(t2.const_data_ptr<acc>(), out.mutable_data_ptr<scalar_t>(), sz.B, sz.X, sz.OY * sz.OZ, stride,
                  acc(1) / acc(27));
  });
  return out;
}

at::Tensor avg_pool3_backward_cpu(const at::Tensor& grad_in, at::IntArrayRef input_size, int64_t stride) {
  check_backward_args(grad_in, input_size, stride, "avg_pool3_backward");
  const at::Tensor grad = grad_in.contiguous();
  at::Tensor dx = at::empty(input_size, grad.options());
  const auto sz = Sizes::of(dx, stride);
  if (dx.numel() == 0) return dx;
  const auto acc_opts = grad.options().dtype(grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  at::Tensor t1 = at::empty({sz.B, sz.X, sz.OY, sz.OZ}, acc_opts);
  at::Tensor t2 = at::empty({sz.B, sz.X, sz.Y, sz.OZ}, acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "avg_pool3_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    adjoint_pass<acc>(grad.const_data_ptr<scalar_t>(), t1.mutable_data_ptr<acc>(), sz.B, sz.OX, sz.X,
                      sz.OY * sz.OZ, stride, acc(1));
    adjoint_pass<acc>(t1.const_data_ptr<acc>(), t2.mutable_data_ptr<acc>(), sz.B * sz.X, sz.OY, sz.Y, sz.OZ, stride,
                      acc(1));
    adjoint_pass<acc>(t2.const_data_ptr<acc>(), dx.mutable_data_ptr<scalar_t>(), sz.B * sz.X * sz.Y, sz.OZ, sz.Z, 1,
                      stride, acc(1) / acc(27));
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(nas3d, CPU, m) {
  m.impl("max_pool3", &max_pool3_cpu);
  m.impl("max_pool3_backward", &max_pool3_backward_cpu);
  m.impl("avg_pool3", &avg_pool3_cpu);
  m.impl("avg_pool3_backward", &avg_pool3_backward_cpu);
}

}  // namespace pool3
}  // namespace nas3d
