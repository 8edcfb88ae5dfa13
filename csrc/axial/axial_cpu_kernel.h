// CPU kernels of nas3d::axial_attention, compiled twice: for the baseline x86-64/ARM ISA
// (axial_cpu.cpp, NAS3D_AXIAL_ISA = generic) and for AVX2 + FMA (axial_cpu_avx2.cpp, NAS3D_AXIAL_ISA =
// avx2); axial_cpu.cpp picks one at run time. No include guard on purpose; each includer defines
// NAS3D_AXIAL_ISA and includes every header below before it (so only this file's code takes the ISA).
//
// Work split: lines (batch x head x the two other axes) in parallel. Per line, q (times the scale, and
// transposed to [D][L]), k, v (and in the backward the output gradient) are gathered once from their
// strided storage into float32 (float64) buffers. The SIMD lanes hold N consecutive queries (8 floats or
// 4 doubles, GCC/Clang vector extensions): every inner-loop operation is vertical (broadcast k_j[d]
// times a vector of queries), with no horizontal reduction. The relative embeddings are stored
// reversed, [D][R] with x = R-1-r, so that the N lanes' rows j - i are N contiguous entries. Keys are
// visited in blocks of kKeyBlock with the online softmax of axial.h (in vector form): no L x L matrix
// exists, only one block of N x kKeyBlock logits. The backward recomputes p from the saved log-sum-exp;
// dk and dv gather per-lane partial sums over a line and reduce the lanes once at its end.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "axial.h"
#include "axial_args.h"

namespace nas3d {
namespace axial {
namespace NAS3D_AXIAL_ISA {

template <typename acc>
struct VecT;
template <>
struct VecT<float> {
  typedef float type __attribute__((vector_size(32)));
  typedef int32_t itype __attribute__((vector_size(32)));
  static constexpr int N = 8;
};
template <>
struct VecT<double> {
  typedef double type __attribute__((vector_size(32)));
  static constexpr int N = 4;
};

template <typename acc>
using vec_t = typename VecT<acc>::type;

template <typename acc>
inline vec_t<acc> load(const acc* p) {
  vec_t<acc> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename acc>
inline void store(acc* p, const vec_t<acc>& v) {
  std::memcpy(p, &v, sizeof(v));
}
template <typename acc>
inline vec_t<acc> splat(acc x) {
  return vec_t<acc>{} + x;
}
template <typename acc>
inline acc hsum(const vec_t<acc>& v) {
  acc t = 0;
  for (int l = 0; l < VecT<acc>::N; ++l) t += v[l];
  return t;
}

// exp of float logits, eight lanes: Cody-Waite range reduction x = n ln2 + f, |f| <= ln2 / 2, Cephes'
// polynomial (relative error ~1e-7), 2^n built in the exponent bits. Inputs below -87 (and -inf) give
// ~1e-38 instead of 0: negligible in a softmax whose largest term is 1.
inline vec_t<float> vexp(vec_t<float> x) {
  using V = vec_t<float>;
  using I = VecT<float>::itype;
  const V lo = splat(-87.0f), hi = splat(88.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const V n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  V f = x - n * 0.693359375f;
  f = f + n * 2.12194440e-4f;
  const V z = f * f;
  V y = f * 1.9875691500e-4f + 1.3981999507e-3f;
  y = y * f + 8.3334519073e-3f;
  y = y * f + 4.1665795894e-2f;
  y = y * f + 1.6666665459e-1f;
  y = y * f + 5.0000001201e-1f;
  y = y * z + f + 1.0f;
  const I bits = (__builtin_convertvector(n, I) + 127) << 23;
  V two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return y * two_n;
}
inline vec_t<double> vexp(vec_t<double> x) {
  for (int l = 0; l < 4; ++l) x[l] = std::exp(x[l]);
  return x;
}
inline vec_t<float> vlog(vec_t<float> x) {
  for (int l = 0; l < 8; ++l) x[l] = std::log(x[l]);
  return x;
}
inline vec_t<double> vlog(vec_t<double> x) {
  for (int l = 0; l < 4; ++l) x[l] = std::log(x[l]);
  return x;
}

constexpr int64_t kKeyBlock = 128;

// Relative embeddings in the accumulation type, prepared once per call (shared by every line):
// reversed and transposed, [D][R + N] with entry x = R-1-r of row r, zero past R (padding lanes).
template <typename acc>
struct Rel {
  const acc* q = nullptr;
  const acc* k = nullptr;  // times the scale
  const acc* v = nullptr;
  int64_t stride = 0;      // R + N
};

// A line's data in the accumulation type. Queries (q, grad, out) are [D][Lp] with Lp = L rounded up to N,
// zero past L; keys and values (k, v) are [L][D].
// Lines are processed in groups of up to kGroup lines adjacent along the last of the two other axes
// (o2): for attention along X or Y their elements are neighbours in memory, so the group's gathers and
// scatters read and write whole cache lines instead of one element per line.
constexpr int64_t kGroup = 16;

struct Group {
  int64_t first;  // line index of the group's first line
  int64_t count;  // lines in the group
};

inline int64_t num_groups(const Geometry& g) { return g.B * g.H * g.S1 * ((g.S2 + kGroup - 1) / kGroup); }

inline Group group_at(const Geometry& g, int64_t gi) {
  const int64_t per_row = (g.S2 + kGroup - 1) / kGroup;
  const int64_t o2 = (gi % per_row) * kGroup;
  return {(gi / per_row) * g.S2 + o2, std::min(kGroup, g.S2 - o2)};
}

// Group versions of gather_lanes / gather_rows: out holds `count` consecutive line buffers.
template <typename scalar_t, typename acc>
inline void gather_lanes_group(const scalar_t* p, const Strides& st, int64_t count, int64_t L, int64_t Lp, int64_t D,
                               acc mul, acc* out) {
  const int64_t line = D * Lp;
  for (int64_t d = 0; d < D; ++d) {
    if (st.axis <= st.o2) {  // the line itself is the closer run in memory
      for (int64_t t = 0; t < count; ++t)
        for (int64_t i = 0; i < L; ++i)
          out[t * line + d * Lp + i] = mul * static_cast<acc>(p[i * st.axis + d * st.c + t * st.o2]);
    } else {
      for (int64_t i = 0; i < L; ++i) {
        const scalar_t* src = p + i * st.axis + d * st.c;
        for (int64_t t = 0; t < count; ++t) out[t * line + d * Lp + i] = mul * static_cast<acc>(src[t * st.o2]);
      }
    }
    for (int64_t t = 0; t < count; ++t)
      for (int64_t i = L; i < Lp; ++i) out[t * line + d * Lp + i] = 0;
  }
}

template <typename scalar_t, typename acc>
inline void gather_rows_group(const scalar_t* p, const Strides& st, int64_t count, int64_t L, int64_t D, acc* out) {
  const int64_t line = L * D;
  for (int64_t d = 0; d < D; ++d) {
    if (st.axis <= st.o2) {
      for (int64_t t = 0; t < count; ++t)
        for (int64_t j = 0; j < L; ++j) out[t * line + j * D + d] = static_cast<acc>(p[j * st.axis + d * st.c + t * st.o2]);
    } else {
      for (int64_t j = 0; j < L; ++j) {
        const scalar_t* src = p + j * st.axis + d * st.c;
        for (int64_t t = 0; t < count; ++t) out[t * line + j * D + d] = static_cast<acc>(src[t * st.o2]);
      }
    }
  }
}

// Writes `count` line results held as [count][L][D] to their strided places.
template <typename scalar_t, typename acc>
inline void scatter_group(const acc* buf, const Strides& st, int64_t count, int64_t L, int64_t D, scalar_t* p) {
  const int64_t line = L * D;
  for (int64_t d = 0; d < D; ++d) {
    if (st.axis <= st.o2) {
      for (int64_t t = 0; t < count; ++t)
        for (int64_t i = 0; i < L; ++i) p[i * st.axis + d * st.c + t * st.o2] = static_cast<scalar_t>(buf[t * line + i * D + d]);
    } else {
      for (int64_t i = 0; i < L; ++i) {
        scalar_t* dst = p + i * st.axis + d * st.c;
        for (int64_t t = 0; t < count; ++t) dst[t * st.o2] = static_cast<scalar_t>(buf[t * line + i * D + d]);
      }
    }
  }
}

// Logits of the N queries i0 .. i0+N-1 (QT: [D][Lp], scaled) against key j: s_ij of axial.h.
template <typename acc>
inline vec_t<acc> lane_logits(const acc* __restrict__ QT, int64_t Lp, const acc* __restrict__ kj, const Rel<acc>& rel,
                              int64_t D, int64_t i0, int64_t x0) {
  using V = vec_t<acc>;
  V s = splat<acc>(0);
  if (rel.q != nullptr) {
    for (int64_t d = 0; d < D; ++d) s += load(QT + d * Lp + i0) * (kj[d] + load(rel.q + d * rel.stride + x0));
  } else {
    for (int64_t d = 0; d < D; ++d) s += load(QT + d * Lp + i0) * kj[d];
  }
  if (rel.k != nullptr) {
    for (int64_t d = 0; d < D; ++d) s += kj[d] * load(rel.k + d * rel.stride + x0);
  }
  return s;
}

// The tiles of N queries without relative terms for a compile-time head dim: the queries' vectors and
// the accumulators live in local arrays (registers or stack), free of aliasing with the line buffers.
template <typename acc, int DC>
inline void forward_tile_fixed(const acc* __restrict__ QT, int64_t Lp, const acc* __restrict__ K,
                               const acc* __restrict__ Vb, int64_t L, int64_t i0, acc* __restrict__ S,
                               acc* __restrict__ out_line, acc* __restrict__ lse_line) {
  using V = vec_t<acc>;
  constexpr int N = VecT<acc>::N;
  V qv[DC], o[DC];
  for (int d = 0; d < DC; ++d) {
    qv[d] = load(QT + d * Lp + i0);
    o[d] = splat<acc>(0);
  }
  V m = splat<acc>(0), l = splat<acc>(0);
  for (int64_t j0 = 0; j0 < L; j0 += kKeyBlock) {
    const int64_t nb = std::min(kKeyBlock, L - j0);
    V bm = splat(-std::numeric_limits<acc>::infinity());
    for (int64_t j = 0; j < nb; ++j) {
      const acc* kj = K + (j0 + j) * DC;
      V sj = splat<acc>(0);
      for (int d = 0; d < DC; ++d) sj += qv[d] * kj[d];
      store(S + j * N, sj);
      bm = sj > bm ? sj : bm;
    }
    if (j0 == 0) {
      m = bm;
    } else {  // online_rescale of axial.h, per lane
      const V m_new = bm > m ? bm : m;
      const V corr = vexp(m - m_new);
      l *= corr;
      for (int d = 0; d < DC; ++d) o[d] *= corr;
      m = m_new;
    }
    for (int64_t j = 0; j < nb; ++j) {
      const V p = vexp(load(S + j * N) - m);
      l += p;
      const acc* vj = Vb + (j0 + j) * DC;
      for (int d = 0; d < DC; ++d) o[d] += p * vj[d];
    }
  }
  const V inv = splat<acc>(1) / l;
  const V lse_v = m + vlog(l);
  const int64_t lanes = std::min<int64_t>(N, L - i0);
  for (int d = 0; d < DC; ++d) {
    const V od = o[d] * inv;
    for (int64_t t = 0; t < lanes; ++t) out_line[(i0 + t) * DC + d] = od[t];
  }
  for (int64_t t = 0; t < lanes; ++t) lse_line[i0 + t] = lse_v[t];
}

template <typename acc, int DC>
inline void backward_tile_fixed(const acc* __restrict__ QT, const acc* __restrict__ GT, int64_t Lp,
                                const acc* __restrict__ K, const acc* __restrict__ Vb, int64_t L, int64_t i0,
                                const acc* lse_l, const acc* delta, acc scale, acc* __restrict__ dKl,
                                acc* __restrict__ dVl, acc* __restrict__ dq_line) {
  using V = vec_t<acc>;
  constexpr int N = VecT<acc>::N;
  V qv[DC], gv[DC], dq[DC];
  for (int d = 0; d < DC; ++d) {
    qv[d] = load(QT + d * Lp + i0);
    gv[d] = load(GT + d * Lp + i0);
    dq[d] = splat<acc>(0);
  }
  const V lse_v = load(lse_l + i0), delta_v = load(delta + i0);
  for (int64_t j = 0; j < L; ++j) {
    const acc* kj = K + j * DC;
    const acc* vj = Vb + j * DC;
    V s = splat<acc>(0), dp = splat<acc>(0);
    for (int d = 0; d < DC; ++d) {
      s += qv[d] * kj[d];
      dp += gv[d] * vj[d];
    }
    const V p = vexp(s - lse_v);       // prob_from_lse of axial.h
    const V ds = p * (dp - delta_v);  // logit_grad of axial.h
    acc* dkj = dKl + j * DC * N;
    acc* dvj = dVl + j * DC * N;
    for (int d = 0; d < DC; ++d) {
      dq[d] += ds * kj[d];
      store(dkj + d * N, load(dkj + d * N) + ds * qv[d]);
      store(dvj + d * N, load(dvj + d * N) + p * gv[d]);
    }
  }
  const int64_t lanes = std::min<int64_t>(N, L - i0);
  for (int d = 0; d < DC; ++d)
    for (int64_t t = 0; t < lanes; ++t) dq_line[(i0 + t) * DC + d] = scale * dq[d][t];
}

// Lines per parallel task: enough work (~L^2 D multiply-adds each) to amortise the task.
inline int64_t line_grain(const Geometry& g) {
  return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, g.L * g.L * g.D));
}

inline int64_t round_up(int64_t x, int64_t n) { return (x + n - 1) / n * n; }

// DC: the head dim as a compile-time constant (8, 16, 32 or 64: loops over d unroll and accumulators
// stay in registers), or 0 for any head dim.
template <typename scalar_t, int DC>
void forward_typed(const Geometry& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const Rel<acc_t<scalar_t>>& rel, double scale_d, at::Tensor& out, at::Tensor& lse) {
  using acc = acc_t<scalar_t>;
  using V = vec_t<acc>;
  constexpr int N = VecT<acc>::N;
  const int64_t L = g.L, D = DC > 0 ? DC : g.D, Lp = round_up(L, N);
  const Strides sq(q, g.axis, g.d1, g.d2), sk(k, g.axis, g.d1, g.d2), sv(v, g.axis, g.d1, g.d2);
  const Strides so(out, g.axis, g.d1, g.d2);
  const scalar_t* qp = q.const_data_ptr<scalar_t>();
  const scalar_t* kp = k.const_data_ptr<scalar_t>();
  const scalar_t* vp = v.const_data_ptr<scalar_t>();
  scalar_t* outp = out.mutable_data_ptr<scalar_t>();
  acc* lsep = lse.mutable_data_ptr<acc>();
  const acc scale = static_cast<acc>(scale_d);
  const int64_t grain = std::max<int64_t>(1, line_grain(g) / kGroup);
  at::parallel_for(0, num_groups(g), grain, [&](int64_t g0, int64_t g1) {
    std::vector<acc> QTg(kGroup * D * Lp), Kg(kGroup * L * D), Vg(kGroup * L * D), Og(kGroup * L * D);
    // Vector buffers as plain arrays of acc (std::allocator ignores the vectors' alignment): load/store.
    std::vector<acc> Sb(kKeyBlock * N), Ob(D * N);
    acc* S = Sb.data();
    acc* O = Ob.data();
    for (int64_t gi = g0; gi < g1; ++gi) {
      const Group grp = group_at(g, gi);
      gather_lanes_group(qp + g.base(grp.first, sq), sq, grp.count, L, Lp, D, scale, QTg.data());
      gather_rows_group(kp + g.base(grp.first, sk), sk, grp.count, L, D, Kg.data());
      gather_rows_group(vp + g.base(grp.first, sv), sv, grp.count, L, D, Vg.data());
      for (int64_t t_line = 0; t_line < grp.count; ++t_line) {
      const int64_t n = grp.first + t_line;
      const acc* QT = QTg.data() + t_line * D * Lp;
      const acc* K = Kg.data() + t_line * L * D;
      const acc* Vb = Vg.data() + t_line * L * D;
      acc* out_line = Og.data() + t_line * L * D;
      for (int64_t i0 = 0; i0 < L; i0 += N) {
        if constexpr (DC > 0) {
          if (rel.q == nullptr && rel.k == nullptr && rel.v == nullptr) {
            forward_tile_fixed<acc, DC>(QT, Lp, K, Vb, L, i0, S, out_line, lsep + n * L);
            continue;
          }
        }
        // Online softmax per lane (the vector form of online_rescale in axial.h).
        V m = splat<acc>(0), l = splat<acc>(0);
        std::fill(Ob.begin(), Ob.end(), static_cast<acc>(0));
        for (int64_t j0 = 0; j0 < L; j0 += kKeyBlock) {
          const int64_t nb = std::min(kKeyBlock, L - j0);
          V bm = splat(-std::numeric_limits<acc>::infinity());
          for (int64_t j = 0; j < nb; ++j) {
            const int64_t x0 = L - 1 - (j0 + j) + i0;  // reversed row of offset (j0 + j) - i0
            const V sj = lane_logits(QT, Lp, K + (j0 + j) * D, rel, D, i0, x0);
            store(S + j * N, sj);
            bm = sj > bm ? sj : bm;
          }
          if (j0 == 0) {
            m = bm;
          } else {
            const V m_new = bm > m ? bm : m;
            const V corr = vexp(m - m_new);
            l *= corr;
            for (int64_t d = 0; d < D; ++d) store(O + d * N, load(O + d * N) * corr);
            m = m_new;
          }
          for (int64_t j = 0; j < nb; ++j) {
            const V p = vexp(load(S + j * N) - m);
            l += p;
            const acc* vj = Vb + (j0 + j) * D;
            if (rel.v != nullptr) {
              const int64_t x0 = L - 1 - (j0 + j) + i0;
              for (int64_t d = 0; d < D; ++d)
                store(O + d * N, load(O + d * N) + p * (vj[d] + load(rel.v + d * rel.stride + x0)));
            } else {
              for (int64_t d = 0; d < D; ++d) store(O + d * N, load(O + d * N) + p * vj[d]);
            }
          }
        }
        const V inv = splat<acc>(1) / l;
        const V lse_v = m + vlog(l);
        const int64_t lanes = std::min<int64_t>(N, L - i0);
        for (int64_t d = 0; d < D; ++d) {
          const V o = load(O + d * N) * inv;
          for (int64_t t = 0; t < lanes; ++t) out_line[(i0 + t) * D + d] = o[t];
        }
        for (int64_t t = 0; t < lanes; ++t) lsep[n * L + i0 + t] = lse_v[t];
      }
      }
      scatter_group(Og.data(), so, grp.count, L, D, outp + g.base(grp.first, so));
    }
  });
}

// Relative-embedding gradients: one [3][D][R + N] reversed accumulator per chunk of lines (chunks fixed
// by the shapes, not by the thread count, and summed in order afterwards: the result is deterministic).
template <typename scalar_t, int DC>
void backward_typed(const Geometry& g, const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const Rel<acc_t<scalar_t>>& rel,
                    double scale_d, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, acc_t<scalar_t>* drel,
                    int64_t chunks, bool need_drq, bool need_drk, bool need_drv) {
  using acc = acc_t<scalar_t>;
  using V = vec_t<acc>;
  constexpr int N = VecT<acc>::N;
  const int64_t L = g.L, D = DC > 0 ? DC : g.D, Lp = round_up(L, N), RS = rel.stride;
  const Strides sg(grad, g.axis, g.d1, g.d2), sq(q, g.axis, g.d1, g.d2), sk(k, g.axis, g.d1, g.d2);
  const Strides sv(v, g.axis, g.d1, g.d2), so(out, g.axis, g.d1, g.d2);
  const Strides sdq(dq, g.axis, g.d1, g.d2), sdk(dk, g.axis, g.d1, g.d2), sdv(dv, g.axis, g.d1, g.d2);
  const scalar_t* gp = grad.const_data_ptr<scalar_t>();
  const scalar_t* qp = q.const_data_ptr<scalar_t>();
  const scalar_t* kp = k.const_data_ptr<scalar_t>();
  const scalar_t* vp = v.const_data_ptr<scalar_t>();
  const scalar_t* op = out.const_data_ptr<scalar_t>();
  const acc* lsep = lse.const_data_ptr<acc>();
  scalar_t* dqp = dq.mutable_data_ptr<scalar_t>();
  scalar_t* dkp = dk.mutable_data_ptr<scalar_t>();
  scalar_t* dvp = dv.mutable_data_ptr<scalar_t>();
  const acc scale = static_cast<acc>(scale_d);
  const int64_t G_total = num_groups(g);
  // Chunks per task: at least ~4 line_grain()s of work (waking a thread costs more than a small chunk).
  const int64_t lines_per_chunk = std::max<int64_t>(1, g.lines() / chunks);
  const int64_t grain = std::max<int64_t>(1, 4 * line_grain(g) / lines_per_chunk);
  at::parallel_for(0, chunks, grain, [&](int64_t c0, int64_t c1) {
    std::vector<acc> QTg(kGroup * D * Lp), GTg(kGroup * D * Lp), OTg(kGroup * D * Lp), Kg(kGroup * L * D),
        Vg(kGroup * L * D), dQg(kGroup * L * D), dKg(kGroup * L * D), dVg(kGroup * L * D), lse_l(Lp), delta(Lp);
    // Vector buffers as plain arrays of acc (std::allocator ignores the vectors' alignment): load/store.
    std::vector<acc> dKb(L * D * N), dVb(L * D * N), dQb(D * N);
    acc* dKl = dKb.data();
    acc* dVl = dVb.data();
    acc* dQ = dQb.data();
    for (int64_t c = c0; c < c1; ++c) {
      acc* drq = drel == nullptr ? nullptr : drel + (c * 3 + 0) * D * RS;
      acc* drk = drel == nullptr ? nullptr : drel + (c * 3 + 1) * D * RS;
      acc* drv = drel == nullptr ? nullptr : drel + (c * 3 + 2) * D * RS;
      for (int64_t gi = c * G_total / chunks; gi < (c + 1) * G_total / chunks; ++gi) {
        const Group grp = group_at(g, gi);
        gather_lanes_group(qp + g.base(grp.first, sq), sq, grp.count, L, Lp, D, scale, QTg.data());
        gather_lanes_group(gp + g.base(grp.first, sg), sg, grp.count, L, Lp, D, static_cast<acc>(1), GTg.data());
        gather_lanes_group(op + g.base(grp.first, so), so, grp.count, L, Lp, D, static_cast<acc>(1), OTg.data());
        gather_rows_group(kp + g.base(grp.first, sk), sk, grp.count, L, D, Kg.data());
        gather_rows_group(vp + g.base(grp.first, sv), sv, grp.count, L, D, Vg.data());
        for (int64_t t_line = 0; t_line < grp.count; ++t_line) {
        const int64_t n = grp.first + t_line;
        const acc* QT = QTg.data() + t_line * D * Lp;
        const acc* GT = GTg.data() + t_line * D * Lp;
        const acc* OT = OTg.data() + t_line * D * Lp;
        const acc* K = Kg.data() + t_line * L * D;
        const acc* Vb = Vg.data() + t_line * L * D;
        acc* dq_line = dQg.data() + t_line * L * D;
        acc* dk_line = dKg.data() + t_line * L * D;
        acc* dv_line = dVg.data() + t_line * L * D;
        // delta_i = g_i . out_i; padding lanes get lse = delta = 0 and g = 0, so their ds and p g vanish.
        for (int64_t i = 0; i < Lp; ++i) {
          acc t = 0;
          for (int64_t d = 0; d < D; ++d) t += GT[d * Lp + i] * OT[d * Lp + i];
          delta[i] = t;
          lse_l[i] = i < L ? lsep[n * L + i] : 0;
        }
        std::fill(dKb.begin(), dKb.end(), static_cast<acc>(0));
        std::fill(dVb.begin(), dVb.end(), static_cast<acc>(0));
        for (int64_t i0 = 0; i0 < L; i0 += N) {
          if constexpr (DC > 0) {
            if (drel == nullptr && rel.q == nullptr && rel.k == nullptr && rel.v == nullptr) {
              backward_tile_fixed<acc, DC>(QT, GT, Lp, K, Vb, L, i0, lse_l.data(), delta.data(), scale, dKl, dVl,
                                           dq_line);
              continue;
            }
          }
          const V lse_v = load(lse_l.data() + i0), delta_v = load(delta.data() + i0);
          std::fill(dQb.begin(), dQb.end(), static_cast<acc>(0));
          for (int64_t j = 0; j < L; ++j) {
            const int64_t x0 = L - 1 - j + i0;
            const acc* kj = K + j * D;
            const acc* vj = Vb + j * D;
            const V s = lane_logits(QT, Lp, kj, rel, D, i0, x0);
            const V p = vexp(s - lse_v);  // prob_from_lse of axial.h
            V dp = splat<acc>(0);
            if (rel.v != nullptr) {
              for (int64_t d = 0; d < D; ++d) dp += load(GT + d * Lp + i0) * (vj[d] + load(rel.v + d * RS + x0));
            } else {
              for (int64_t d = 0; d < D; ++d) dp += load(GT + d * Lp + i0) * vj[d];
            }
            const V ds = p * (dp - delta_v);  // logit_grad of axial.h
            acc* dkj = dKl + j * D * N;
            acc* dvj = dVl + j * D * N;
            for (int64_t d = 0; d < D; ++d) {
              const V qd = load(QT + d * Lp + i0);
              const V gd = load(GT + d * Lp + i0);
              if (rel.q != nullptr) {
                store(dQ + d * N, load(dQ + d * N) + ds * (kj[d] + load(rel.q + d * RS + x0)));
              } else {
                store(dQ + d * N, load(dQ + d * N) + ds * kj[d]);
              }
              if (rel.k != nullptr) {
                store(dkj + d * N, load(dkj + d * N) + ds * (qd + load(rel.k + d * RS + x0)));
              } else {
                store(dkj + d * N, load(dkj + d * N) + ds * qd);
              }
              store(dvj + d * N, load(dvj + d * N) + p * gd);
              if (need_drq) store(drq + d * RS + x0, load(drq + d * RS + x0) + ds * qd);
              if (need_drk) store(drk + d * RS + x0, load(drk + d * RS + x0) + ds * kj[d]);
              if (need_drv) store(drv + d * RS + x0, load(drv + d * RS + x0) + p * gd);
            }
          }
          const int64_t lanes = std::min<int64_t>(N, L - i0);
          for (int64_t d = 0; d < D; ++d)
            for (int64_t t = 0; t < lanes; ++t) dq_line[(i0 + t) * D + d] = scale * dQ[d * N + t];
        }
        for (int64_t j = 0; j < L; ++j) {
          for (int64_t d = 0; d < D; ++d) {
            dk_line[j * D + d] = hsum<acc>(load(dKl + (j * D + d) * N));
            dv_line[j * D + d] = hsum<acc>(load(dVl + (j * D + d) * N));
          }
        }
        }
        scatter_group(dQg.data(), sdq, grp.count, L, D, dqp + g.base(grp.first, sdq));
        scatter_group(dKg.data(), sdk, grp.count, L, D, dkp + g.base(grp.first, sdk));
        scatter_group(dVg.data(), sdv, grp.count, L, D, dvp + g.base(grp.first, sdv));
      }
    }
  });
}

// Entry points of this ISA (dtype dispatch inside, so the dispatched lambdas take the ISA too).
// rq, rk, rv: the reversed [D][R + pad] tables (undefined when absent); pad >= 8.
inline void forward(const Geometry& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& rq, const at::Tensor& rk, const at::Tensor& rv, double scale, at::Tensor& out,
                    at::Tensor& lse) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "axial_attention_cpu", [&] {
    using acc = acc_t<scalar_t>;
    Rel<acc> rel;
    rel.q = rq.defined() ? rq.const_data_ptr<acc>() : nullptr;
    rel.k = rk.defined() ? rk.const_data_ptr<acc>() : nullptr;
    rel.v = rv.defined() ? rv.const_data_ptr<acc>() : nullptr;
    for (const at::Tensor* t : {&rq, &rk, &rv})
      if (t->defined()) rel.stride = t->size(1);
    // Half and bfloat16 run the any-head-dim kernels only (build time).
    const bool specialise = std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>;
    switch (specialise ? g.D : 0) {
      case 8: forward_typed<scalar_t, 8>(g, q, k, v, rel, scale, out, lse); break;
      case 16: forward_typed<scalar_t, 16>(g, q, k, v, rel, scale, out, lse); break;
      case 32: forward_typed<scalar_t, 32>(g, q, k, v, rel, scale, out, lse); break;
      case 64: forward_typed<scalar_t, 64>(g, q, k, v, rel, scale, out, lse); break;
      default: forward_typed<scalar_t, 0>(g, q, k, v, rel, scale, out, lse);
    }
  });
}

#define NAS3D_AXIAL_BWD(DC)                                                                                   \
  backward_typed<scalar_t, DC>(g, grad, q, k, v, out, lse, rel, scale, dq, dk, dv, drelp, chunks, need_drq, need_drk, \
                               need_drv)
inline void backward(const Geometry& g, const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& rq,
                     const at::Tensor& rk, const at::Tensor& rv, double scale, at::Tensor& dq, at::Tensor& dk,
                     at::Tensor& dv, at::Tensor& drel, int64_t chunks, bool need_drq, bool need_drk, bool need_drv) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "axial_attention_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    Rel<acc> rel;
    rel.q = rq.defined() ? rq.const_data_ptr<acc>() : nullptr;
    rel.k = rk.defined() ? rk.const_data_ptr<acc>() : nullptr;
    rel.v = rv.defined() ? rv.const_data_ptr<acc>() : nullptr;
    for (const at::Tensor* t : {&rq, &rk, &rv})
      if (t->defined()) rel.stride = t->size(1);
    if (drel.defined()) rel.stride = drel.size(3);
    acc* drelp = drel.defined() ? drel.mutable_data_ptr<acc>() : nullptr;
    const bool specialise = std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>;
    switch (specialise ? g.D : 0) {
      case 8: NAS3D_AXIAL_BWD(8); break;
      case 16: NAS3D_AXIAL_BWD(16); break;
      case 32: NAS3D_AXIAL_BWD(32); break;
      case 64: NAS3D_AXIAL_BWD(64); break;
      default: NAS3D_AXIAL_BWD(0);
    }
  });
}

#undef NAS3D_AXIAL_BWD

}  // namespace NAS3D_AXIAL_ISA
}  // namespace axial
}  // namespace nas3d
