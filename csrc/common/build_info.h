// Facts about how nas3d_fast._C was compiled, reported by `nas3d info` and nas3d_fast.backends().
#pragma once

#include <string>

namespace nas3d {

std::string cxx_compiler();  // e.g. "gcc 12.2.0"
bool cuda_compiled();
std::string cuda_compiler();  // e.g. "nvcc 13.0", empty without CUDA kernels

}  // namespace nas3d
