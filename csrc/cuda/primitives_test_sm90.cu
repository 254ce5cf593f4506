// The Hopper primitive test kernels (csrc/emu/test_kernels_sm90.cuh) compiled by nvcc for
// fastattn._emu: on an sm_90 GPU tests/test_primitives_sm90.py runs them against the same
// references as the emulation. Their wgmma/TMA/mbarrier PTX is emitted only in the sm_90a
// pass (architecture-specific instructions); the sm_80 pass compiles them to traps, and
// the tests skip the cuda backend below compute capability 9.0.
// A barrier phase that never completes on the GPU (the hardware disagreeing with the
// emulation) traps after ~2 s instead of hanging the test run.
#define FA_MBARRIER_TIMEOUT_CYCLES 4000000000LL
#include "emu/test_kernels_sm90.cuh"
