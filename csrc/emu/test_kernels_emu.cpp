// The primitive test kernels (test_kernels.cuh, test_kernels_sm90.cuh) compiled for the CPU emulation.
#ifndef FASTATTN_EMULATION
#define FASTATTN_EMULATION 1
#endif
#include "emu/test_kernels.cuh"
#include "emu/test_kernels_sm90.cuh"
