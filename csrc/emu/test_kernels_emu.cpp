// The primitive test kernels (test_kernels.cuh) compiled for the CPU emulation.
#ifndef FASTATTN_EMULATION
#define FASTATTN_EMULATION 1
#endif
#include "emu/test_kernels.cuh"
