// The primitive test kernels (csrc/emu/test_kernels.cuh) compiled by nvcc, so that
// tests/test_primitives.py runs the same checks on a GPU when one is present and confirms
// that the emulation matches the hardware. Built into the test-only module fastattn._emu
// (cmake/FastattnEmu.cmake); also the proof that every wrapper's PTX assembles for each
// shipped architecture.
#include "emu/test_kernels.cuh"
