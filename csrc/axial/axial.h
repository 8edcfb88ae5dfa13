// Axial attention (Axial-DeepLab, extended to 3D by T-AutoML §3.1): the arithmetic shared by the CPU and
// CUDA kernels.
//
// One line = one head h of one (batch, position on the two other axes) along the attention axis of
// length L; head_dim D. With the scale c, relative offsets r = j - i in [-(L-1), L-1] stored at row
// rel_index(i, j, L) = j - i + L - 1 of the (2L-1, D) embeddings:
//   s_ij   = c * (q_i . k_j + q_i . rel_q[r] + k_j . rel_k[r])              (logits)
//   lse_i  = log sum_j exp(s_ij)          (computed online over key blocks, float32 or float64)
//   p_ij   = exp(s_ij - lse_i)
//   out_i  = sum_j p_ij (v_j + rel_v[r])
// Backward (flash-attention style: p recomputed from the saved lse, never stored), with g = dL/dout:
//   dp_ij  = g_i . (v_j + rel_v[r]),   delta_i = g_i . out_i,   ds_ij = p_ij (dp_ij - delta_i)
//   dq_i   = c sum_j ds_ij (k_j + rel_q[r])      dk_j = c sum_i ds_ij (q_i + rel_k[r])
//   dv_j   = sum_i p_ij g_i                       drel_q[r] = c sum_{j-i=r} ds_ij q_i
//   drel_k[r] = c sum_{j-i=r} ds_ij k_j           drel_v[r] = sum_{j-i=r} p_ij g_i
// (the relative gradients also sum over every line, head and batch entry).
#pragma once

#include <limits>

#include "../common/macros.h"

namespace nas3d {
namespace axial {

// Row of the relative embeddings for query i and key j on a line of length L.
NAS3D_HOST_DEVICE int64_t rel_index(int64_t i, int64_t j, int64_t L) { return j - i + L - 1; }

// IEEE rule shared by every backend (and the plain-PyTorch reference, a softmax over the whole line):
// p_ij = exp(s_ij - max_j s_ij) / sum_j exp(...) in IEEE arithmetic. A key with logit -inf gets
// probability exactly 0 (so 0 * an infinite value is NaN, as in the reference's p @ v); a NaN or +inf
// logit, or a line of -inf logits only, makes the query's row NaN. Key blocks and padding lanes never
// change this: a block whose logits are all -inf contributes exactly 0, not exp(-inf - -inf) = NaN.
// A factor that may be infinite (q, ds) multiplies each term on its own, q_i . k_j + q_i . rel_q[r] and
// ds_ij k_j + ds_ij rel_q[r], as the reference's separate matmuls do: inf * (2 - 1) would be inf where
// the reference's inf * 2 + inf * -1 is NaN. For a finite grad_out, the gradients then have the
// reference's NaN and infinity pattern too.

// Running state of the online softmax of one query: max m, sum l of exp(s - softmax_base(m)).
template <typename acc>
struct OnlineSoftmax {
  acc m;
  acc l;
};

// The value subtracted from the logits before exp: the running max m, or 0 while every logit seen is
// -inf (then exp(-inf - 0) = 0 exactly, where -inf - -inf would give NaN).
template <typename acc>
NAS3D_HOST_DEVICE acc softmax_base(acc m) {
  return m == -std::numeric_limits<acc>::infinity() ? acc(0) : m;
}

// Factor by which the running sums are rescaled when the max goes from m_old to m_new >= m_old:
// exp(m_old - m_new), and exactly 0 while m_old is -inf (the sums so far hold only exact zeros, or
// NaN from 0 * inf, which stays NaN), never exp(-inf - -inf) = NaN or exp(0 - m_new) = inf.
template <typename acc>
NAS3D_HOST_DEVICE acc rescale_factor(acc m_old, acc m_new) {
  return m_old == -std::numeric_limits<acc>::infinity() ? acc(0) : math_exp(m_old - m_new);
}

// Folds a block whose largest logit is block_max into the state; returns the factor
// rescale_factor(m_old, m_new) by which the running sum and output accumulator must be multiplied
// (0 for the first block). The caller then adds block_prob(s, state.m) of the block's logits to
// state.l and to the accumulator.
template <typename acc>
NAS3D_HOST_DEVICE acc online_rescale(OnlineSoftmax<acc>& state, acc block_max, bool first) {
  if (first) {
    state.m = block_max;
    state.l = 0;
    return 0;
  }
  const acc m_new = block_max > state.m ? block_max : state.m;
  const acc corr = rescale_factor(state.m, m_new);
  state.m = m_new;
  state.l *= corr;
  return corr;
}

// Unnormalised probability exp(s - softmax_base(m)) of a logit given the running max m.
template <typename acc>
NAS3D_HOST_DEVICE acc block_prob(acc s, acc m) {
  return math_exp(s - softmax_base(m));
}

// log-sum-exp of the finished state (saved for the backward).
template <typename acc>
NAS3D_HOST_DEVICE acc online_lse(const OnlineSoftmax<acc>& state) {
  return softmax_base(state.m) + math_log(state.l);
}

// Probability of one logit given the saved log-sum-exp of its query.
template <typename acc>
NAS3D_HOST_DEVICE acc prob_from_lse(acc s, acc lse) {
  return math_exp(s - lse);
}

// Gradient of one logit from the probability, dp = g_i . (v_j + rel_v[r]) and delta_i = g_i . out_i.
template <typename acc>
NAS3D_HOST_DEVICE acc logit_grad(acc p, acc dp, acc delta) {
  return p * (dp - delta);
}

}  // namespace axial
}  // namespace nas3d
