// CUDA kernels of nas3d::axial_attention (the V100 / pre-sm_80 path; sm_80+ GPUs default to Triton).
// One thread per query (forward, dq) or per key (dk, dv); keys (queries) stream through shared memory in
// tiles of kTile rows converted to the accumulation type. The per-element math is axial.h's, shared with
// the CPU kernels: online softmax over each tile (online_rescale), p recomputed from the saved
// log-sum-exp (prob_from_lse), ds = logit_grad(p, dp, delta). Head dims up to 128 (register arrays of
// kMaxD), 64-bit offsets, valid for sm_70 and newer. The relative-embedding gradients sum over every line
// with float atomics (their order, hence their last bits, may vary run to run on the GPU).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <optional>

#include "axial.h"
#include "axial_args.h"

namespace nas3d {
namespace axial {
namespace {

constexpr int kThreads = 64;  // queries (keys) per block
constexpr int kTile = 32;     // keys (queries) per shared-memory tile
constexpr int kMaxD = 128;

struct LineStrides {
  Strides q, k, v, o;  // o: out (forward) or grad_out (backward)
};

__device__ __forceinline__ int64_t line_base(const Geometry& g, int64_t n, const Strides& st) {
  const int64_t o2 = n % g.S2;
  int64_t rest = n / g.S2;
  const int64_t o1 = rest % g.S1;
  rest /= g.S1;
  const int64_t h = rest % g.H;
  const int64_t b = rest / g.H;
  return b * st.b + h * g.D * st.c + o1 * st.o1 + o2 * st.o2;
}

// s_ij of axial.h for query row qv (already scaled) and key row kr (shared memory).
template <typename acc>
__device__ __forceinline__ acc logit(const acc* qv, const acc* kr, const acc* rq, const acc* rk, int64_t r, int64_t D,
                                     acc scale) {
  // q . k + q . rel_q as separate products, not q . (k + rel_q): the IEEE rule of axial.h (for an
  // infinite q_d the reference's inf * 2 + inf * -1 is NaN, inf * (2 - 1) would be inf).
  acc s = 0;
  for (int64_t d = 0; d < D; ++d) {
    s += qv[d] * kr[d];
    if (rq != nullptr) s += qv[d] * rq[r * D + d];
  }
  if (rk != nullptr) {
    acc t = 0;
    for (int64_t d = 0; d < D; ++d) t += kr[d] * rk[r * D + d];
    s += scale * t;
  }
  return s;
}

template <typename scalar_t>
__device__ __forceinline__ void load_tile(acc_t<scalar_t>* tile, const scalar_t* p, int64_t base, const Strides& st,
                                          int64_t first, int64_t count, int64_t D) {
  for (int64_t e = threadIdx.x; e < count * D; e += blockDim.x) {
    const int64_t row = e / D, d = e % D;
    tile[row * D + d] = static_cast<acc_t<scalar_t>>(p[base + (first + row) * st.axis + d * st.c]);
  }
}

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                               const scalar_t* __restrict__ v, const acc_t<scalar_t>* rq, const acc_t<scalar_t>* rk,
                               const acc_t<scalar_t>* rv, scalar_t* __restrict__ out, acc_t<scalar_t>* __restrict__ lse,
                               Geometry g, LineStrides st, acc_t<scalar_t> scale) {
  using acc = acc_t<scalar_t>;
  extern __shared__ unsigned char smem_raw[];
  acc* ks = reinterpret_cast<acc*>(smem_raw);
  acc* vs = ks + kTile * g.D;
  const int64_t n = blockIdx.x;
  const int64_t i = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t L = g.L, D = g.D;
  const int64_t qb = line_base(g, n, st.q), kb = line_base(g, n, st.k), vb = line_base(g, n, st.v);
  acc qv[kMaxD], o[kMaxD];
  if (i < L)
    for (int64_t d = 0; d < D; ++d) qv[d] = scale * static_cast<acc>(q[qb + i * st.q.axis + d * st.q.c]);
  for (int64_t d = 0; d < D; ++d) o[d] = 0;
  OnlineSoftmax<acc> state{0, 0};
  for (int64_t j0 = 0; j0 < L; j0 += kTile) {
    const int64_t nb = min(static_cast<int64_t>(kTile), L - j0);
    __syncthreads();
    load_tile(ks, k, kb, st.k, j0, nb, D);
    load_tile(vs, v, vb, st.v, j0, nb, D);
    __syncthreads();
    if (i >= L) continue;
    acc s[kTile];
    acc bm = -std::numeric_limits<acc>::infinity();
    for (int64_t jj = 0; jj < nb; ++jj) {
      s[jj] = logit(qv, ks + jj * D, rq, rk, rel_index(i, j0 + jj, L), D, scale);
      bm = s[jj] > bm ? s[jj] : bm;
    }
    const acc corr = online_rescale(state, bm, j0 == 0);
    for (int64_t d = 0; d < D; ++d) o[d] *= corr;
    for (int64_t jj = 0; jj < nb; ++jj) {
      const acc p = block_prob(s[jj], state.m);
      state.l += p;
      const int64_t r = rel_index(i, j0 + jj, L);
      for (int64_t d = 0; d < D; ++d) o[d] += p * (vs[jj * D + d] + (rv != nullptr ? rv[r * D + d] : acc(0)));
    }
  }
  if (i >= L) return;
  const int64_t ob = line_base(g, n, st.o);
  for (int64_t d = 0; d < D; ++d) out[ob + i * st.o.axis + d * st.o.c] = static_cast<scalar_t>(o[d] / state.l);
  lse[n * L + i] = online_lse(state);
}

// dq per query thread; writes delta_i = g_i . out_i for the dk/dv kernel; relative gradients by atomics.
template <typename scalar_t>
__global__ void dq_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                          const scalar_t* __restrict__ v, const scalar_t* __restrict__ grad,
                          const scalar_t* __restrict__ out, Strides s_out, const acc_t<scalar_t>* rq,
                          const acc_t<scalar_t>* rk, const acc_t<scalar_t>* rv, const acc_t<scalar_t>* __restrict__ lse,
                          acc_t<scalar_t>* __restrict__ delta, scalar_t* __restrict__ dq, Strides s_dq,
                          acc_t<scalar_t>* drq, acc_t<scalar_t>* drk, acc_t<scalar_t>* drv, Geometry g, LineStrides st,
                          acc_t<scalar_t> scale) {
  using acc = acc_t<scalar_t>;
  extern __shared__ unsigned char smem_raw[];
  acc* ks = reinterpret_cast<acc*>(smem_raw);
  acc* vs = ks + kTile * g.D;
  const int64_t n = blockIdx.x;
  const int64_t i = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t L = g.L, D = g.D;
  const int64_t qb = line_base(g, n, st.q), kb = line_base(g, n, st.k), vb = line_base(g, n, st.v);
  const int64_t gb = line_base(g, n, st.o), ob = line_base(g, n, s_out);
  acc qv[kMaxD], gv[kMaxD], dqv[kMaxD];
  acc lse_i = 0, delta_i = 0;
  if (i < L) {
    for (int64_t d = 0; d < D; ++d) {
      qv[d] = scale * static_cast<acc>(q[qb + i * st.q.axis + d * st.q.c]);
      gv[d] = static_cast<acc>(grad[gb + i * st.o.axis + d * st.o.c]);
      delta_i += gv[d] * static_cast<acc>(out[ob + i * s_out.axis + d * s_out.c]);
      dqv[d] = 0;
    }
    lse_i = lse[n * L + i];
    delta[n * L + i] = delta_i;
  }
  for (int64_t j0 = 0; j0 < L; j0 += kTile) {
    const int64_t nb = min(static_cast<int64_t>(kTile), L - j0);
    __syncthreads();
    load_tile(ks, k, kb, st.k, j0, nb, D);
    load_tile(vs, v, vb, st.v, j0, nb, D);
    __syncthreads();
    if (i >= L) continue;
    for (int64_t jj = 0; jj < nb; ++jj) {
      const int64_t r = rel_index(i, j0 + jj, L);
      const acc* kr = ks + jj * D;
      const acc p = prob_from_lse(logit(qv, kr, rq, rk, r, D, scale), lse_i);
      acc dp = 0;
      for (int64_t d = 0; d < D; ++d) dp += gv[d] * (vs[jj * D + d] + (rv != nullptr ? rv[r * D + d] : acc(0)));
      const acc ds = logit_grad(p, dp, delta_i);
      for (int64_t d = 0; d < D; ++d) {
        dqv[d] += ds * kr[d];  // ds * k + ds * rel_q, two products (ds may be infinite; see logit)
        if (rq != nullptr) dqv[d] += ds * rq[r * D + d];
        if (drq != nullptr) atomicAdd(drq + r * D + d, ds * qv[d]);
        if (drk != nullptr) atomicAdd(drk + r * D + d, scale * ds * kr[d]);
        if (drv != nullptr) atomicAdd(drv + r * D + d, p * gv[d]);
      }
    }
  }
  if (i >= L) return;
  const int64_t db = line_base(g, n, s_dq);
  for (int64_t d = 0; d < D; ++d) dq[db + i * s_dq.axis + d * s_dq.c] = static_cast<scalar_t>(scale * dqv[d]);
}

// dk, dv per key thread; queries (scaled q, grad, lse, delta) stream through shared memory.
template <typename scalar_t>
__global__ void dkdv_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                            const scalar_t* __restrict__ v, const scalar_t* __restrict__ grad,
                            const acc_t<scalar_t>* rq, const acc_t<scalar_t>* rk, const acc_t<scalar_t>* rv,
                            const acc_t<scalar_t>* __restrict__ lse, const acc_t<scalar_t>* __restrict__ delta,
                            scalar_t* __restrict__ dk, scalar_t* __restrict__ dv, Strides s_d, Geometry g,
                            LineStrides st, acc_t<scalar_t> scale) {
  using acc = acc_t<scalar_t>;
  extern __shared__ unsigned char smem_raw[];
  acc* qs = reinterpret_cast<acc*>(smem_raw);
  acc* gs = qs + kTile * g.D;
  acc* ls = gs + kTile * g.D;
  acc* ds_delta = ls + kTile;
  const int64_t n = blockIdx.x;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t L = g.L, D = g.D;
  const int64_t qb = line_base(g, n, st.q), kb = line_base(g, n, st.k), vb = line_base(g, n, st.v);
  const int64_t gb = line_base(g, n, st.o);
  acc kv[kMaxD], vv[kMaxD], dkv[kMaxD], dvv[kMaxD];
  if (j < L)
    for (int64_t d = 0; d < D; ++d) {
      kv[d] = static_cast<acc>(k[kb + j * st.k.axis + d * st.k.c]);
      vv[d] = static_cast<acc>(v[vb + j * st.v.axis + d * st.v.c]);
      dkv[d] = 0;
      dvv[d] = 0;
    }
  for (int64_t i0 = 0; i0 < L; i0 += kTile) {
    const int64_t nb = min(static_cast<int64_t>(kTile), L - i0);
    __syncthreads();
    for (int64_t e = threadIdx.x; e < nb * D; e += blockDim.x) {
      const int64_t row = e / D, d = e % D;
      qs[e] = scale * static_cast<acc>(q[qb + (i0 + row) * st.q.axis + d * st.q.c]);
      gs[e] = static_cast<acc>(grad[gb + (i0 + row) * st.o.axis + d * st.o.c]);
    }
    for (int64_t e = threadIdx.x; e < nb; e += blockDim.x) {
      ls[e] = lse[n * L + i0 + e];
      ds_delta[e] = delta[n * L + i0 + e];
    }
    __syncthreads();
    if (j >= L) continue;
    for (int64_t ii = 0; ii < nb; ++ii) {
      const int64_t r = rel_index(i0 + ii, j, L);
      const acc* qr = qs + ii * D;
      const acc* gr = gs + ii * D;
      const acc p = prob_from_lse(logit(qr, kv, rq, rk, r, D, scale), ls[ii]);
      acc dp = 0;
      for (int64_t d = 0; d < D; ++d) dp += gr[d] * (vv[d] + (rv != nullptr ? rv[r * D + d] : acc(0)));
      const acc ds = logit_grad(p, dp, ds_delta[ii]);
      for (int64_t d = 0; d < D; ++d) {
        dkv[d] += ds * qr[d];  // ds * q + ds * rel_k, two products (see dq_kernel)
        if (rk != nullptr) dkv[d] += ds * (scale * rk[r * D + d]);
        dvv[d] += p * gr[d];
      }
    }
  }
  if (j >= L) return;
  const int64_t db = line_base(g, n, s_d);
  for (int64_t d = 0; d < D; ++d) {
    dk[db + j * s_d.axis + d * s_d.c] = static_cast<scalar_t>(dkv[d]);
    dv[db + j * s_d.axis + d * s_d.c] = static_cast<scalar_t>(dvv[d]);
  }
}

at::Tensor rel_table(const std::optional<at::Tensor>& rel, at::ScalarType dtype) {
  return rel.has_value() ? rel->to(dtype).contiguous() : at::Tensor();
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

template <typename T>
T* mut_or_null(const at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
}

void check_head_dim(const Geometry& g) {
  TORCH_CHECK(g.D <= kMaxD, "axial_attention (cuda backend): head_dim must be <= ", kMaxD, ", got ", g.D,
              "; use more heads, or the triton backend on sm_80+ GPUs");
}

std::tuple<at::Tensor, at::Tensor> axial_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                        int64_t axis, int64_t num_heads, double scale,
                                                        const std::optional<at::Tensor>& rel_q,
                                                        const std::optional<at::Tensor>& rel_k,
                                                        const std::optional<at::Tensor>& rel_v) {
  check_args(q, k, v, axis, num_heads, rel_q, rel_k, rel_v);
  const c10::cuda::CUDAGuard guard(q.device());
  const Geometry g = make_geometry(q, axis, num_heads);
  check_head_dim(g);
  const auto dt = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty({g.B, g.H, g.S1, g.S2, g.L}, q.options().dtype(dt));
  if (q.numel() == 0) return {out, lse};
  const at::Tensor rq = rel_table(rel_q, dt), rk = rel_table(rel_k, dt), rv = rel_table(rel_v, dt);
  LineStrides st{Strides(q, axis, g.d1, g.d2), Strides(k, axis, g.d1, g.d2), Strides(v, axis, g.d1, g.d2),
                 Strides(out, axis, g.d1, g.d2)};
  const dim3 grid(static_cast<unsigned int>(g.lines()), static_cast<unsigned int>((g.L + kThreads - 1) / kThreads));
  TORCH_CHECK(g.lines() < (int64_t{1} << 31), "axial_attention (cuda backend): too many lines (", g.lines(), ")");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "axial_attention_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const size_t smem = 2 * kTile * g.D * sizeof(acc);
    forward_kernel<scalar_t><<<grid, kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
        q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), ptr_or_null<acc>(rq),
        ptr_or_null<acc>(rk), ptr_or_null<acc>(rv), out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<acc>(), g, st,
        static_cast<acc>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> axial_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, int64_t axis, int64_t num_heads, double scale, const std::optional<at::Tensor>& rel_q,
    const std::optional<at::Tensor>& rel_k, const std::optional<at::Tensor>& rel_v) {
  check_args(q, k, v, axis, num_heads, rel_q, rel_k, rel_v);
  const c10::cuda::CUDAGuard guard(q.device());
  const Geometry g = make_geometry(q, axis, num_heads);
  check_head_dim(g);
  check_backward_args(grad_out, q, out, lse, g);
  const auto dt = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(q.sizes(), q.options());
  at::Tensor dv = at::empty(q.sizes(), q.options());
  const int64_t R = g.R(), D = g.D;
  auto acc_grad = [&](const std::optional<at::Tensor>& rel) {
    return rel.has_value() ? at::zeros({R, D}, q.options().dtype(dt)) : at::Tensor();
  };
  at::Tensor drq = acc_grad(rel_q), drk = acc_grad(rel_k), drv = acc_grad(rel_v);
  auto finish = [&](const at::Tensor& acc_t_grad) {
    return acc_t_grad.defined() ? acc_t_grad.to(q.scalar_type()) : at::empty({0}, q.options());
  };
  if (q.numel() == 0) {
    dq.zero_(), dk.zero_(), dv.zero_();
    return {dq, dk, dv, finish(drq), finish(drk), finish(drv)};
  }
  const at::Tensor rq = rel_table(rel_q, dt), rk = rel_table(rel_k, dt), rv = rel_table(rel_v, dt);
  at::Tensor delta = at::empty({g.lines(), g.L}, q.options().dtype(dt));
  LineStrides st{Strides(q, axis, g.d1, g.d2), Strides(k, axis, g.d1, g.d2), Strides(v, axis, g.d1, g.d2),
                 Strides(grad_out, axis, g.d1, g.d2)};
  const Strides s_out(out, axis, g.d1, g.d2), s_d(dq, axis, g.d1, g.d2);
  TORCH_CHECK(g.lines() < (int64_t{1} << 31), "axial_attention (cuda backend): too many lines (", g.lines(), ")");
  const dim3 grid(static_cast<unsigned int>(g.lines()), static_cast<unsigned int>((g.L + kThreads - 1) / kThreads));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "axial_attention_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const auto stream = c10::cuda::getCurrentCUDAStream();
    dq_kernel<scalar_t><<<grid, kThreads, 2 * kTile * D * sizeof(acc), stream>>>(
        q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
        grad_out.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(), s_out, ptr_or_null<acc>(rq),
        ptr_or_null<acc>(rk), ptr_or_null<acc>(rv), lse.const_data_ptr<acc>(), delta.mutable_data_ptr<acc>(),
        dq.mutable_data_ptr<scalar_t>(), s_d, mut_or_null<acc>(drq), mut_or_null<acc>(drk), mut_or_null<acc>(drv), g,
        st, static_cast<acc>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    dkdv_kernel<scalar_t><<<grid, kThreads, (2 * kTile * D + 2 * kTile) * sizeof(acc), stream>>>(
        q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
        grad_out.const_data_ptr<scalar_t>(), ptr_or_null<acc>(rq), ptr_or_null<acc>(rk), ptr_or_null<acc>(rv),
        lse.const_data_ptr<acc>(), delta.const_data_ptr<acc>(), dk.mutable_data_ptr<scalar_t>(),
        dv.mutable_data_ptr<scalar_t>(), s_d, g, st, static_cast<acc>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dq, dk, dv, finish(drq), finish(drk), finish(drv)};
}

}  // namespace

TORCH_LIBRARY_IMPL(nas3d, CUDA, m) {
  m.impl("axial_attention", &axial_attention_cuda);
  m.impl("axial_attention_backward", &axial_attention_backward_cuda);
}

}  // namespace axial
}  // namespace nas3d
