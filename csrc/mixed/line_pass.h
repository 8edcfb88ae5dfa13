// CPU driver of a 1D pass along one axis of a contiguous tensor viewed as (outer, n_in, inner):
// out[p, o, j] = elem(line = in + p * n_in * inner + j, step = inner, p, o, j) for o < n_out.
// Rows run in parallel; the innermost loop runs over j (contiguous) so that elem vectorises, except
// for the last axis (inner == 1), where the loop runs over o.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace nas3d {

// Elements per parallel task: enough work to amortise a task, small enough to balance.
constexpr int64_t kElementsPerTask = 32768;

template <typename In, typename Elem>
void line_pass(const In* in, int64_t outer, int64_t n_in, int64_t n_out, int64_t inner, const Elem& elem) {
  if (inner == 1) {
    const int64_t grain = std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(n_out, 1));
    at::parallel_for(0, outer, grain, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const In* line = in + p * n_in;
        for (int64_t o = 0; o < n_out; ++o) elem(line, int64_t{1}, p, o, int64_t{0});
      }
    });
    return;
  }
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / inner);
  at::parallel_for(0, outer * n_out, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t p = r / n_out, o = r % n_out;
      const In* line = in + p * n_in * inner;
      for (int64_t j = 0; j < inner; ++j) elem(line + j, inner, p, o, j);
    }
  });
}

}  // namespace nas3d
