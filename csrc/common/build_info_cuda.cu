#include "build_info.h"

namespace nas3d {

bool cuda_compiled() { return true; }

std::string cuda_compiler() {
  return "nvcc " + std::to_string(__CUDACC_VER_MAJOR__) + "." + std::to_string(__CUDACC_VER_MINOR__);
}

}  // namespace nas3d
