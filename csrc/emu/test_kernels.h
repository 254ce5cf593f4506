#pragma once
// Arguments of the primitive test kernels (test_kernels.cuh) and their two runners: the
// emulated build (test_kernels_emu.cpp) and, when CUDA is built, the GPU build
// (csrc/cuda/primitives_test.cu). Plain pointers: the test module passes tensor
// data_ptr()s, host memory for the emulation, device memory for the GPU.
#include <cstdint>

namespace fastattn::primtest {

// threadIdx, blockIdx, blockDim, gridDim, thread_rank, lane_id, warp_id of every thread.
struct IndexArgs {
  uint32_t* out;  // [blocks * threads, 16]
  unsigned grid[3];
  unsigned block[3];
};

// D = A * B + C per problem, one warp per problem. Fragments are loaded by per-lane
// indexing of the documented layout (via_ldmatrix = 0) or by ldmatrix from shared memory
// (via_ldmatrix = 1: x4 for A, x2.trans for B).
struct MmaArgs {
  const uint16_t* a;  // [P, 16, 16] fp16/bf16 bits, row-major (M x K)
  const uint16_t* b;  // [P, 16, 8] fp16/bf16 bits, row-major (K x N)
  const float* c;     // [P, 16, 8]
  float* d;           // [P, 16, 8]
  int problems;
  int bf16;
  int via_ldmatrix;
};

// out[i] = shfl_<mode>(in[i], arg[i], width) for every thread i.
struct ShflArgs {
  const void* in;   // [threads] uint32, or uint64 when wide
  const int32_t* arg;  // [threads] lane mask / source lane / delta
  void* out;        // like in
  int threads;      // a multiple of 32
  int mode;         // 0 up, 1 down, 2 xor, 3 idx
  int width;
  int wide;
};

// out[i] = (ballot, any, all) of pred over thread i's warp.
struct VoteArgs {
  const int32_t* pred;  // [threads]
  uint32_t* out;        // [threads, 3]
  int threads;
};

// One warp: the tile is copied to dynamic shared memory, lane l passes
// smem + offsets[l] to ldmatrix, and writes its registers to out[l].
struct LdmatrixArgs {
  const uint16_t* tile;   // [tile_elems]
  int tile_elems;         // a multiple of 8
  const int32_t* offsets; // [32] element offsets (multiples of 8)
  uint32_t* out;          // [32, num]
  int num;
  int trans;
};

// cp.async through a two-stage shared-memory ring.
//   mode 0 (pipeline): tile t+1 is issued while tile t is read; thread i copies chunk i of
//     each tile and reads chunk i+1 (another thread's). out equals src (with chunk bytes
//     past src_bytes zeroed) iff waits and barriers are right. flags drop one of them.
//   mode 1 (probe): issue tile 0, commit, issue tile 1, commit, wait_group 1; each thread
//     then reads back its own chunk of both tiles into out[0] and out[1].
struct CpAsyncArgs {
  const uint8_t* src;  // [tiles, threads * 16]
  uint8_t* out;        // [tiles, threads * 16]
  int tiles;
  int threads;
  int mode;
  int flags;      // kSkipWait | kSkipBarrierAfterWait | kSkipBarrierBeforeRefill
  int src_bytes;  // bytes of each 16-byte chunk read from src (the rest is zero-filled)
};
constexpr int kSkipWait = 1;
constexpr int kSkipBarrierAfterWait = 2;
constexpr int kSkipBarrierBeforeRefill = 4;

// Tree sum of each row of `in` in static shared memory, one block per row. barrier:
// kBarrierBlock (correct), kBarrierNone (every sync_block dropped) or kBarrierWarp
// (sync_warp in its place: the warp collectives alone must not pass for a barrier).
struct ReduceArgs {
  const float* in;  // [rows, threads], threads a power of two <= 1024
  float* out;       // [rows]
  int rows;
  int threads;
  int barrier;
};
constexpr int kBarrierBlock = 0;
constexpr int kBarrierNone = 1;
constexpr int kBarrierWarp = 2;

// Every thread i of the grid applies its value in[i] to the counters.
struct AtomicArgs {
  const int32_t* in;  // [blocks * threads]
  int blocks;
  int threads;
  float* fsum;        // [1]  += float(in[i])
  int32_t* isum;      // [1]  += in[i]
  int32_t* imax;      // [1]  max
  int32_t* imin;      // [1]  min
  uint32_t* bits;     // [1]  |= 1 << (i % 32)
  int32_t* block_counts;  // [blocks]  shared-memory atomic count of threads, per block
  int32_t* cas_slot;  // [1]  starts at -1; the first CAS wins
  int32_t* cas_wins;  // [1]  number of winning CAS
  int32_t* exch;      // [1]  exchanged by every thread; ends as some i
};

// Elementwise conversions and fast math.
struct MathArgs {
  const float* x;        // [n]
  int n;                 // even
  uint16_t* to_f16;      // [n]  from_float<half_t>
  uint16_t* to_bf16;     // [n]  from_float<bf16_t>
  uint32_t* pack_f16;    // [n/2]  pack2<half_t>(x[2j], x[2j+1])
  uint32_t* pack_bf16;   // [n/2]
  float* unpack_f16;     // [n]  unpack2<half_t>(pack_f16)
  float* unpack_bf16;    // [n]
  float* exp2;           // [n]  fast_exp2
  float* rcp;            // [n]  fast_rcp
  float* tanh;           // [n]  fast_tanh
  const uint16_t* bits;  // [nbits]  16-bit patterns
  int nbits;
  float* f16_to_f32;     // [nbits]  to_float(half_t)
  float* bf16_to_f32;    // [nbits]  to_float(bf16_t)
};

// fp8 conversions (fastattn/device/fp8.h) in one format per launch, on both paths
// (Fp8Path::kNative, then kSoftware). Widening reads the codes four at a time (code i is
// element i % 4 of its group); narrowing converts pairs.
struct Fp8Args {
  int e5m2;              // 0: e4m3fn, 1: e5m2
  const uint8_t* codes;  // [ncodes], a multiple of 4
  int ncodes;
  uint16_t* wide16;      // [8, ncodes] fp16/bf16 bits: rows kFp8* + (0 native | 1 software)
  float* wide32;         // [3, ncodes] fp8x2_to_float2 native, software; to_float
  const float* x;        // [nx], nx even
  int nx;
  uint8_t* narrow;       // [3, nx] codes: float2_to_fp8x2 native, software; from_float
};
// wide16 row pairs: fp8x2_to_f16x2, fp8x4_to_pack2x2<half_t>, fp8x2_to_bf16x2,
// fp8x4_to_pack2x2<bf16_t>.
constexpr int kFp8F16x2 = 0, kFp8F16x4 = 2, kFp8Bf16x2 = 4, kFp8Bf16x4 = 6;

// Misuse the emulation must report (kind): see test_kernels.cuh.
struct MisuseArgs {
  int kind;
  float* scratch;  // [1024] global memory the kernels may touch
};

// Reads dynamic and static shared memory before writing it (emulation: poisoned bytes).
struct SmemPoisonArgs {
  uint32_t* out;  // [blocks, threads, 2]
  int blocks;
  int threads;
};

// ---------------------------------------------------------------------------------------
// Hopper (sm_90a) primitives: test_kernels_sm90.cuh. The GPU runners need an sm_90 device.
// ---------------------------------------------------------------------------------------

// One warpgroup computes D = A * B + C (64 x N, K = 16 * k_steps) with wgmma. The A and B
// operands are given as shared-memory images (bytes laid out by the test per the ISA's
// canonical layouts and swizzles), copied to dynamic shared memory at offset 0 (A) and
// b_offset (B); step s of K uses descriptors advanced by s * {a,b}_step bytes. Registers go
// in and out raw, so that the test maps them to matrix elements itself: c and d hold
// thread r's accumulator register i at [r, i]; with rs, a_regs[s, r, j] is A register j of
// thread r for K step s.
struct WgmmaArgs {
  const uint8_t* a_image;
  int a_bytes;
  const uint32_t* a_regs;  // [k_steps, 128, 4], rs only
  const uint8_t* b_image;
  int b_bytes;
  int b_offset;            // a multiple of 1024
  const float* c;          // [128, n / 2]
  float* d;                // [128, n / 2]
  int n;
  int bf16;
  int rs;
  int major_a, major_b;    // 0 K-major, 1 MN-major
  int swizzle_a, swizzle_b;  // descriptor encoding: 0 none, 1 128B, 2 64B, 3 32B
  uint32_t lbo_a, sbo_a, lbo_b, sbo_b;
  int k_steps;
  uint32_t a_step, b_step;
  int accumulate;          // scale-d of the first step (later steps always accumulate)
  int flags;               // kWgmmaSkip*: planted bugs
};
constexpr int kWgmmaSkipWait = 1;        // read the accumulators without wait_group
constexpr int kWgmmaSkipFence = 2;       // no wgmma.fence before the first wgmma
constexpr int kWgmmaOverwriteB = 4;      // zero B in shared memory before the wait
constexpr int kWgmmaExitInFlight = 8;    // exit without waiting (error)
constexpr int kWgmmaOverwriteA = 16;     // zero the A registers before the wait (rs)

// A tensor map's fields (TensorMapSpec) and a box's coordinates.
struct TmaBox {
  void* global;
  int type;                // TmaType
  int rank;
  uint64_t dims[5];
  uint64_t strides[5];     // bytes; [0] unused
  uint32_t box[5];
  int swizzle;             // Swizzle
  int oob_nan;
  int32_t coords[5];
};

// TMA: `loads` boxes through one mbarrier and one shared buffer; load l reads the box at
// coords with the outermost coordinate moved by l * box[rank - 1]; out[l] receives the raw
// shared-memory bytes of the box (swizzle included).
struct TmaArgs {
  TmaBox t;
  int loads;
  uint8_t* out;            // [loads, box bytes]
  int flags;               // kTmaSkip*: planted bugs
};
constexpr int kTmaSkipExpectTx = 1;  // plain arrive instead of arrive.expect_tx
constexpr int kTmaSkipWait = 2;      // consumers read without waiting on the barrier
constexpr int kTmaNoParityFlip = 4;  // consumers always wait for parity 0

// TMA store: `image` (the box's shared-memory bytes, swizzled as tma_load lays them out) is
// copied to shared memory, then one thread stores the box into `global` at coords (elements
// outside the tensor are not written). overwrite: that thread zeroes the tile right after
// issuing, before bulk_wait_group_read (planted bug).
struct TmaStoreArgs {
  TmaBox t;
  const uint8_t* image;    // [box bytes]
  int overwrite;
};

// Producer/consumer ring: warpgroup 0 produces (setmaxnreg.dec; warp 0's elected lane
// issues a TMA load of tile t into stage t % stages after waiting for the stage to be
// empty), warpgroup 1 consumes (setmaxnreg.inc; waits for the stage to be full, copies the
// tile to out[t], meets at a named barrier, then one thread releases the stage).
struct PipelineArgs {
  const float* in;   // [tiles, 32, 32]
  float* out;        // [tiles, 32, 32]
  int tiles;
  int stages;        // 1..4
  int flags;         // kPipeSkip*
};
constexpr int kPipeSkipEmptyWait = 1;   // the producer refills a stage without waiting
constexpr int kPipeSkipNamedSync = 2;   // the releasing thread does not wait for the others
constexpr int kPipeNoParityFlip = 4;    // consumers always wait for parity 0

// Named barriers: 4 warps; warps 2-3 write a round's values to shared memory and bar.arrive
// (id 1, 128 threads); warps 0-1 bar.sync on it, copy the values to out, and bar.arrive
// (id 2) so that the producers (bar.sync id 2) may overwrite the buffer.
struct NamedBarrierArgs {
  const float* in;   // [rounds, 64]
  float* out;        // [rounds, 64]
  int rounds;
  int skip_sync;     // consumers skip bar.sync 1 (planted bug)
};

// Misuse of the Hopper primitives the emulation must report (kind; 0 is correct code).
struct HopperMisuseArgs {
  int kind;
  float* scratch;    // [1024]
};

#define FASTATTN_PRIMTEST_RUNNERS                  \
  void run_index(const IndexArgs&);                \
  void run_mma(const MmaArgs&);                    \
  void run_shfl(const ShflArgs&);                  \
  void run_vote(const VoteArgs&);                  \
  void run_ldmatrix(const LdmatrixArgs&);          \
  void run_cp_async(const CpAsyncArgs&);           \
  void run_reduce(const ReduceArgs&);              \
  void run_atomics(const AtomicArgs&);             \
  void run_math(const MathArgs&);                  \
  void run_fp8(const Fp8Args&);                    \
  void run_misuse(const MisuseArgs&);              \
  void run_smem_poison(const SmemPoisonArgs&);    \
  void run_wgmma(const WgmmaArgs&);                \
  void run_tma(const TmaArgs&);                    \
  void run_tma_store(const TmaStoreArgs&);         \
  void run_pipeline(const PipelineArgs&);          \
  void run_named_barrier(const NamedBarrierArgs&); \
  void run_hopper_misuse(const HopperMisuseArgs&);

namespace emulated {
FASTATTN_PRIMTEST_RUNNERS
}
namespace gpu {
FASTATTN_PRIMTEST_RUNNERS
}

}  // namespace fastattn::primtest
