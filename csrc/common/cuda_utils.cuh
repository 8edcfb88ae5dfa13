// Launch helpers shared by the CUDA kernels: 64-bit grid-stride loops and a fixed-order block
// reduction (deterministic: the same tree every launch). Valid for sm_70 and newer.
#pragma once

#include <cstdint>

namespace nas3d {

constexpr int kCudaThreads = 256;

inline unsigned int cuda_blocks(int64_t n, int64_t cap = 65535 * 8) {
  const int64_t blocks = (n + kCudaThreads - 1) / kCudaThreads;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

// for (i = global thread index; i < n; i += total threads), 64-bit.
#define NAS3D_CUDA_LOOP(i, n)                                                                           \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);             \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

// Sum of one value per thread of a kCudaThreads-thread block, in a fixed tree; thread 0 gets it.
template <typename T>
__device__ T block_sum(T value) {
  __shared__ T shared[kCudaThreads];
  shared[threadIdx.x] = value;
  __syncthreads();
  for (int width = kCudaThreads / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) shared[threadIdx.x] += shared[threadIdx.x + width];
    __syncthreads();
  }
  return shared[0];
}

}  // namespace nas3d
