// Paged decode over fp8 caches compiled for the CPU emulation (fastattn._emu_ops).
#define FASTATTN_EMULATION 1
#include "cuda/paged_decode_fp8.cu"
