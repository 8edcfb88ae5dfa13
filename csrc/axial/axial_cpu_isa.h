// The AVX2 + FMA build of the axial attention CPU kernels (axial_cpu_avx2.cpp), called from axial_cpu.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include "axial_args.h"

namespace nas3d {
namespace axial {

// True when this CPU runs AVX2 and FMA and the AVX2 kernels were compiled (x86-64 with GCC or Clang).
bool avx2_supported();

void avx2_forward(const Geometry& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& rq, const at::Tensor& rk, const at::Tensor& rv, double scale, at::Tensor& out,
                  at::Tensor& lse);

void avx2_backward(const Geometry& g, const at::Tensor& grad, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& rq,
                   const at::Tensor& rk, const at::Tensor& rvT, double scale, at::Tensor& dq, at::Tensor& dk,
                   at::Tensor& dv, at::Tensor& drel, int64_t chunks, bool need_drq, bool need_drk, bool need_drv);

}  // namespace axial
}  // namespace nas3d
