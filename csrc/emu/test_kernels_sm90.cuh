#pragma once
// Test kernels for the Hopper primitives (wgmma, TMA, mbarrier, named barriers, setmaxnreg,
// elect.sync), written once and compiled for the emulation (test_kernels_emu.cpp) and by
// nvcc (csrc/cuda/primitives_test_sm90.cu; their PTX exists only in sm_90a passes, other
// architectures get traps). tests/test_primitives_sm90.py checks them against plain
// references, and their planted-bug variants against the emulation's schedules.
//
// Grids: one block. wgmma, TMA and misuse: one warpgroup (128 threads; 64 for the
// partial-warpgroup misuse); pipeline: two warpgroups (producer, consumer); named
// barriers: 4 warps.
#include <stdexcept>

#include "emu/test_kernels.h"
#include "fastattn/device/device.h"

#if defined(__CUDACC__)
#define FA_PRIMTEST_SM90_NS gpu
#else
#define FA_PRIMTEST_SM90_NS emulated
#endif

namespace fastattn::primtest {
namespace {

using namespace ::fastattn::device;

// Dynamic shared memory aligned to 1024 bytes (the 128B swizzle period): on the GPU it
// follows the kernel's static shared memory, so launches ask for kAlignSlack more bytes.
constexpr size_t kAlignSlack = 1024;

template <class T>
FA_DEVICE T* aligned_smem() {
  const auto p = reinterpret_cast<uintptr_t>(dynamic_smem<uint8_t>());
  return reinterpret_cast<T*>((p + kAlignSlack - 1) & ~uintptr_t(kAlignSlack - 1));
}

// ---------------------------------------------------------------------------------------
// wgmma
// ---------------------------------------------------------------------------------------
// Registers in and out raw (the test maps them to matrix elements from its own statement of
// the fragment layouts).
template <class T, int N, bool kRs, Major kMajorA, Major kMajorB>
FA_KERNEL void FA_LAUNCH_BOUNDS(128) wgmma_kernel(WgmmaArgs args) {
  uint8_t* smem = aligned_smem<uint8_t>();
  const int r = int(thread_rank());
  for (int i = r; i < args.a_bytes; i += 128) smem[i] = args.a_image[i];
  for (int i = r; i < args.b_bytes; i += 128) smem[args.b_offset + i] = args.b_image[i];
  fence_proxy_async();  // ordinary stores, read by wgmma (the async proxy)
  sync_block();

  float acc[N / 2];
  FA_UNROLL
  for (int i = 0; i < N / 2; ++i) acc[i] = args.c[r * (N / 2) + i];
  const uint64_t desc_a0 = make_smem_desc(smem, Swizzle(args.swizzle_a), args.lbo_a, args.sbo_a);
  const uint64_t desc_b0 =
      make_smem_desc(smem + args.b_offset, Swizzle(args.swizzle_b), args.lbo_b, args.sbo_b);
  uint32_t a_regs[kRs ? 8 : 1][4];  // k_steps <= 8
  (void)a_regs;
  if constexpr (kRs) {
    for (int s = 0; s < args.k_steps; ++s) {
      for (int i = 0; i < 4; ++i) a_regs[s][i] = args.a_regs[(s * 128 + r) * 4 + i];
      wgmma_fence_operand(a_regs[s]);
    }
  }
  wgmma_fence_operand(acc);
  if (!(args.flags & kWgmmaSkipFence)) wgmma_fence();
  for (int s = 0; s < args.k_steps; ++s) {
    const uint64_t db = smem_desc_advance(desc_b0, uint32_t(s) * args.b_step);
    const bool accumulate = s > 0 || args.accumulate;
    if constexpr (kRs) {
      wgmma_rs<T, N, kMajorB>(acc, a_regs[s], db, accumulate);
    } else {
      const uint64_t da = smem_desc_advance(desc_a0, uint32_t(s) * args.a_step);
      wgmma_ss<T, N, kMajorA, kMajorB>(acc, da, db, accumulate);
    }
  }
  wgmma_commit_group();
  if (args.flags & kWgmmaOverwriteB) {
    for (int i = r; i < args.b_bytes; i += 128) smem[args.b_offset + i] = 0;
  }
  if constexpr (kRs) {
    if (args.flags & kWgmmaOverwriteA) {
      for (int s = 0; s < args.k_steps; ++s) {
        for (int i = 0; i < 4; ++i) a_regs[s][i] = 0;
      }
    }
  }
  if (args.flags & kWgmmaExitInFlight) return;
  if (!(args.flags & kWgmmaSkipWait)) wgmma_wait_group<0>();
  wgmma_fence_operand(acc);
  FA_UNROLL
  for (int i = 0; i < N / 2; ++i) args.d[r * (N / 2) + i] = acc[i];
  if (args.flags & kWgmmaSkipWait) wgmma_wait_group<0>();  // the registers must outlive it
}

// ---------------------------------------------------------------------------------------
// TMA through one mbarrier
// ---------------------------------------------------------------------------------------
FA_KERNEL void FA_LAUNCH_BOUNDS(128)
    tma_kernel(const FA_GRID_CONSTANT TensorMap map, TmaArgs args) {
  FA_SHARED(uint64_t, bar);
  uint8_t* buf = aligned_smem<uint8_t>();
  const TmaBox& t = args.t;
  unsigned bytes = tma_type_bytes(TmaType(t.type));
  for (int i = 0; i < t.rank; ++i) bytes *= t.box[i];
  const int r = int(thread_rank());
  if (r == 0) {
    mbarrier_init(&bar, 1);
    fence_mbarrier_init();
  }
  sync_block();
  for (int l = 0; l < args.loads; ++l) {
    if (warp_id() == 0 && elect_one()) {
      if (args.flags & kTmaSkipExpectTx) {
        mbarrier_arrive(&bar);
      } else if (l % 2) {  // the two-instruction form
        mbarrier_expect_tx(&bar, bytes);
        mbarrier_arrive(&bar);
      } else {
        mbarrier_arrive_expect_tx(&bar, bytes);
      }
      int32_t c[5];
      for (int i = 0; i < 5; ++i) c[i] = t.coords[i];
      c[t.rank - 1] += l * int32_t(t.box[t.rank - 1]);
      switch (t.rank) {
        case 1: tma_load<1>(buf, &map, &bar, {c[0]}); break;
        case 2: tma_load<2>(buf, &map, &bar, {c[0], c[1]}); break;
        case 3: tma_load<3>(buf, &map, &bar, {c[0], c[1], c[2]}); break;
        case 4: tma_load<4>(buf, &map, &bar, {c[0], c[1], c[2], c[3]}); break;
        default: tma_load<5>(buf, &map, &bar, {c[0], c[1], c[2], c[3], c[4]}); break;
      }
    }
    if (!(args.flags & kTmaSkipWait)) {
      mbarrier_wait(&bar, (args.flags & kTmaNoParityFlip) ? 0u : unsigned(l & 1));
    }
    for (unsigned i = unsigned(r); i < bytes; i += 128) args.out[size_t(l) * bytes + i] = buf[i];
    sync_block();  // the buffer is read before the next load refills it
  }
  if (args.flags & (kTmaSkipWait | kTmaNoParityFlip)) {
    // Let the last copy land before the block ends (its bytes are no longer read).
    mbarrier_wait(&bar, unsigned((args.loads - 1) & 1));
  }
}

// ---------------------------------------------------------------------------------------
// TMA store
// ---------------------------------------------------------------------------------------
FA_KERNEL void FA_LAUNCH_BOUNDS(128)
    tma_store_kernel(const FA_GRID_CONSTANT TensorMap map, TmaStoreArgs args) {
  uint8_t* tile = aligned_smem<uint8_t>();
  unsigned bytes = tma_type_bytes(TmaType(args.t.type));
  for (int i = 0; i < args.t.rank; ++i) bytes *= args.t.box[i];
  for (unsigned i = thread_rank(); i < bytes; i += 128) tile[i] = args.image[i];
  fence_proxy_async();  // ordinary stores, read by the bulk store (the async proxy)
  sync_block();
  if (thread_rank() == 0) {
    const int32_t* c = args.t.coords;
    switch (args.t.rank) {
      case 1: tma_store<1>(&map, tile, {c[0]}); break;
      case 2: tma_store<2>(&map, tile, {c[0], c[1]}); break;
      case 3: tma_store<3>(&map, tile, {c[0], c[1], c[2]}); break;
      case 4: tma_store<4>(&map, tile, {c[0], c[1], c[2], c[3]}); break;
      default: tma_store<5>(&map, tile, {c[0], c[1], c[2], c[3], c[4]}); break;
    }
    bulk_commit_group();
    if (args.overwrite) {
      for (unsigned i = 0; i < bytes; ++i) tile[i] = 0;
    }
    bulk_wait_group_read<0>();
    bulk_wait_group<0>();
  }
}

// ---------------------------------------------------------------------------------------
// Producer / consumer ring: full and empty mbarriers, elect.sync, named barrier,
// setmaxnreg
// ---------------------------------------------------------------------------------------
constexpr int kPipeTile = 32 * 32;  // floats

// (256, 1): ptxas needs the register count at entry to honour setmaxnreg.
FA_KERNEL void FA_LAUNCH_BOUNDS(256, 1) pipeline_kernel(const FA_GRID_CONSTANT TensorMap map,
                                                     PipelineArgs args) {
  FA_SHARED(uint64_t[4], full);
  FA_SHARED(uint64_t[4], empty);
  float* ring = aligned_smem<float>();  // [stages, 32, 32]
  const int r = int(thread_rank());
  if (r == 0) {
    for (int s = 0; s < args.stages; ++s) {
      mbarrier_init(&full[s], 1);
      mbarrier_init(&empty[s], 1);
    }
    fence_mbarrier_init();
  }
  sync_block();
  if (warp_id() / 4 == 0) {
    setmaxnreg_dec<40>();
    if (warp_id() == 0 && elect_one()) {
      for (int t = 0; t < args.tiles; ++t) {
        const int s = t % args.stages;
        // Round t / stages of this stage: wait for the consumers' release of the previous
        // round (phase parity (round - 1) & 1), none before the first.
        const int round = t / args.stages;
        if (round > 0 && !(args.flags & kPipeSkipEmptyWait)) {
          mbarrier_wait(&empty[s], unsigned((round - 1) & 1));
        }
        mbarrier_arrive_expect_tx(&full[s], kPipeTile * 4);
        tma_load<2>(ring + s * kPipeTile, &map, &full[s], {0, t * 32});
      }
    }
  } else {
    setmaxnreg_inc<232>();
    const int c = r - 128;
    for (int t = 0; t < args.tiles; ++t) {
      const int s = t % args.stages;
      const int round = t / args.stages;
      mbarrier_wait(&full[s], (args.flags & kPipeNoParityFlip) ? 0u : unsigned(round & 1));
      for (int i = c; i < kPipeTile; i += 128) {
        args.out[size_t(t) * kPipeTile + i] = ring[s * kPipeTile + i];
      }
      if (!(args.flags & kPipeSkipNamedSync)) {
        named_barrier_sync(1, 128);
      }
      if (c == 0) mbarrier_arrive(&empty[s]);
    }
    if (args.flags & (kPipeSkipEmptyWait | kPipeNoParityFlip)) {
      // Drain: the last tile of each stage has landed before the block ends.
      for (int s = 0; s < args.stages && s < args.tiles; ++s) {
        const int last = (args.tiles - 1 - s) / args.stages * args.stages + s;
        mbarrier_wait(&full[s], unsigned((last / args.stages) & 1));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Named barriers: producer warps hand a buffer to consumer warps
// ---------------------------------------------------------------------------------------
FA_KERNEL void named_barrier_kernel(NamedBarrierArgs args) {
  FA_SHARED(float[64], buf);
  const int r = int(thread_rank());
  for (int round = 0; round < args.rounds; ++round) {
    if (r >= 64) {
      if (round > 0) named_barrier_sync(2, 128);  // the consumers are done with the buffer
      buf[r - 64] = args.in[round * 64 + (r - 64)];
      named_barrier_arrive(1, 128);
    } else {
      if (!args.skip_sync) named_barrier_sync(1, 128);
      args.out[round * 64 + r] = buf[(r + 1) % 64];  // another thread's value
      named_barrier_arrive(2, 128);
    }
  }
  if (r >= 64 && args.rounds > 0) named_barrier_sync(2, 128);  // matches the last release
}

// ---------------------------------------------------------------------------------------
// Misuse the emulation must report (kind 0 is correct code). 128 threads, 64 for kind 11.
// `map`: 32 floats of scratch, `map128`: the same with the 128-byte swizzle.
// ---------------------------------------------------------------------------------------
// One small wgmma (m64n16k16, bf16) on `smem`: fence (unless told not to), issue, commit and
// wait (unless told not to).
FA_DEVICE void small_wgmma(float (&acc)[8], uint64_t desc_a, uint64_t desc_b, bool fence,
                           bool wait) {
  if (fence) wgmma_fence();
  wgmma_ss<bf16_t, 16>(acc, desc_a, desc_b, false);
  wgmma_commit_group();
  if (wait) wgmma_wait_group<0>();
}

FA_KERNEL void FA_LAUNCH_BOUNDS(128, 1)
    hopper_misuse_kernel(const FA_GRID_CONSTANT TensorMap map,
                         const FA_GRID_CONSTANT TensorMap map128, HopperMisuseArgs args) {
  FA_SHARED(uint64_t[2], bar);
  uint8_t* smem = dynamic_smem<uint8_t>();  // 4096 bytes
  const int r = int(thread_rank());
  float v = float(r);
  float acc[8] = {};
  const uint64_t plain = make_smem_desc(smem, Swizzle::kNone, 128, 256);
  switch (args.kind) {
    case 0:  // correct: init, fence, barrier, arrive/wait; a fenced, waited wgmma
      if (r == 0) {
        mbarrier_init(&bar[0], 128);
        fence_mbarrier_init();
      }
      for (int i = r; i < 4096; i += 128) smem[i] = 0;
      sync_block();
      mbarrier_arrive(&bar[0]);
      mbarrier_wait(&bar[0], 0);
      small_wgmma(acc, plain, plain, true, true);
      v = acc[0];
      break;
    case 1:  // wait on an mbarrier never initialised
      mbarrier_wait(&bar[1], 0);
      break;
    case 2:  // a transaction count that never completes
      if (r == 0) {
        mbarrier_init(&bar[0], 1);
        mbarrier_arrive_expect_tx(&bar[0], 64);
      }
      sync_block();
      mbarrier_wait(&bar[0], 0);
      break;
    case 3:  // wgmma without wgmma.fence
      small_wgmma(acc, plain, plain, false, true);
      break;
    case 4:  // named barrier: the warps disagree on the thread count
      named_barrier_sync(1, warp_id() < 2 ? 128 : 96);
      break;
    case 5:  // named barrier: thread count not a multiple of 32
      named_barrier_sync(1, 100);
      break;
    case 6:  // setmaxnreg not warpgroup-uniform
      if (warp_id() == 0) {
        setmaxnreg_inc<240>();
      } else {
        setmaxnreg_inc<232>();
      }
      break;
    case 7:  // a 128B-swizzled operand starting mid-pattern (row 1 of the period)
      small_wgmma(acc, make_smem_desc(smem + 128, Swizzle::k128B, 16, 1024),
                  make_smem_desc(smem, Swizzle::k128B, 16, 1024), true, true);
      break;
    case 8:  // a descriptor reaching past shared memory
      small_wgmma(acc, make_smem_desc(smem, Swizzle::kNone, 128, 4096), plain, true, true);
      break;
    case 9:  // TMA into a destination that is not 128-byte aligned
      if (r == 0) {
        mbarrier_init(&bar[0], 1);
        tma_load<1>(aligned_smem<uint8_t>() + 16, &map, &bar[0], {0});
      }
      break;
    case 10:  // exit with a wgmma in flight
      small_wgmma(acc, plain, plain, true, false);
      return;
    case 11:  // a warpgroup collective in a 64-thread block
      wgmma_fence();
      break;
    case 12:  // more arrivals than the expected count (the phase still waits for bytes)
      if (r == 0) mbarrier_init(&bar[0], 1);
      sync_block();
      if (r == 0) mbarrier_arrive_expect_tx(&bar[0], 64);
      sync_block();
      if (r == 1) mbarrier_arrive(&bar[0]);
      break;
    case 14:  // one lane arrives at a named barrier (bar.arrive is per warp, all lanes)
      if (lane_id() == 0) named_barrier_arrive(1, 128);
      break;
    case 15:  // setmaxnreg.inc that lowers the count
      setmaxnreg_inc<240>();
      setmaxnreg_inc<232>();
      break;
    case 16: {  // descriptors that differ between the warps of the warpgroup
      const uint64_t own =
          make_smem_desc(smem + (warp_id() == 1 ? 16 : 0), Swizzle::kNone, 128, 256);
      small_wgmma(acc, plain, own, true, true);
      break;
    }
    case 17:  // a descriptor with a base offset
      small_wgmma(acc, plain | (uint64_t(1) << 49), plain, true, true);
      break;
    case 18:  // a TMA load nobody waits for (in flight when the block ends; seed 0)
      if (r == 0) {
        mbarrier_init(&bar[0], 1);
        mbarrier_arrive_expect_tx(&bar[0], 128);
        tma_load<1>(aligned_smem<uint8_t>(), &map, &bar[0], {0});
      }
      break;
    case 19:  // ordinary stores over an initialised mbarrier
      if (r == 0) {
        mbarrier_init(&bar[0], 1);
        bar[0] = 0;
        mbarrier_arrive(&bar[0]);
      }
      break;
    case 13:  // a 128B-swizzled TMA into dynamic shared memory that the kernel did not align
      if (r == 0) {
        mbarrier_init(&bar[0], 1);
        tma_load<1>(smem, &map128, &bar[0], {0});
      }
      break;
  }
  args.scratch[r] = v;
}

}  // namespace

namespace FA_PRIMTEST_SM90_NS {

namespace dev = ::fastattn::device;

template <class T, int N, bool kRs, dev::Major kA, dev::Major kB>
void launch_wgmma(const WgmmaArgs& a) {
  const size_t smem = size_t(a.b_offset) + size_t(a.b_bytes) + kAlignSlack;
  dev::launch(wgmma_kernel<T, N, kRs, kA, kB>, {dev::dim3(1), dev::dim3(128), smem}, a);
}

template <class T>
void run_wgmma_typed(const WgmmaArgs& a) {
  using M = dev::Major;
  if (a.k_steps < 1 || a.k_steps > 8) throw std::invalid_argument("wgmma: k_steps must be 1..8");
  const int key = a.n * 100 + a.rs * 10 + a.major_a * 2 + a.major_b;
  switch (key) {
    // Every layout at N = 64; the N sweep K-major.
    case 6400: launch_wgmma<T, 64, false, M::kK, M::kK>(a); break;
    case 6401: launch_wgmma<T, 64, false, M::kK, M::kMN>(a); break;
    case 6402: launch_wgmma<T, 64, false, M::kMN, M::kK>(a); break;
    case 6403: launch_wgmma<T, 64, false, M::kMN, M::kMN>(a); break;
    case 6410: launch_wgmma<T, 64, true, M::kK, M::kK>(a); break;
    case 6411: launch_wgmma<T, 64, true, M::kK, M::kMN>(a); break;
    case 1600: launch_wgmma<T, 16, false, M::kK, M::kK>(a); break;
    case 1610: launch_wgmma<T, 16, true, M::kK, M::kK>(a); break;
    case 12800: launch_wgmma<T, 128, false, M::kK, M::kK>(a); break;
    case 19201: launch_wgmma<T, 192, false, M::kK, M::kMN>(a); break;
    case 25600: launch_wgmma<T, 256, false, M::kK, M::kK>(a); break;
    case 25610: launch_wgmma<T, 256, true, M::kK, M::kK>(a); break;
    default:
      throw std::invalid_argument("wgmma: no test instantiation for n=" + std::to_string(a.n) +
                                  " rs=" + std::to_string(a.rs) + " majors=" +
                                  std::to_string(a.major_a) + std::to_string(a.major_b));
  }
}

void run_wgmma(const WgmmaArgs& a) {
  if (a.bf16) {
    run_wgmma_typed<dev::bf16_t>(a);
  } else {
    run_wgmma_typed<dev::half_t>(a);
  }
  dev::synchronize();
}

// The map of `t` (encoded on the host) and its box bytes.
size_t tma_map(const TmaBox& t, dev::TensorMap* map) {
  dev::TensorMapSpec spec;
  spec.type = dev::TmaType(t.type);
  spec.rank = t.rank;
  spec.global = t.global;
  size_t bytes = dev::tma_type_bytes(spec.type);
  for (int i = 0; i < 5; ++i) {
    spec.dims[i] = t.dims[i];
    spec.strides[i] = t.strides[i];
    spec.box[i] = t.box[i];
  }
  for (int i = 0; i < t.rank; ++i) bytes *= t.box[i];
  spec.swizzle = dev::Swizzle(t.swizzle);
  spec.oob_nan = t.oob_nan != 0;
  dev::make_tensor_map(map, spec);
  return bytes;
}

void run_tma(const TmaArgs& a) {
  dev::TensorMap map;
  const size_t bytes = tma_map(a.t, &map);
  dev::launch(tma_kernel, {dev::dim3(1), dev::dim3(128), bytes + kAlignSlack}, map, a);
  dev::synchronize();
}

void run_tma_store(const TmaStoreArgs& a) {
  dev::TensorMap map;
  const size_t bytes = tma_map(a.t, &map);
  dev::launch(tma_store_kernel, {dev::dim3(1), dev::dim3(128), bytes + kAlignSlack}, map, a);
  dev::synchronize();
}

void run_pipeline(const PipelineArgs& a) {
  if (a.stages < 1 || a.stages > 4) throw std::invalid_argument("pipeline: stages must be 1..4");
  dev::TensorMapSpec spec;
  spec.type = dev::TmaType::kF32;
  spec.rank = 2;
  spec.global = a.in;
  spec.dims[0] = 32;
  spec.dims[1] = uint64_t(a.tiles) * 32;
  spec.strides[1] = 32 * 4;
  spec.box[0] = 32;
  spec.box[1] = 32;
  dev::TensorMap map;
  dev::make_tensor_map(&map, spec);
  dev::launch(pipeline_kernel,
              {dev::dim3(1), dev::dim3(256), size_t(a.stages) * kPipeTile * 4 + kAlignSlack},
              map, a);
  dev::synchronize();
}

void run_named_barrier(const NamedBarrierArgs& a) {
  dev::launch(named_barrier_kernel, {dev::dim3(1), dev::dim3(128)}, a);
  dev::synchronize();
}

void run_hopper_misuse(const HopperMisuseArgs& a) {
  dev::TensorMapSpec spec;  // 32 floats of scratch, for the TMA misuse
  spec.type = dev::TmaType::kF32;
  spec.rank = 1;
  spec.global = a.scratch;
  spec.dims[0] = 1024;
  spec.box[0] = 32;
  dev::TensorMap map, map128;
  dev::make_tensor_map(&map, spec);
  spec.swizzle = dev::Swizzle::k128B;
  dev::make_tensor_map(&map128, spec);
  dev::launch(hopper_misuse_kernel,
              {dev::dim3(1), dev::dim3(a.kind == 11 ? 64 : 128), 4096 + kAlignSlack}, map, map128,
              a);
  dev::synchronize();
}

}  // namespace FA_PRIMTEST_SM90_NS
}  // namespace fastattn::primtest
