// 3x3x3 max and average pooling (padding 1, stride 1 or 2) as three 1D passes, X, Y and Z each
// handled by the same per-element functions on the CPU and on the GPU.
//
// A pass maps a line of n_in values to n_out = (n_in - 1) / s + 1 values; output o reads the taps
// d = 0, 1, 2 at source index o * s - 1 + d that lie inside [0, n_in) (the padding never wins a max
// and adds 0 to a sum: average pooling divides by 27 everywhere, PyTorch's count_include_pad=True).
// Max pooling records the tap it chose per pass; the three taps combine into one code
// tx * 9 + ty * 3 + tz in [0, 27) per output, all the backward needs.
#pragma once

#include "../common/macros.h"

namespace nas3d {
namespace pool3 {

NAS3D_HOST_DEVICE int64_t out_size(int64_t n_in, int64_t s) { return (n_in - 1) / s + 1; }

// Source index of tap d of output o.
NAS3D_HOST_DEVICE int64_t src(int64_t o, int64_t s, int d) { return o * s - 1 + d; }

// Whether v replaces the running maximum best: strictly greater (ties go to the lower tap), or the
// first NaN (a NaN wins over numbers, as in torch.max_pool3d).
template <typename T>
NAS3D_HOST_DEVICE bool beats(T v, T best) {
  // !(v <= best) is "v > best, or either is NaN"; the second term drops the NaN-best case. Two
  // compares of one width, combined bitwise: branch-free, so that the CPU loops vectorise.
  return !(v <= best) & (best == best);
}

// The maximum of three taps (all inside the line) and the tap chosen.
template <typename T>
NAS3D_HOST_DEVICE T select3(T v0, T v1, T v2, int& tap) {
  const bool b1 = beats(v1, v0);
  T best = b1 ? v1 : v0;
  const bool b2 = beats(v2, best);
  tap = b2 ? 2 : (b1 ? 1 : 0);
  return b2 ? v2 : best;
}

// Max over the valid taps of output o, reading tap d at line[src * step].
template <typename T>
NAS3D_HOST_DEVICE T max3(const T* line, int64_t step, int64_t n_in, int64_t o, int64_t s, int& tap) {
  const int first = o * s - 1 < 0 ? 1 : 0;
  T best = line[src(o, s, first) * step];
  tap = first;
  for (int d = first + 1; d < 3; ++d) {
    const int64_t i = src(o, s, d);
    if (i >= n_in) break;
    const T v = line[i * step];
    if (beats(v, best)) best = v, tap = d;
  }
  return best;
}

// Sum over the valid taps of output o, in tap order, in the accumulation type.
template <typename acc, typename T>
NAS3D_HOST_DEVICE acc sum3(const T* line, int64_t step, int64_t n_in, int64_t o, int64_t s) {
  acc total = 0;
  for (int d = 0; d < 3; ++d) {
    const int64_t i = src(o, s, d);
    if (i >= 0 && i < n_in) total += static_cast<acc>(line[i * step]);
  }
  return total;
}

// The adjoint of sum3: the input element i receives the outputs whose taps read it, in tap order.
// The stride is a template argument: a runtime modulo per tap would dominate the pass.
template <typename acc, int S, typename T>
NAS3D_HOST_DEVICE acc sum3_adjoint(const T* line, int64_t step, int64_t n_out, int64_t i) {
  acc total = 0;
  for (int d = 0; d < 3; ++d) {
    const int64_t t = i + 1 - d;  // = o * S
    if (t < 0 || t % S != 0) continue;
    const int64_t o = t / S;
    if (o < n_out) total += static_cast<acc>(line[o * step]);
  }
  return total;
}

// The output index whose tap d reads input i along one axis of n_out outputs, or -1.
template <int S>
NAS3D_HOST_DEVICE int64_t reader(int64_t i, int64_t n_out, int d) {
  const int64_t t = i + 1 - d;  // = o * S
  if (t < 0 || t % S != 0 || t / S >= n_out) return -1;
  return t / S;
}

// The gradient of max pooling at input element (ix, iy, iz): the sum, in (dx, dy, dz) order, of the
// output gradients whose recorded code points at this element. grad and code are one (n, c) slice
// of the output, contiguous (OX, OY, OZ); grad_rows/code_rows[dx * 3 + dy] are their rows (ox, oy)
// read by taps (dx, dy) of this element's row, or nullptr. CheckZ=false when every z tap is inside.
template <typename acc, int S, bool CheckZ, typename T>
NAS3D_HOST_DEVICE acc max_grad_at(const T* const* grad_rows, const uint8_t* const* code_rows, int64_t oz, int64_t iz) {
  acc total = 0;
  for (int t = 0; t < 9; ++t) {
    if (grad_rows[t] == nullptr) continue;
    for (int dz = 0; dz < 3; ++dz) {
      const int64_t o = CheckZ ? reader<S>(iz, oz, dz) : (iz + 1 - dz) / S;
      if (CheckZ && o < 0) continue;
      const acc g = static_cast<acc>(grad_rows[t][o]);  // loaded unconditionally: the select vectorises
      total += code_rows[t][o] == t * 3 + dz ? g : acc(0);
    }
  }
  return total;
}

// The rows (ox, oy) of one output slice whose taps (dx, dy) read input row (ix, iy), or nullptr.
template <int S, typename T>
NAS3D_HOST_DEVICE void reader_rows(const T* slice, int64_t OX, int64_t OY, int64_t OZ, int64_t ix, int64_t iy,
                                   const T** rows) {
  for (int dx = 0; dx < 3; ++dx)
    for (int dy = 0; dy < 3; ++dy) {
      const int64_t ox = reader<S>(ix, OX, dx), oy = reader<S>(iy, OY, dy);
      rows[dx * 3 + dy] = (ox >= 0 && oy >= 0) ? slice + (ox * OY + oy) * OZ : nullptr;
    }
}

}  // namespace pool3
}  // namespace nas3d
