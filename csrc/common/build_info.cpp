#include "build_info.h"

namespace nas3d {

std::string cxx_compiler() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  return "msvc " + std::to_string(_MSC_VER);
#else
  return "unknown";
#endif
}

#ifndef NAS3D_WITH_CUDA
bool cuda_compiled() { return false; }
std::string cuda_compiler() { return ""; }
#endif

}  // namespace nas3d
