// The nas3d_fast._C Python module. Loading it runs the TORCH_LIBRARY registrations in csrc/, which
// define torch.ops.nas3d.*; the functions here are the non-tensor helpers Python needs.
#include <torch/extension.h>

#include "../csrc/common/build_info.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "nas3d_fast compiled kernels (CPU, and CUDA when built with it)";
  m.def("cxx_compiler", &nas3d::cxx_compiler, "The C++ compiler that built the CPU kernels.");
  m.def("cuda_compiled", &nas3d::cuda_compiled, "True when the CUDA kernels were compiled in.");
  m.def("cuda_compiler", &nas3d::cuda_compiler, "The nvcc version of the CUDA kernels, or ''.");
}
