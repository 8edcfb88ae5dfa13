// Shared by the CPU (.cpp) and CUDA (.cu) translation units: the per-element arithmetic of every op
// lives in NAS3D_HOST_DEVICE inline functions so the CPU tests run the same math as the GPU kernels.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define NAS3D_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define NAS3D_HOST_DEVICE inline
#endif

#include <cmath>
#include <cstdint>

namespace nas3d {

// Accumulation type: float for float/half/bfloat16 inputs, double for double.
template <typename scalar_t>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename scalar_t>
using acc_t = typename AccType<scalar_t>::type;

// Overloads that pick the float or double libm/CUDA math function at compile time.
NAS3D_HOST_DEVICE float math_exp(float x) { return ::expf(x); }
NAS3D_HOST_DEVICE double math_exp(double x) { return ::exp(x); }
NAS3D_HOST_DEVICE float math_log(float x) { return ::logf(x); }
NAS3D_HOST_DEVICE double math_log(double x) { return ::log(x); }

}  // namespace nas3d
