// Every schema of the nas3d namespace, in one place. Kernels register per device in <op>/<op>_cpu.cpp and
// <op>/<op>_cuda.cu; fake (meta) kernels and autograd are registered from Python (nas3d_fast/ops/).
#include <torch/library.h>

TORCH_LIBRARY(nas3d, m) {
  // Gumbel top-k sampling over all E edges of a supernet: logits (E, K), noise (E, K) uniform in (0, 1).
  // Returns weights (E, K), zero except at the k chosen entries, and indices (E, k) int64.
  m.def("gumbel_topk(Tensor logits, Tensor noise, float tau, int k, bool hard) -> (Tensor, Tensor)");
  // The same, drawing the noise from `generator` in the kernel's own pass; the noise it drew is the
  // third output (the straight-through backward needs it).
  m.def(
      "gumbel_topk_sample(Tensor logits, float tau, int k, bool hard, Generator? generator=None) "
      "-> (Tensor, Tensor, Tensor)",
      {at::Tag::nondeterministic_seeded});
  m.def(
      "gumbel_topk_backward(Tensor grad_weights, Tensor logits, Tensor noise, Tensor weights, float tau, "
      "bool hard) -> Tensor");

  // Mixed supernet edge (csrc/mixed/). weighted_sum: out = sum_k weights[k] * xs[k] over same-shaped
  // tensors; its backward is the fused weight gradient grad_w[k] = <grad, xs[k]> (grad_xs[k] =
  // weights[k] * grad needs no kernel). kernel_merge: the same sum over convolution kernels
  // (O, I, k0, k1, k2) zero-padded, centred, to `size`.
  m.def("weighted_sum(Tensor[] xs, Tensor weights) -> Tensor");
  m.def("weighted_sum_backward(Tensor grad, Tensor[] xs) -> Tensor");
  m.def("kernel_merge(Tensor[] kernels, Tensor weights, int[] size) -> Tensor");
  m.def("kernel_merge_backward(Tensor grad, Tensor[] kernels, Tensor weights) -> (Tensor[], Tensor)");
  // 3x3x3 pooling, padding 1, stride 1 or 2, as three 1D passes. max_pool3 also returns the uint8 code
  // tx * 9 + ty * 3 + tz of the tap each output chose, which is all its backward reads.
  m.def("max_pool3(Tensor x, int stride) -> (Tensor, Tensor)");
  m.def("max_pool3_backward(Tensor grad, Tensor code, int[] input_size, int stride) -> Tensor");
  m.def("avg_pool3(Tensor x, int stride) -> Tensor");
  m.def("avg_pool3_backward(Tensor grad, int[] input_size, int stride) -> Tensor");
  // Depthwise 3x3x3 convolution, weight (C, 1, 3, 3, 3), dilation r, padding r, stride 1 or 2.
  m.def("depthwise_conv3(Tensor x, Tensor weight, int stride, int dilation) -> Tensor");
  m.def(
      "depthwise_conv3_backward(Tensor grad, Tensor x, Tensor weight, int stride, int dilation, bool[2] mask) "
      "-> (Tensor?, Tensor?)");

  // Sliding-window inference (csrc/window/). volume (B, C, D, H, W), starts (N, 4) int64 rows (b, z, y, x).
  // window_gather: the N windows of extent roi = (rd, rh, rw) -> (N, C, rd, rh, rw).
  m.def("window_gather(Tensor volume, Tensor starts, int[] roi) -> Tensor");
  // window_stitch: out[b, :, z:z+rd, y:y+rh, x:x+rw] += weight * pred[n] for n = 0..N-1 in order
  // (deterministic); out (B, C, D, H, W) contiguous, pred (N, C, rd, rh, rw), weight (rd, rh, rw).
  m.def("window_stitch(Tensor(a!) out, Tensor pred, Tensor weight, Tensor starts) -> ()");
  // window_argmax: labels[z, y, x] = argmax over c of acc[c, z, y, x] / weight_sum[z, y, x] (of acc alone
  // when weight_sum is None), first maximum on ties, NaN the largest; acc (C, D, H, W) a slab of the stitched
  // accumulator, labels (D, H, W) uint8/int16/int32/int64, any strides, written in place in one pass.
  m.def("window_argmax(Tensor acc, Tensor? weight_sum, Tensor(a!) labels) -> ()");

  // Axial attention (csrc/axial/axial.h): q, k, v (B, C, X, Y, Z) strided views, attention along `axis`
  // per line and head; returns out (B, C, X, Y, Z) contiguous and the log-sum-exp (B, heads, S1, S2, L) in
  // float32 (float64 for float64 inputs) that the backward recomputes the probabilities from. Absent
  // relative embeddings get empty (0,) gradients.
  m.def(
      "axial_attention(Tensor q, Tensor k, Tensor v, int axis, int num_heads, float scale, Tensor? rel_q=None, "
      "Tensor? rel_k=None, Tensor? rel_v=None) -> (Tensor, Tensor)");
  m.def(
      "axial_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, int axis, "
      "int num_heads, float scale, Tensor? rel_q=None, Tensor? rel_k=None, Tensor? rel_v=None) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}
