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
