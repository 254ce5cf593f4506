// CUDA registration of every op: the glue of csrc/ops/kernel_ops.h on real devices.
#define FASTATTN_KERNEL_OPS_CUDA 1
#include "ops/kernel_ops.h"
