// The entry point of the Python eager fast path of nas3d_fast.ops.gumbel_topk (bound in python/module.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace nas3d {
namespace gumbel {

// nas3d::gumbel_topk_sample through the dispatcher (autograd and every dispatch key included, exactly
// as torch.ops calls it) with the default generator, returning (weights, indices). Called from a
// pybind11 binding it skips torch.ops' conversion of Python arguments to a boxed stack and the Python
// wrapper of the noise output, which dominate the cost of the op at small sizes (E ~ 200 edges).
std::tuple<at::Tensor, at::Tensor> gumbel_topk_sample_pair(const at::Tensor& logits, double tau, int64_t k, bool hard);

}  // namespace gumbel
}  // namespace nas3d
