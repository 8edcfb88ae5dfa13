// CPU kernels of nas3d::axial_attention, compiled twice: for the baseline x86-64/ARM ISA
// (axial_cpu.cpp, NAS3D_AXIAL_ISA = generic) and for AVX2 + FMA (axial_cpu_avx2.cpp, NAS3D_AXIAL_ISA =
// avx2); axial_cpu.cpp picks one at run time. No include guard on purpose; each includer defines
// NAS3D_AXIAL_ISA and includes every header below before it (so only this file's code takes the ISA).
//
// Work split: lines (batch x head x the two other axes) in parallel. Per line, q (times the scale), k and
// v are gathered once from their strided storage into float32 (float64) buffers, k and v transposed to
// [D][L] so that the inner loops run over contiguous keys j and vectorise. Per query, keys are visited
// in blocks of kKeyBlock with the online softmax of axial.h: no L x L matrix exists, only one block of
// logits. The backward recomputes p from the saved log-sum-exp.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "axial.h"
#include "axial_args.h"

namespace nas3d {
namespace axial {
namespace NAS3D_AXIAL_ISA {

// exp for float logits <= 0 (s - max), branch-free so that loops over it vectorise: Cody-Waite range
// reduction x = n ln2 + f, |f| <= ln2 / 2, Cephes' degree-7 polynomial (relative error ~1e-7 in
// float32), 2^n built in the exponent bits. Inputs below -87 give ~1e-38 instead of 0 (negligible in a
// softmax whose largest term is 1); NaN stays NaN.
inline float cpu_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float f = x - n * 0.693359375f;
  f = f + n * 2.12194440e-4f;
  const float z = f * f;
  float y = 1.9875691500e-4f;
  y = y * f + 1.3981999507e-3f;
  y = y * f + 8.3334519073e-3f;
  y = y * f + 4.1665795894e-2f;
  y = y * f + 1.6666665459e-1f;
  y = y * f + 5.0000001201e-1f;
  y = y * z + f + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return y * two_n;
}
inline double cpu_exp(double x) { return std::exp(x); }

constexpr int64_t kKeyBlock = 128;

// Relative embeddings in the accumulation type, prepared once per call (they are shared by every line).
template <typename acc>
struct Rel {
  const acc* qT = nullptr;  // rel_q transposed [D][R]
  const acc* kT = nullptr;  // rel_k * scale, transposed [D][R]
  const acc* v = nullptr;   // rel_v [R][D] (forward)
  const acc* vT = nullptr;  // rel_v transposed [D][R] (backward)
};

// Logits of query i (scaled, qi) against keys j0 .. j0 + nb: s[j] for one block.
template <typename acc>
inline void block_logits(const acc* __restrict__ qi, const acc* __restrict__ KT, const Rel<acc>& rel, int64_t L,
                         int64_t D, int64_t R, int64_t i, int64_t j0, int64_t nb, acc* __restrict__ s) {
  const int64_t r0 = rel_index(i, j0, L);
  for (int64_t j = 0; j < nb; ++j) s[j] = 0;
  for (int64_t d = 0; d < D; ++d) {
    const acc qd = qi[d];
    const acc* __restrict__ kt = KT + d * L + j0;
    if (rel.qT != nullptr) {
      const acc* __restrict__ rq = rel.qT + d * R + r0;
      for (int64_t j = 0; j < nb; ++j) s[j] += qd * (kt[j] + rq[j]);
    } else {
      for (int64_t j = 0; j < nb; ++j) s[j] += qd * kt[j];
    }
  }
  if (rel.kT != nullptr) {
    for (int64_t d = 0; d < D; ++d) {
      const acc* __restrict__ kt = KT + d * L + j0;
      const acc* __restrict__ rk = rel.kT + d * R + r0;
      for (int64_t j = 0; j < nb; ++j) s[j] += kt[j] * rk[j];
    }
  }
}

template <typename scalar_t, typename acc>
inline void gather_rows(const scalar_t* p, int64_t s_axis, int64_t s_c, int64_t L, int64_t D, acc mul, acc* out) {
  for (int64_t i = 0; i < L; ++i)
    for (int64_t d = 0; d < D; ++d) out[i * D + d] = mul * static_cast<acc>(p[i * s_axis + d * s_c]);
}

template <typename scalar_t, typename acc>
inline void gather_cols(const scalar_t* p, int64_t s_axis, int64_t s_c, int64_t L, int64_t D, acc* out) {
  for (int64_t d = 0; d < D; ++d)
    for (int64_t j = 0; j < L; ++j) out[d * L + j] = static_cast<acc>(p[j * s_axis + d * s_c]);
}

// Lines per parallel task: enough work (~L^2 D multiply-adds each) to amortise the task.
inline int64_t line_grain(const Geometry& g) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, g.L * g.L * g.D)); }

template <typename scalar_t>
void forward_typed(const Geometry& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const Rel<acc_t<scalar_t>>& rel, double scale_d, at::Tensor& out, at::Tensor& lse) {
  using acc = acc_t<scalar_t>;
  const int64_t L = g.L, D = g.D, R = g.R();
  const Strides sq(q, g.axis, g.d1, g.d2), sk(k, g.axis, g.d1, g.d2), sv(v, g.axis, g.d1, g.d2);
  const Strides so(out, g.axis, g.d1, g.d2);
  const scalar_t* qp = q.const_data_ptr<scalar_t>();
  const scalar_t* kp = k.const_data_ptr<scalar_t>();
  const scalar_t* vp = v.const_data_ptr<scalar_t>();
  scalar_t* outp = out.mutable_data_ptr<scalar_t>();
  acc* lsep = lse.mutable_data_ptr<acc>();
  const acc scale = static_cast<acc>(scale_d);
  at::parallel_for(0, g.lines(), line_grain(g), [&](int64_t n0, int64_t n1) {
    std::vector<acc> Q(L * D), KT(D * L), V(L * D), sbuf(kKeyBlock), obuf(D);
    acc* __restrict__ s = sbuf.data();
    acc* __restrict__ o = obuf.data();
    for (int64_t n = n0; n < n1; ++n) {
      gather_rows(qp + g.base(n, sq), sq.axis, sq.c, L, D, scale, Q.data());
      gather_cols(kp + g.base(n, sk), sk.axis, sk.c, L, D, KT.data());
      gather_rows(vp + g.base(n, sv), sv.axis, sv.c, L, D, static_cast<acc>(1), V.data());
      scalar_t* out_line = outp + g.base(n, so);
      for (int64_t i = 0; i < L; ++i) {
        const acc* qi = Q.data() + i * D;
        OnlineSoftmax<acc> state{0, 0};
        for (int64_t d = 0; d < D; ++d) o[d] = 0;
        for (int64_t j0 = 0; j0 < L; j0 += kKeyBlock) {
          const int64_t nb = std::min(kKeyBlock, L - j0);
          block_logits(qi, KT.data(), rel, L, D, R, i, j0, nb, s);
          acc bm = -std::numeric_limits<acc>::infinity();
#pragma omp simd reduction(max : bm)
          for (int64_t j = 0; j < nb; ++j) bm = s[j] > bm ? s[j] : bm;
          const acc corr = online_rescale(state, bm, j0 == 0);
          if (j0 > 0)
            for (int64_t d = 0; d < D; ++d) o[d] *= corr;
          const acc m = state.m;
          for (int64_t j = 0; j < nb; ++j) s[j] = cpu_exp(s[j] - m);
          acc sum = 0;
#pragma omp simd reduction(+ : sum)
          for (int64_t j = 0; j < nb; ++j) sum += s[j];
          state.l += sum;
          for (int64_t j = 0; j < nb; ++j) {
            const acc pj = s[j];
            const acc* __restrict__ vj = V.data() + (j0 + j) * D;
            for (int64_t d = 0; d < D; ++d) o[d] += pj * vj[d];
          }
          if (rel.v != nullptr) {
            const int64_t r0 = rel_index(i, j0, L);
            for (int64_t j = 0; j < nb; ++j) {
              const acc pj = s[j];
              const acc* __restrict__ rv = rel.v + (r0 + j) * D;
              for (int64_t d = 0; d < D; ++d) o[d] += pj * rv[d];
            }
          }
        }
        const acc inv = static_cast<acc>(1) / state.l;
        for (int64_t d = 0; d < D; ++d) out_line[i * so.axis + d * so.c] = static_cast<scalar_t>(o[d] * inv);
        lsep[n * L + i] = online_lse(state);
      }
    }
  });
}

// Relative-embedding gradients: one [3][D][R] accumulator per chunk of lines (chunks fixed by the shapes,
// not by the thread count, and summed in order afterwards: the result is deterministic).
template <typename scalar_t>
void backward_typed(const Geometry& g, const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const Rel<acc_t<scalar_t>>& rel,
                    double scale_d, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, acc_t<scalar_t>* drel,
                    int64_t chunks, bool need_drq, bool need_drk, bool need_drv) {
  using acc = acc_t<scalar_t>;
  const int64_t L = g.L, D = g.D, R = g.R(), N = g.lines();
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
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<acc> Q(L * D), KT(D * L), VT(D * L), G(L * D), O(L * D), dKT(D * L), dVT(D * L), delta(L);
    std::vector<acc> sbuf(kKeyBlock), pbuf(kKeyBlock), dqbuf(D);
    acc* __restrict__ s = sbuf.data();
    acc* __restrict__ p = pbuf.data();
    acc* __restrict__ dqi = dqbuf.data();
    for (int64_t c = c0; c < c1; ++c) {
      acc* drqT = drel == nullptr ? nullptr : drel + (c * 3 + 0) * D * R;
      acc* drkT = drel == nullptr ? nullptr : drel + (c * 3 + 1) * D * R;
      acc* drvT = drel == nullptr ? nullptr : drel + (c * 3 + 2) * D * R;
      for (int64_t n = c * N / chunks; n < (c + 1) * N / chunks; ++n) {
        gather_rows(qp + g.base(n, sq), sq.axis, sq.c, L, D, scale, Q.data());
        gather_cols(kp + g.base(n, sk), sk.axis, sk.c, L, D, KT.data());
        gather_cols(vp + g.base(n, sv), sv.axis, sv.c, L, D, VT.data());
        gather_rows(gp + g.base(n, sg), sg.axis, sg.c, L, D, static_cast<acc>(1), G.data());
        gather_rows(op + g.base(n, so), so.axis, so.c, L, D, static_cast<acc>(1), O.data());
        for (int64_t i = 0; i < L; ++i) {
          acc t = 0;
          for (int64_t d = 0; d < D; ++d) t += G[i * D + d] * O[i * D + d];
          delta[i] = t;
        }
        std::fill(dKT.begin(), dKT.end(), static_cast<acc>(0));
        std::fill(dVT.begin(), dVT.end(), static_cast<acc>(0));
        for (int64_t i = 0; i < L; ++i) {
          const acc* __restrict__ qi = Q.data() + i * D;
          const acc* __restrict__ gi = G.data() + i * D;
          const acc lse_i = lsep[n * L + i];
          const acc delta_i = delta[i];
          for (int64_t d = 0; d < D; ++d) dqi[d] = 0;
          for (int64_t j0 = 0; j0 < L; j0 += kKeyBlock) {
            const int64_t nb = std::min(kKeyBlock, L - j0);
            const int64_t r0 = rel_index(i, j0, L);
            block_logits(qi, KT.data(), rel, L, D, R, i, j0, nb, s);
            for (int64_t j = 0; j < nb; ++j) p[j] = cpu_exp(s[j] - lse_i);
            // dp into s, then ds into s.
            for (int64_t j = 0; j < nb; ++j) s[j] = 0;
            for (int64_t d = 0; d < D; ++d) {
              const acc gd = gi[d];
              const acc* __restrict__ vt = VT.data() + d * L + j0;
              if (rel.vT != nullptr) {
                const acc* __restrict__ rv = rel.vT + d * R + r0;
                for (int64_t j = 0; j < nb; ++j) s[j] += gd * (vt[j] + rv[j]);
              } else {
                for (int64_t j = 0; j < nb; ++j) s[j] += gd * vt[j];
              }
            }
            for (int64_t j = 0; j < nb; ++j) s[j] = logit_grad(p[j], s[j], delta_i);
            for (int64_t d = 0; d < D; ++d) {
              const acc* __restrict__ kt = KT.data() + d * L + j0;
              acc t = 0;
              if (rel.qT != nullptr) {
                const acc* __restrict__ rq = rel.qT + d * R + r0;
#pragma omp simd reduction(+ : t)
                for (int64_t j = 0; j < nb; ++j) t += s[j] * (kt[j] + rq[j]);
              } else {
#pragma omp simd reduction(+ : t)
                for (int64_t j = 0; j < nb; ++j) t += s[j] * kt[j];
              }
              dqi[d] += t;
              const acc qd = qi[d];
              const acc gd = gi[d];
              acc* __restrict__ dkt = dKT.data() + d * L + j0;
              acc* __restrict__ dvt = dVT.data() + d * L + j0;
              if (rel.kT != nullptr) {
                const acc* __restrict__ rk = rel.kT + d * R + r0;
                for (int64_t j = 0; j < nb; ++j) dkt[j] += s[j] * (qd + rk[j]);
              } else {
                for (int64_t j = 0; j < nb; ++j) dkt[j] += s[j] * qd;
              }
              for (int64_t j = 0; j < nb; ++j) dvt[j] += gd * p[j];
              if (need_drq) {
                acc* __restrict__ a = drqT + d * R + r0;
                for (int64_t j = 0; j < nb; ++j) a[j] += s[j] * qd;
              }
              if (need_drk) {
                acc* __restrict__ a = drkT + d * R + r0;
                for (int64_t j = 0; j < nb; ++j) a[j] += s[j] * kt[j];
              }
              if (need_drv) {
                acc* __restrict__ a = drvT + d * R + r0;
                for (int64_t j = 0; j < nb; ++j) a[j] += gd * p[j];
              }
            }
          }
          scalar_t* dq_line = dqp + g.base(n, sdq);
          for (int64_t d = 0; d < D; ++d) dq_line[i * sdq.axis + d * sdq.c] = static_cast<scalar_t>(scale * dqi[d]);
        }
        scalar_t* dk_line = dkp + g.base(n, sdk);
        scalar_t* dv_line = dvp + g.base(n, sdv);
        for (int64_t d = 0; d < D; ++d) {
          for (int64_t j = 0; j < L; ++j) {
            dk_line[j * sdk.axis + d * sdk.c] = static_cast<scalar_t>(dKT[d * L + j]);
            dv_line[j * sdv.axis + d * sdv.c] = static_cast<scalar_t>(dVT[d * L + j]);
          }
        }
      }
    }
  });
}

// Entry points of this ISA (dtype dispatch inside, so the dispatched lambdas take the ISA too).
inline void forward(const Geometry& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& rq, const at::Tensor& rk, const at::Tensor& rv, double scale, at::Tensor& out,
                    at::Tensor& lse) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "axial_attention_cpu", [&] {
    using acc = acc_t<scalar_t>;
    Rel<acc> rel;
    rel.qT = rq.defined() ? rq.const_data_ptr<acc>() : nullptr;
    rel.kT = rk.defined() ? rk.const_data_ptr<acc>() : nullptr;
    rel.v = rv.defined() ? rv.const_data_ptr<acc>() : nullptr;
    forward_typed<scalar_t>(g, q, k, v, rel, scale, out, lse);
  });
}

inline void backward(const Geometry& g, const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& rq,
                     const at::Tensor& rk, const at::Tensor& rvT, double scale, at::Tensor& dq, at::Tensor& dk,
                     at::Tensor& dv, at::Tensor& drel, int64_t chunks, bool need_drq, bool need_drk, bool need_drv) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "axial_attention_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    Rel<acc> rel;
    rel.qT = rq.defined() ? rq.const_data_ptr<acc>() : nullptr;
    rel.kT = rk.defined() ? rk.const_data_ptr<acc>() : nullptr;
    rel.vT = rvT.defined() ? rvT.const_data_ptr<acc>() : nullptr;
    acc* drelp = drel.defined() ? drel.mutable_data_ptr<acc>() : nullptr;
    backward_typed<scalar_t>(g, grad, q, k, v, out, lse, rel, scale, dq, dk, dv, drelp, chunks, need_drq, need_drk,
                             need_drv);
  });
}

}  // namespace NAS3D_AXIAL_ISA
}  // namespace axial
}  // namespace nas3d
