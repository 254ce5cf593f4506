// The op glue of csrc/ops/kernel_ops.h over the emulated kernels (tests only).
#define FASTATTN_KERNEL_OPS_EMU 1
#include "ops/kernel_ops.h"
