#include "decode.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace nas3d {

namespace {

// Bit set of the scales that the edges in `mask` touch, through `scale_of` (edge -> scale).
uint32_t scales_of(uint32_t mask, const std::vector<int64_t>& scale_of) {
  uint32_t s = 0;
  for (size_t e = 0; e < scale_of.size(); ++e)
    if (mask >> e & 1u) s |= 1u << scale_of[e];
  return s;
}

}  // namespace

std::vector<int64_t> dints_decode(const std::vector<double>& log_alpha, int64_t layers,
                                  const std::vector<int64_t>& edge_in, const std::vector<int64_t>& edge_out,
                                  int64_t num_scales) {
  const int64_t edges = static_cast<int64_t>(edge_in.size());
  if (layers < 1) throw std::invalid_argument("dints_decode: layers must be >= 1, got " + std::to_string(layers));
  if (edges < 1 || edges > 24)
    throw std::invalid_argument("dints_decode: the number of edges must be in 1..24, got " + std::to_string(edges));
  if (static_cast<int64_t>(edge_out.size()) != edges)
    throw std::invalid_argument("dints_decode: edge_in and edge_out must have the same length");
  if (num_scales < 1 || num_scales > 31)
    throw std::invalid_argument("dints_decode: num_scales must be in 1..31, got " + std::to_string(num_scales));
  for (int64_t e = 0; e < edges; ++e)
    if (edge_in[e] < 0 || edge_in[e] >= num_scales || edge_out[e] < 0 || edge_out[e] >= num_scales)
      throw std::invalid_argument("dints_decode: edge " + std::to_string(e) + " has a scale outside [0, num_scales)");
  if (static_cast<int64_t>(log_alpha.size()) != layers * edges)
    throw std::invalid_argument("dints_decode: log_alpha must hold layers * edges = " +
                                std::to_string(layers * edges) + " values, got " + std::to_string(log_alpha.size()));

  const uint32_t masks = 1u << edges;  // mask 0 (no edge) is never feasible
  std::vector<uint32_t> reads(masks), writes(masks);
  for (uint32_t m = 1; m < masks; ++m) {
    reads[m] = scales_of(m, edge_in);
    writes[m] = scales_of(m, edge_out);
  }
  const double inf = std::numeric_limits<double>::infinity();
  const uint32_t scale_sets = 1u << num_scales;
  std::vector<double> best(masks, inf), next(masks), prob_on(edges);
  std::vector<double> cheapest(scale_sets);          // per written scale set: min cost of a mask writing it
  std::vector<uint32_t> argbest(scale_sets);         // ... and that mask
  std::vector<uint32_t> back(static_cast<size_t>(layers) * masks, 0);  // predecessor mask per (layer, mask)

  // cost[m] = -log(p(m) + 1e-5) for every mask of layer l (p as in decode.h; 2^edges * edges products).
  auto layer_cost = [&](int64_t l, std::vector<double>& cost) {
    double all_off = 1.0;
    for (int64_t e = 0; e < edges; ++e) {
      prob_on[e] = 1.0 / (1.0 + std::exp(-log_alpha[l * edges + e]));
      all_off *= 1.0 - prob_on[e];
    }
    const double norm = 1.0 - all_off;
    for (uint32_t m = 1; m < masks; ++m) {
      double q = 1.0;
      for (int64_t e = 0; e < edges; ++e) q *= (m >> e & 1u) ? prob_on[e] : 1.0 - prob_on[e];
      cost[m] = -std::log(q / norm + 1e-5);
    }
  };

  layer_cost(0, best);
  best[0] = inf;
  for (int64_t l = 1; l < layers; ++l) {
    std::fill(cheapest.begin(), cheapest.end(), inf);
    for (uint32_t m = 1; m < masks; ++m) {
      const uint32_t w = writes[m];
      if (best[m] < cheapest[w]) {
        cheapest[w] = best[m];
        argbest[w] = m;
      }
    }
    layer_cost(l, next);
    for (uint32_t m = 1; m < masks; ++m) {
      const uint32_t r = reads[m];
      if (cheapest[r] == inf) {
        next[m] = inf;
        continue;
      }
      next[m] += cheapest[r];
      back[static_cast<size_t>(l) * masks + m] = argbest[r];
    }
    next[0] = inf;
    best.swap(next);
  }
  uint32_t last = 0;
  double total = inf;
  for (uint32_t m = 1; m < masks; ++m)
    if (best[m] < total) {
      total = best[m];
      last = m;
    }
  if (last == 0) throw std::runtime_error("dints_decode: no feasible architecture (non-finite logits?)");
  std::vector<int64_t> out(layers);
  for (int64_t l = layers - 1; l >= 0; --l) {
    out[l] = last;
    if (l > 0) last = back[static_cast<size_t>(l) * masks + last];
  }
  return out;
}

}  // namespace nas3d
