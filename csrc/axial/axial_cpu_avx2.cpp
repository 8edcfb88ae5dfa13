// The axial attention CPU kernels (axial_cpu_kernel.h) compiled for AVX2 + FMA through a target pragma
// that covers only that header's code: every other header is included first, so no inline function
// shared with other translation units is built for AVX2. axial_cpu.cpp calls these only when the CPU
// has AVX2 and FMA.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "axial.h"
#include "axial_args.h"
#include "axial_cpu_isa.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define NAS3D_AXIAL_HAVE_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define NAS3D_AXIAL_ISA avx2
#include "axial_cpu_kernel.h"
#undef NAS3D_AXIAL_ISA
#pragma GCC pop_options
#endif

namespace nas3d {
namespace axial {

#ifdef NAS3D_AXIAL_HAVE_AVX2
bool avx2_supported() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

void avx2_forward(const Geometry& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& rq, const at::Tensor& rk, const at::Tensor& rv, double scale, at::Tensor& out,
                  at::Tensor& lse) {
  avx2::forward(g, q, k, v, rq, rk, rv, scale, out, lse);
}

void avx2_backward(const Geometry& g, const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& rq,
                   const at::Tensor& rk, const at::Tensor& rvT, double scale, at::Tensor& dq, at::Tensor& dk,
                   at::Tensor& dv, at::Tensor& drel, int64_t chunks, bool need_drq, bool need_drk, bool need_drv) {
  avx2::backward(g, grad, q, k, v, out, lse, rq, rk, rvT, scale, dq, dk, dv, drel, chunks, need_drq, need_drk,
                 need_drv);
}
#else
bool avx2_supported() { return false; }

void avx2_forward(const Geometry&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                  const at::Tensor&, const at::Tensor&, double, at::Tensor&, at::Tensor&) {
  TORCH_CHECK(false, "axial_attention: the AVX2 kernels are not compiled on this platform");
}

void avx2_backward(const Geometry&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                   const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                   double, at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, int64_t, bool, bool, bool) {
  TORCH_CHECK(false, "axial_attention: the AVX2 kernels are not compiled on this platform");
}
#endif

}  // namespace axial
}  // namespace nas3d
