// DiNTS topology decode: the most probable feasible sequence of per-layer path activations, as a dynamic
// programme over layers (no dense all-pairs matrix). Plain C++ (no torch, no Python); python/module.cpp
// exposes it as nas3d_fast._C.dints_decode.
#pragma once

#include <cstdint>
#include <vector>

namespace nas3d {

// log_alpha: (layers x edges) row-major path logits (MONAI's TopologySearch.log_alpha_a).
// edge_in, edge_out: the scale each edge reads and writes (MONAI's arch_code2in / arch_code2out), values
// in [0, num_scales). Returns one edge bit mask per layer (bit e set = edge e active), minimising
//   sum_l -log(p_l(mask_l) + 1e-5)
// over non-empty masks such that the scales read in layer l are exactly the scales written in layer l-1,
// where p_l(mask) = prod_e (s_e if on else 1 - s_e) / (1 - prod_e (1 - s_e)), s = sigmoid(log_alpha)
// (the cost MONAI's TopologySearch.decode() gives its shortest-path graph). Among equal costs the smaller
// mask wins at each layer's choice. Throws std::invalid_argument (ValueError in Python) on bad
// shapes or edges > 24.
std::vector<int64_t> dints_decode(const std::vector<double>& log_alpha, int64_t layers,
                                  const std::vector<int64_t>& edge_in, const std::vector<int64_t>& edge_out,
                                  int64_t num_scales);

}  // namespace nas3d
