// fastattn::kernels::attention_fwd for the emulation build (test-only fastattn._emu_ops): the
// kernel sources of csrc/cuda/kernels/attention_fwd{,_sm90}.cuh compiled by the host compiler against
// the emulated device layer, behind the same dispatch as the nvcc build.
#ifndef FASTATTN_EMULATION
#define FASTATTN_EMULATION 1
#endif
#include "cuda/kernels/attention_fwd.cuh"
#include "cuda/kernels/attention_fwd_sm90.cuh"
#include "cuda/attention_fwd.cu"
