#pragma once
// The device layer: the only device intrinsics kernels may use (DESIGN.md §2).
//
//   config.h   build mode, FA_KERNEL/FA_DEVICE/FA_SHARED, indices, vector types, smem, trap
//   sync.h     sync_block, sync_warp, fences, shfl_{xor,idx,up,down}, warp votes
//   mma.h      mma_m16n8k16<half_t|bf16_t>, ldmatrix<x, trans>
//   memory.h   cp_async_16 / commit / wait, atomics
//   math.h     fp16/bf16 conversions and packing, fast_exp2, fast_rcp, fast_tanh
//   fp8.h      fp8 e4m3/e5m2 storage; exact widening to f16x2/bf16x2/float2, saturating narrowing
//   launch.h   LaunchConfig, launch(kernel, cfg, args...), synchronize
//   Hopper (sm_90 / sm_90a):
//   barrier.h  mbarrier (init, arrive[.expect_tx], wait parity), named barriers, async-proxy
//              fences, elect.sync
//   tma.h      tensor maps (host) and TMA box loads completing on an mbarrier
//   swizzle.h  the 32/64/128-byte shared-memory swizzles of TMA and wgmma
//   wgmma.h    wgmma.mma_async (A from shared memory or registers), descriptors, fence,
//              commit/wait groups; setmaxnreg
//
// Compiled by nvcc these are PTX; compiled by a host compiler with FASTATTN_EMULATION they
// run on the CPU emulation (emu_runtime.h, csrc/emu/runtime.cpp) so that the same kernel
// source runs in CI. Everything lives in namespace fastattn::device.
#include "fastattn/device/barrier.h"
#include "fastattn/device/config.h"
#include "fastattn/device/fp8.h"
#include "fastattn/device/launch.h"
#include "fastattn/device/math.h"
#include "fastattn/device/memory.h"
#include "fastattn/device/mma.h"
#include "fastattn/device/swizzle.h"
#include "fastattn/device/sync.h"
#include "fastattn/device/tma.h"
#include "fastattn/device/wgmma.h"
