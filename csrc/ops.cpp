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
}
