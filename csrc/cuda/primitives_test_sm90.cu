// The Hopper primitive test kernels (csrc/emu/test_kernels_sm90.cuh) compiled by nvcc for
// fastattn._emu: on an sm_90 GPU tests/test_primitives_sm90.py runs them against the same
// references as the emulation. Their wgmma/TMA/mbarrier PTX is emitted only in the sm_90a
// pass (architecture-specific instructions); the sm_80 pass compiles them to traps, and
// the tests skip the cuda backend below compute capability 9.0.
#include "emu/test_kernels_sm90.cuh"
