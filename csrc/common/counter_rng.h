// A counter-based uniform generator: draw i of stream `seed` is the i-th output of SplitMix64 seeded with
// `seed` (Steele, Lea & Flood 2014; the finaliser passes BigCrush), computed directly from i. Any
// element can be drawn independently, so generation runs in parallel and gives the same values
// whatever the thread count or device.
#pragma once

#include <cstdint>
#include <limits>

#include "macros.h"

namespace nas3d {

NAS3D_HOST_DEVICE uint64_t splitmix64_draw(uint64_t seed, uint64_t i) {
  uint64_t x = seed + (i + 1) * 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// Uniform in the open interval (0, 1) on a midpoint grid of 2^bits values, (k + 1/2) / 2^bits, where
// bits = mantissa bits of the storage type: every value, and its distance to 0 and 1, is exactly
// representable in that type, so rounding never yields 0 or 1. bits: 52 double, 23 float, 10 half,
// 7 bfloat16.
template <typename acc>
NAS3D_HOST_DEVICE acc open_uniform(uint64_t draw, int bits) {
  const uint64_t k = draw >> (64 - bits);
  return (static_cast<acc>(k) + static_cast<acc>(0.5)) * static_cast<acc>(1.0 / static_cast<double>(1ULL << bits));
}

}  // namespace nas3d
