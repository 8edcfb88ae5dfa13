// CPU kernels of nas3d::axial_attention, compiled twice: for the baseline x86-64/ARM ISA
// (axial_cpu.cpp, NAS3D_AXIAL_ISA = generic) and for AVX2 + FMA (axial_cpu_avx2.cpp, NAS3D_AXIAL_ISA =
// avx2); axial_cpu.cpp picks one at run time. No include guard on purpose; each includer defines
// NAS3D_AXIAL_ISA and includes every header below before it (so only this file's code takes the ISA).
//
// Work split: lines (batch x head x the two other axes) in parallel. Per line, q (times the scale), k, v
// (and in the backward the output and its gradient) are gathered once from their strided storage into
// float32 (float64) buffers laid out [D][Lp], the layout results are written in too (lines that lie
// across memory move through 8 x 8 register transposes). The SIMD lanes hold N consecutive queries (8 floats or
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

// Lane r of the result = the sum of the N lanes of the vector at p + r * stride (r < N).
template <typename acc>
inline vec_t<acc> lane_sums(const acc* p, int64_t stride) {
  vec_t<acc> out;
  for (int r = 0; r < VecT<acc>::N; ++r) out[r] = hsum<acc>(load(p + r * stride));
  return out;
}
// Eight float vectors: a transpose folded into three rounds of pairwise adds (14 shuffles, 7 adds instead of
// 8 x 7 scalar adds).
template <>
inline vec_t<float> lane_sums<float>(const float* p, int64_t stride) {
  using V = vec_t<float>;
  V a[8];
  for (int r = 0; r < 8; ++r) a[r] = load(p + r * stride);
  V b[4], c[2];
  for (int r = 0; r < 4; ++r)  // b[r] = [a0+a1 of row 2r, of row 2r+1, a2+a3 of 2r, of 2r+1, ...]
    b[r] = __builtin_shufflevector(a[2 * r], a[2 * r + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
           __builtin_shufflevector(a[2 * r], a[2 * r + 1], 1, 9, 3, 11, 5, 13, 7, 15);
  for (int r = 0; r < 2; ++r)  // c[r]: rows 4r..4r+3, lanes 0-3 summed then lanes 4-7 summed
    c[r] = __builtin_shufflevector(b[2 * r], b[2 * r + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
           __builtin_shufflevector(b[2 * r], b[2 * r + 1], 2, 3, 10, 11, 6, 7, 14, 15);
  return __builtin_shufflevector(c[0], c[1], 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(c[0], c[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

// exp of float logits, eight lanes: Cody-Waite range reduction x = n ln2 + f, |f| <= ln2 / 2, Cephes'
// polynomial (relative error ~1e-7), 2^n applied as two normal powers 2^(n >> 1) * 2^(n - (n >> 1)) built
// in the exponent bits, so that the results follow IEEE like std::exp across the whole range (the rule of
// axial.h): subnormal below -87.3, exactly 0 below -103.98 and for -inf, inf above 88.72, NaN for NaN.
// (Clamping at -87 gave 1.6e-38 for -inf: 1.6e-38 * an infinite value is inf where the reference's
// 0 * inf is NaN.)
inline vec_t<float> vexp(vec_t<float> x) {
  using V = vec_t<float>;
  using I = VecT<float>::itype;
  typedef uint32_t U __attribute__((vector_size(32)));
  const V lo = splat(-104.0f), hi = splat(89.0f);
  const V xc = x < lo ? lo : (x > hi ? hi : x);  // NaN lanes stay NaN (every comparison is false)
  const V n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  V f = xc - n * 0.693359375f;
  f = f + n * 2.12194440e-4f;
  // The degree-5 polynomial by Estrin's scheme: three dependent steps instead of Horner's five (this exp
  // sits on the critical path of the backward's key loop).
  const V z = f * f;
  const V a = f * 1.9875691500e-4f + 1.3981999507e-3f;
  const V b = f * 8.3334519073e-3f + 4.1665795894e-2f;
  const V c = f * 1.6666665459e-1f + 5.0000001201e-1f;
  V y = a * (z * z) + (b * z + c);
  y = y * z + f + 1.0f;
  // n in [-150, 129] (garbage in NaN lanes, where y is NaN): both halves lie in [-75, 65], normal powers.
  const I ni = __builtin_convertvector(n, I);
  const I n1 = ni >> 1, n2 = ni - n1;
  const U b1 = __builtin_convertvector(n1 + 127, U) << 23, b2 = __builtin_convertvector(n2 + 127, U) << 23;
  V p1, p2;
  std::memcpy(&p1, &b1, sizeof(p1));
  std::memcpy(&p2, &b2, sizeof(p2));
  return (y * p1) * p2;  // one rounding into the subnormals; 2^-150 * y < 2^-150 rounds to 0
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

// The vector forms of softmax_base and rescale_factor of axial.h (the IEEE rule): the base subtracted
// from the logits is 0 in lanes whose running max is still -inf, and the rescale factor is exactly 0 there.
template <typename acc>
inline vec_t<acc> vbase(vec_t<acc> m) {
  const vec_t<acc> ninf = splat(-std::numeric_limits<acc>::infinity());
  return m == ninf ? splat<acc>(0) : m;
}
template <typename acc>
inline vec_t<acc> vrescale(vec_t<acc> m_old, vec_t<acc> m_new) {
  const vec_t<acc> ninf = splat(-std::numeric_limits<acc>::infinity());
  return m_old == ninf ? splat<acc>(0) : vexp(m_old - m_new);
}

// Lanes 0 .. N-1 as values: `lane_ids<acc>() < splat(acc(L - i0))` masks the padding queries of a tile.
template <typename acc>
inline vec_t<acc> lane_ids() {
  vec_t<acc> v;
  for (int l = 0; l < VecT<acc>::N; ++l) v[l] = static_cast<acc>(l);
  return v;
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
constexpr int64_t kGroup = 32;

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

// dst[c * dst_stride + r] = mul * src[r * src_stride + c] for r < rows, c < cols: the copy between a line
// buffer row and lines that lie across memory (attention along X or Y, lines adjacent along Z).
template <typename S, typename T, typename acc>
inline void copy_transposed(const S* src, int64_t src_stride, T* dst, int64_t dst_stride, int64_t rows, int64_t cols,
                            acc mul) {
  int64_t r0 = 0;
  if constexpr (std::is_same_v<S, float> && std::is_same_v<T, float>) {
    // 8 x 8 blocks through registers: every load and store is a whole vector.
    using V = vec_t<float>;
    for (; r0 + 8 <= rows; r0 += 8) {
      int64_t c0 = 0;
      for (; c0 + 8 <= cols; c0 += 8) {
        V a[8], b[8];
        for (int r = 0; r < 8; ++r) a[r] = load(src + (r0 + r) * src_stride + c0);
        for (int r = 0; r < 8; r += 2) {
          b[r] = __builtin_shufflevector(a[r], a[r + 1], 0, 8, 1, 9, 4, 12, 5, 13);
          b[r + 1] = __builtin_shufflevector(a[r], a[r + 1], 2, 10, 3, 11, 6, 14, 7, 15);
        }
        for (int r = 0; r < 8; r += 4)
          for (int h = 0; h < 2; ++h) {
            a[r + h] = __builtin_shufflevector(b[r + h], b[r + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
            a[r + h + 2] = __builtin_shufflevector(b[r + h], b[r + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
          }
        // a[0]: columns 0 (lanes 0-3) and 4 (lanes 4-7) of rows 0-3; a[4]: the same of rows 4-7; etc.
        const int order[4] = {0, 2, 1, 3};  // a[order[k]] holds columns k and k + 4
        for (int k = 0; k < 4; ++k) {
          const V lo = a[order[k]], hi = a[order[k] + 4];
          store(dst + (c0 + k) * dst_stride + r0, mul * __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 8, 9, 10, 11));
          store(dst + (c0 + k + 4) * dst_stride + r0,
                mul * __builtin_shufflevector(lo, hi, 4, 5, 6, 7, 12, 13, 14, 15));
        }
      }
      for (; c0 < cols; ++c0)
        for (int64_t r = r0; r < r0 + 8; ++r) dst[c0 * dst_stride + r] = mul * src[r * src_stride + c0];
    }
  }
  for (int64_t r = r0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      dst[c * dst_stride + r] = static_cast<T>(mul * static_cast<acc>(src[r * src_stride + c]));
}

// Every line buffer is [D][Lp]: row d holds the line's L values of channel d, zero from L to Lp. A group's
// `count` line buffers are consecutive. Queries are read as vectors of N lanes from a row, keys and values
// as scalars (row d, column j), and results are stored as vectors into a row.
template <typename scalar_t, typename acc>
inline void gather_group(const scalar_t* p, const Strides& st, int64_t count, int64_t L, int64_t Lp, int64_t D,
                         acc mul, acc* out) {
  const int64_t line = D * Lp;
  for (int64_t d = 0; d < D; ++d) {
    if (st.axis == 1) {  // contiguous lines: a plain (vectorised) copy per row
      for (int64_t t = 0; t < count; ++t) {
        const scalar_t* src = p + d * st.c + t * st.o2;
        acc* dst = out + t * line + d * Lp;
        for (int64_t i = 0; i < L; ++i) dst[i] = mul * static_cast<acc>(src[i]);
      }
    } else if (st.axis <= st.o2) {  // the line itself is the closer run in memory
      for (int64_t t = 0; t < count; ++t)
        for (int64_t i = 0; i < L; ++i)
          out[t * line + d * Lp + i] = mul * static_cast<acc>(p[i * st.axis + d * st.c + t * st.o2]);
    } else if (st.o2 == 1) {
      copy_transposed(p + d * st.c, st.axis, out + d * Lp, line, L, count, mul);
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

// Writes `count` line results held in [D][Lp] buffers to their strided places.
template <typename scalar_t, typename acc>
inline void scatter_group(const acc* buf, const Strides& st, int64_t count, int64_t L, int64_t Lp, int64_t D,
                          scalar_t* p) {
  const int64_t line = D * Lp;
  for (int64_t d = 0; d < D; ++d) {
    if (st.axis == 1) {
      for (int64_t t = 0; t < count; ++t) {
        const acc* src = buf + t * line + d * Lp;
        scalar_t* dst = p + d * st.c + t * st.o2;
        for (int64_t i = 0; i < L; ++i) dst[i] = static_cast<scalar_t>(src[i]);
      }
    } else if (st.axis <= st.o2) {
      for (int64_t t = 0; t < count; ++t)
        for (int64_t i = 0; i < L; ++i)
          p[i * st.axis + d * st.c + t * st.o2] = static_cast<scalar_t>(buf[t * line + d * Lp + i]);
    } else if (st.o2 == 1) {
      copy_transposed(buf + d * Lp, line, p + d * st.c, st.axis, count, L, acc(1));
    } else {
      for (int64_t i = 0; i < L; ++i) {
        scalar_t* dst = p + i * st.axis + d * st.c;
        for (int64_t t = 0; t < count; ++t) dst[t * st.o2] = static_cast<scalar_t>(buf[t * line + d * Lp + i]);
      }
    }
  }
}

// Logits of the N queries i0 .. i0+N-1 (QT: [D][Lp], scaled) against key j (kj = KT + j, so its channel d
// is kj[d * Lp]): s_ij of axial.h.
template <typename acc>
inline vec_t<acc> lane_logits(const acc* __restrict__ QT, int64_t Lp, const acc* __restrict__ kj, const Rel<acc>& rel,
                              int64_t D, int64_t i0, int64_t x0) {
  using V = vec_t<acc>;
  V s = splat<acc>(0);
  if (rel.q != nullptr) {
    // q . k + q . rel_q as two products, not q . (k + rel_q): for an infinite q_d and finite k_d, rel_q
    // the reference's inf * 2 + inf * -1 is NaN where inf * (2 - 1) would be inf.
    for (int64_t d = 0; d < D; ++d) {
      const V qd = load(QT + d * Lp + i0);
      s += qd * kj[d * Lp];
      s += qd * load(rel.q + d * rel.stride + x0);
    }
  } else {
    for (int64_t d = 0; d < D; ++d) s += load(QT + d * Lp + i0) * kj[d * Lp];
  }
  if (rel.k != nullptr) {
    for (int64_t d = 0; d < D; ++d) s += kj[d * Lp] * load(rel.k + d * rel.stride + x0);
  }
  return s;
}

// Dot product of a tile's query vectors with key j (b = KT + j: channel d at b[d * Lp]), in four partial
// sums (DC is a multiple of 4): a single accumulator would chain DC dependent FMAs, the longest path of the
// key loops.
template <typename acc, int DC>
inline vec_t<acc> dot_lanes(const vec_t<acc>* a, const acc* __restrict__ b, int64_t Lp) {
  using V = vec_t<acc>;
  V s0 = a[0] * b[0], s1 = a[1] * b[Lp], s2 = a[2] * b[2 * Lp], s3 = a[3] * b[3 * Lp];
  for (int d = 4; d < DC; d += 4) {
    s0 += a[d] * b[d * Lp];
    s1 += a[d + 1] * b[(d + 1) * Lp];
    s2 += a[d + 2] * b[(d + 2) * Lp];
    s3 += a[d + 3] * b[(d + 3) * Lp];
  }
  return (s0 + s1) + (s2 + s3);
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
      const V sj = dot_lanes<acc, DC>(qv, K + j0 + j, Lp);
      store(S + j * N, sj);
      bm = sj > bm ? sj : bm;
    }
    if (j0 == 0) {
      m = bm;
    } else {  // online_rescale of axial.h, per lane
      const V m_new = bm > m ? bm : m;
      const V corr = vrescale<acc>(m, m_new);
      l *= corr;
      for (int d = 0; d < DC; ++d) o[d] *= corr;
      m = m_new;
    }
    // The exps in a loop of their own (independent, so they pipeline), then the value sums.
    const V base = vbase<acc>(m);  // block_prob of axial.h
    for (int64_t j = 0; j < nb; ++j) {
      const V p = vexp(load(S + j * N) - base);
      l += p;
      store(S + j * N, p);
    }
    for (int64_t j = 0; j < nb; ++j) {
      const V p = load(S + j * N);
      const acc* vj = Vb + j0 + j;
      for (int d = 0; d < DC; ++d) o[d] += p * vj[d * Lp];
    }
  }
  const V inv = splat<acc>(1) / l;
  const V lse_v = vbase<acc>(m) + vlog(l);  // online_lse of axial.h
  const int64_t lanes = std::min<int64_t>(N, L - i0);
  for (int d = 0; d < DC; ++d) store(out_line + d * Lp + i0, o[d] * inv);
  for (int64_t t = 0; t < lanes; ++t) lse_line[i0 + t] = lse_v[t];
}

template <typename acc, int DC>
inline void backward_tile_fixed(const acc* __restrict__ QT, const acc* __restrict__ GT, int64_t Lp,
                                const acc* __restrict__ K, const acc* __restrict__ Vb, int64_t L, int64_t i0,
                                const acc* lse_l, const acc* delta, acc scale, acc* __restrict__ dKV,
                                acc* __restrict__ dq_line) {
  using V = vec_t<acc>;
  constexpr int N = VecT<acc>::N;
  V qv[DC], gv[DC], dq[DC];
  for (int d = 0; d < DC; ++d) {
    qv[d] = load(QT + d * Lp + i0);
    gv[d] = load(GT + d * Lp + i0);
    dq[d] = splat<acc>(0);
  }
  const V lse_v = load(lse_l + i0), delta_v = load(delta + i0);
  // Padding queries (lanes past L in the last tile) read q = g = 0, but their logit 0 * k_j is NaN for an
  // infinite k_j, and p * g = NaN * 0 would reach dk and dv: their p and ds are set to exactly 0.
  const bool masked = i0 + N > L;
  const auto valid = lane_ids<acc>() < splat(static_cast<acc>(L - i0));
  // p and ds of key j (prob_from_lse and logit_grad of axial.h).
  auto probs = [&](int64_t j, V& p, V& ds) {
    const V s = dot_lanes<acc, DC>(qv, K + j, Lp);
    const V dp = dot_lanes<acc, DC>(gv, Vb + j, Lp);
    p = vexp(s - lse_v);
    ds = p * (dp - delta_v);
    if (masked) {
      p = valid ? p : splat<acc>(0);
      ds = valid ? ds : splat<acc>(0);
    }
  };
  auto accumulate = [&](int64_t j, const V& p, const V& ds) {
    const acc* kj = K + j;
    acc* dkj = dKV + j * 2 * DC * N;
    acc* dvj = dkj + DC * N;
    for (int d = 0; d < DC; ++d) {
      dq[d] += ds * kj[d * Lp];
      store(dkj + d * N, load(dkj + d * N) + ds * qv[d]);
      store(dvj + d * N, load(dvj + d * N) + p * gv[d]);
    }
  };
  // Two keys per step: their logits and exps are independent, so one's latency hides the other's.
  int64_t j = 0;
  for (; j + 1 < L; j += 2) {
    V p0, ds0, p1, ds1;
    probs(j, p0, ds0);
    probs(j + 1, p1, ds1);
    accumulate(j, p0, ds0);
    accumulate(j + 1, p1, ds1);
  }
  if (j < L) {
    V p0, ds0;
    probs(j, p0, ds0);
    accumulate(j, p0, ds0);
  }
  for (int d = 0; d < DC; ++d) store(dq_line + d * Lp + i0, scale * dq[d]);
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
    std::vector<acc> QTg(kGroup * D * Lp), Kg(kGroup * D * Lp), Vg(kGroup * D * Lp), Og(kGroup * D * Lp);
    // Vector buffers as plain arrays of acc (std::allocator ignores the vectors' alignment): load/store.
    std::vector<acc> Sb(kKeyBlock * N), Ob(D * N);
    acc* S = Sb.data();
    acc* O = Ob.data();
    for (int64_t gi = g0; gi < g1; ++gi) {
      const Group grp = group_at(g, gi);
      gather_group(qp + g.base(grp.first, sq), sq, grp.count, L, Lp, D, scale, QTg.data());
      gather_group(kp + g.base(grp.first, sk), sk, grp.count, L, Lp, D, acc(1), Kg.data());
      gather_group(vp + g.base(grp.first, sv), sv, grp.count, L, Lp, D, acc(1), Vg.data());
      for (int64_t t_line = 0; t_line < grp.count; ++t_line) {
      const int64_t n = grp.first + t_line;
      const acc* QT = QTg.data() + t_line * D * Lp;
      const acc* K = Kg.data() + t_line * D * Lp;
      const acc* Vb = Vg.data() + t_line * D * Lp;
      acc* out_line = Og.data() + t_line * D * Lp;
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
            const V sj = lane_logits(QT, Lp, K + j0 + j, rel, D, i0, x0);
            store(S + j * N, sj);
            bm = sj > bm ? sj : bm;
          }
          if (j0 == 0) {
            m = bm;
          } else {
            const V m_new = bm > m ? bm : m;
            const V corr = vrescale<acc>(m, m_new);
            l *= corr;
            for (int64_t d = 0; d < D; ++d) store(O + d * N, load(O + d * N) * corr);
            m = m_new;
          }
          const V base = vbase<acc>(m);
          for (int64_t j = 0; j < nb; ++j) {
            const V p = vexp(load(S + j * N) - base);
            l += p;
            const acc* vj = Vb + j0 + j;
            if (rel.v != nullptr) {
              const int64_t x0 = L - 1 - (j0 + j) + i0;
              for (int64_t d = 0; d < D; ++d)
                store(O + d * N, load(O + d * N) + p * (vj[d * Lp] + load(rel.v + d * rel.stride + x0)));
            } else {
              for (int64_t d = 0; d < D; ++d) store(O + d * N, load(O + d * N) + p * vj[d * Lp]);
            }
          }
        }
        const V inv = splat<acc>(1) / l;
        const V lse_v = vbase<acc>(m) + vlog(l);
        const int64_t lanes = std::min<int64_t>(N, L - i0);
        for (int64_t d = 0; d < D; ++d) store(out_line + d * Lp + i0, load(O + d * N) * inv);
        for (int64_t t = 0; t < lanes; ++t) lsep[n * L + i0 + t] = lse_v[t];
      }
      }
      scatter_group(Og.data(), so, grp.count, L, Lp, D, outp + g.base(grp.first, so));
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
    const int64_t buf = kGroup * D * Lp;
    std::vector<acc> QTg(buf), GTg(buf), OTg(buf), Kg(buf), Vg(buf), dQg(buf), dKg(buf), dVg(buf), lse_l(Lp), delta(Lp);
    // Vector buffers as plain arrays of acc (std::allocator ignores the vectors' alignment): load/store.
    // Per key j, its dk lanes [D][N] and then its dv lanes: one buffer, so that a dk store and the next dv
    // load never sit a multiple of 4 KiB apart (two separate 8 KiB buffers did: 4K aliasing stalls).
    // Padding keys L .. Lp-1 stay zero (lane_sums reads N keys at a time).
    std::vector<acc> dKVb(2 * Lp * D * N), dQb(D * N);
    acc* dKV = dKVb.data();
    acc* dQ = dQb.data();
    for (int64_t c = c0; c < c1; ++c) {
      acc* drq = drel == nullptr ? nullptr : drel + (c * 3 + 0) * D * RS;
      acc* drk = drel == nullptr ? nullptr : drel + (c * 3 + 1) * D * RS;
      acc* drv = drel == nullptr ? nullptr : drel + (c * 3 + 2) * D * RS;
      for (int64_t gi = c * G_total / chunks; gi < (c + 1) * G_total / chunks; ++gi) {
        const Group grp = group_at(g, gi);
        gather_group(qp + g.base(grp.first, sq), sq, grp.count, L, Lp, D, scale, QTg.data());
        gather_group(gp + g.base(grp.first, sg), sg, grp.count, L, Lp, D, acc(1), GTg.data());
        gather_group(op + g.base(grp.first, so), so, grp.count, L, Lp, D, acc(1), OTg.data());
        gather_group(kp + g.base(grp.first, sk), sk, grp.count, L, Lp, D, acc(1), Kg.data());
        gather_group(vp + g.base(grp.first, sv), sv, grp.count, L, Lp, D, acc(1), Vg.data());
        for (int64_t t_line = 0; t_line < grp.count; ++t_line) {
        const int64_t n = grp.first + t_line;
        const acc* QT = QTg.data() + t_line * D * Lp;
        const acc* GT = GTg.data() + t_line * D * Lp;
        const acc* OT = OTg.data() + t_line * D * Lp;
        const acc* K = Kg.data() + t_line * D * Lp;
        const acc* Vb = Vg.data() + t_line * D * Lp;
        acc* dq_line = dQg.data() + t_line * D * Lp;
        acc* dk_line = dKg.data() + t_line * D * Lp;
        acc* dv_line = dVg.data() + t_line * D * Lp;
        // delta_i = g_i . out_i; padding lanes get lse = delta = 0 and g = 0 (and their p, ds are masked).
        std::fill(delta.begin(), delta.end(), static_cast<acc>(0));
        for (int64_t d = 0; d < D; ++d)
          for (int64_t i = 0; i < Lp; ++i) delta[i] += GT[d * Lp + i] * OT[d * Lp + i];
        for (int64_t i = 0; i < Lp; ++i) lse_l[i] = i < L ? lsep[n * L + i] : 0;
        std::fill(dKVb.begin(), dKVb.end(), static_cast<acc>(0));
        for (int64_t i0 = 0; i0 < L; i0 += N) {
          if constexpr (DC > 0) {
            if (drel == nullptr && rel.q == nullptr && rel.k == nullptr && rel.v == nullptr) {
              backward_tile_fixed<acc, DC>(QT, GT, Lp, K, Vb, L, i0, lse_l.data(), delta.data(), scale, dKV,
                                           dq_line);
              continue;
            }
          }
          const V lse_v = load(lse_l.data() + i0), delta_v = load(delta.data() + i0);
          // Padding queries (see backward_tile_fixed): p, ds and every product they enter, exactly 0.
          const bool masked = i0 + N > L;
          const auto valid = lane_ids<acc>() < splat(static_cast<acc>(L - i0));
          const V zero = splat<acc>(0);
          std::fill(dQb.begin(), dQb.end(), static_cast<acc>(0));
          for (int64_t j = 0; j < L; ++j) {
            const int64_t x0 = L - 1 - j + i0;
            const acc* kj = K + j;
            const acc* vj = Vb + j;
            const V s = lane_logits(QT, Lp, kj, rel, D, i0, x0);
            V p = vexp(s - lse_v);  // prob_from_lse of axial.h
            if (masked) p = valid ? p : zero;
            V dp = splat<acc>(0);
            if (rel.v != nullptr) {
              for (int64_t d = 0; d < D; ++d) dp += load(GT + d * Lp + i0) * (vj[d * Lp] + load(rel.v + d * RS + x0));
            } else {
              for (int64_t d = 0; d < D; ++d) dp += load(GT + d * Lp + i0) * vj[d * Lp];
            }
            V ds = p * (dp - delta_v);  // logit_grad of axial.h
            if (masked) ds = valid ? ds : zero;
            acc* dkj = dKV + j * 2 * D * N;
            acc* dvj = dkj + D * N;
            for (int64_t d = 0; d < D; ++d) {
              const V qd = load(QT + d * Lp + i0);
              const V gd = load(GT + d * Lp + i0);
              if (rel.q != nullptr) {
                // ds * k + ds * rel_q, two products like the reference's (ds may be infinite; see lane_logits)
                store(dQ + d * N, load(dQ + d * N) + ds * kj[d * Lp] + ds * load(rel.q + d * RS + x0));
              } else {
                store(dQ + d * N, load(dQ + d * N) + ds * kj[d * Lp]);
              }
              if (rel.k != nullptr) {
                // ds * q + ds * rel_k, two products (see dq); masked: 0 * an infinite rel_k row in padding lanes
                V t = ds * qd + ds * load(rel.k + d * RS + x0);
                if (masked) t = valid ? t : zero;
                store(dkj + d * N, load(dkj + d * N) + t);
              } else {
                store(dkj + d * N, load(dkj + d * N) + ds * qd);
              }
              store(dvj + d * N, load(dvj + d * N) + p * gd);
              if (need_drq) store(drq + d * RS + x0, load(drq + d * RS + x0) + ds * qd);
              if (need_drk) {
                V t = ds * kj[d * Lp];  // 0 * an infinite k_j in padding lanes
                if (masked) t = valid ? t : zero;
                store(drk + d * RS + x0, load(drk + d * RS + x0) + t);
              }
              if (need_drv) store(drv + d * RS + x0, load(drv + d * RS + x0) + p * gd);
            }
          }
          for (int64_t d = 0; d < D; ++d) store(dq_line + d * Lp + i0, scale * load(dQ + d * N));
        }
        // dk_j[d] and dv_j[d]: the lanes of key j's partial sums, N keys at a time.
        for (int64_t j0 = 0; j0 < Lp; j0 += N) {
          for (int64_t d = 0; d < D; ++d) {
            store(dk_line + d * Lp + j0, lane_sums<acc>(dKV + (2 * j0 * D + d) * N, 2 * D * N));
            store(dv_line + d * Lp + j0, lane_sums<acc>(dKV + ((2 * j0 + 1) * D + d) * N, 2 * D * N));
          }
        }
        }
        scatter_group(dQg.data(), sdq, grp.count, L, Lp, D, dqp + g.base(grp.first, sdq));
        scatter_group(dKg.data(), sdk, grp.count, L, Lp, D, dkp + g.base(grp.first, sdk));
        scatter_group(dVg.data(), sdv, grp.count, L, Lp, D, dvp + g.base(grp.first, sdv));
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
