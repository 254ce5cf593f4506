#pragma once
// Qualifiers for code shared by the CPU kernels, the CUDA kernels and the
// emulation build: the index, mask and softmax math exists exactly once.
#if defined(__CUDACC__)
#define FA_HD __host__ __device__ __forceinline__
#else
#define FA_HD inline
#endif
