// Paged decode compiled for the CPU emulation (fastattn._emu_ops).
#define FASTATTN_EMULATION 1
#include "cuda/paged_decode.cu"
