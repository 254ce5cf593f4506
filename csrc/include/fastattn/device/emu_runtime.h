#pragma once
// Interface of the CPU emulation runtime (csrc/emu/runtime.cpp): what the device wrappers
// call when built with FASTATTN_EMULATION, and the knobs a host program (the test module,
// an emulated op) sets before launching. Includable without FASTATTN_EMULATION: it defines
// no macros.
//
// Execution model
//   - A launch runs the grid's blocks on a few OS worker threads, one block at a time per
//     worker; blocks of one launch run in parallel.
//   - Inside a block every CUDA thread is a fiber (ucontext) on that worker. A fiber runs
//     until it reaches a synchronisation point (block barrier, warp collective, cp.async
//     commit/wait) and then yields to the block's scheduler; between such points the
//     threads of a block run one after another, in an order set by the Schedule.
//   - A warp collective (shuffle, vote, ldmatrix, mma, __syncwarp) completes when all 32
//     lanes reached the same collective: each lane deposits a pointer to its operand, the
//     last one computes every lane's result, then all continue. A block barrier completes
//     when every thread of the block reached it.
//   - Misuse that is undefined on the GPU and that would hang or silently pass here is an
//     error instead: a barrier or collective that can never complete (threads exited, or
//     lanes of a warp waiting at different collectives or at the block barrier), a warp
//     collective in a partial warp, ldmatrix/cp.async addresses that are misaligned or not
//     in the block's shared memory. The launch then throws std::runtime_error naming the
//     block, the thread and the primitive.
#include <cstddef>
#include <cstdint>
#include <string>

namespace fastattn::emu {

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

// What threadIdx & co. read. The runtime points t_current at the running fiber's context
// before each switch to it; fibers never migrate between OS threads, so reading a
// thread_local here is safe even though the compiler may cache its address.
struct ThreadContext {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
  unsigned linear_tid;
  unsigned lane;
  unsigned warp;
};

extern thread_local ThreadContext* t_current;

[[noreturn]] void no_kernel_context();

inline ThreadContext& current() {
  ThreadContext* c = t_current;
  if (!c) no_kernel_context();
  return *c;
}

// ---------------------------------------------------------------------------------------
// Schedules: the order in which threads run between synchronisation points, and when
// cp.async copies land. Different schedules expose different missing synchronisation:
// a missing barrier shows up as a wrong result in at least one thread order, a missing
// cp.async wait when copies land as late as allowed, a missing barrier before a buffer is
// refilled when they land as early as allowed.
// ---------------------------------------------------------------------------------------
enum class Order { kForward, kReverse, kShuffle };
enum class AsyncTiming {
  kAtWait,   // a copy lands at the wait_group that covers its group (as late as allowed)
  kAtIssue,  // a copy lands when issued (as early as allowed)
  kRandom,   // at a random synchronisation point of the issuing thread, at the latest at its wait
};

struct Schedule {
  Order order = Order::kForward;
  AsyncTiming async_timing = AsyncTiming::kAtWait;
  uint64_t seed = 0;  // random choices (shuffles, random landing), per block

  // The schedule tests enumerate: 0 = forward order + copies at wait, 1 = reverse order +
  // copies at issue, >= 2 = shuffled order + random landing, seeded with `seed`. The block
  // order of the grid follows the thread order.
  static Schedule from_seed(uint64_t seed);
  std::string describe() const;
};

struct Options {
  Schedule schedule;  // default: Schedule::from_seed($FASTATTN_EMU_SEED or 0)
  int num_workers = 0;          // OS threads per launch; 0: $FASTATTN_EMU_WORKERS or all cores
  // Compute capability x 10 that kernel dispatch sees (80: the mma.sync kernels; 90: the
  // sm_90a kernels where they apply).
  int sm = 80;
};

// Options of launches made by the calling host thread.
Options& options();

class ScopedOptions {
 public:
  explicit ScopedOptions(const Options& o) : saved_(options()) { options() = o; }
  ~ScopedOptions() { options() = saved_; }
  ScopedOptions(const ScopedOptions&) = delete;
  ScopedOptions& operator=(const ScopedOptions&) = delete;

 private:
  Options saved_;
};

// ---------------------------------------------------------------------------------------
// Runtime calls used by the device wrappers. All of them must be called from a kernel
// thread (a fiber); called from host code they throw std::logic_error.
// ---------------------------------------------------------------------------------------

// bar.sync 0 / __syncthreads: every thread of the block.
void block_barrier();

// A warp collective. operand/result point into the calling lane's own stack frame; they
// stay valid while the lane waits. The last lane to arrive calls
// fn(operands[32], results[32]) with all lanes' pointers, indexed by lane. Lanes must all
// reach the same (name, fn).
using CollectiveFn = void (*)(const void* const* operands, void* const* results);
void warp_collective(const char* name, CollectiveFn fn, const void* operand, void* result);

// Aborts the launch with an error naming the current block and thread; never returns.
[[noreturn]] void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// cp.async.{ca,cg}.shared.global [dst], [src], cp_size, src_size: src_size bytes copied,
// the rest of cp_size zero-filled. Landing time follows Schedule::async_timing.
void cp_async(void* dst, const void* src, unsigned cp_size, unsigned src_size);
void cp_async_commit();          // cp.async.commit_group (empty groups count too)
void cp_async_wait(unsigned n);  // cp.async.wait_group n: all but the newest n groups landed

// True when [p, p + bytes) lies inside one shared-memory allocation of the current block.
bool is_shared(const void* p, std::size_t bytes);

// The emulated shared window: the address cvta.to.shared gives for a pointer into the block's
// shared memory (dynamic shared memory starts at 0; every allocation on a 1024-byte
// boundary), and the pointer for such an address (`bytes` of it must lie in one
// allocation). Both fail the kernel with a message naming `what` otherwise.
uint32_t shared_address(const void* p);
void* shared_pointer(uint32_t addr, std::size_t bytes, const char* what);

void* dynamic_smem();
void* static_smem(const void* key, std::size_t size, std::size_t align);

// ---------------------------------------------------------------------------------------
// Hopper (sm_90) primitives: warpgroups, asynchronous operations, mbarriers, named barriers.
// ---------------------------------------------------------------------------------------

// A collective of the caller's warpgroup (the 128 threads of warps 4i..4i+3; the block size
// must be a multiple of 128): as warp_collective, with operands[128] and results[128]
// indexed by the thread's rank in the warpgroup.
void warpgroup_collective(const char* name, CollectiveFn fn, const void* operand, void* result);

// An operation that lands later: run(payload) performs its reads and writes, destroy(payload)
// frees it (called after run, or when the block is abandoned). The device headers build
// them (fastattn/device/wgmma.h, tma.h); the runtime decides when they land.
struct AsyncOp {
  void (*run)(void* payload);
  void (*destroy)(void* payload);
  void* payload;
};

// wgmma: call wgmma_issue from inside a warpgroup collective (once per instruction, by the
// collective's fn). It fails unless the warpgroup executed wgmma_fence since its last
// wgmma_wait (or since it started). The op lands at the latest at the wgmma_wait that covers
// its group; when exactly follows Schedule::async_timing. fence/commit/wait are warpgroup
// collectives themselves.
void wgmma_issue(AsyncOp op);
void wgmma_fence();
void wgmma_commit();
void wgmma_wait(unsigned n);  // all but the newest n committed groups have landed

// mbarrier (a 64-bit shared-memory object; the emulation keeps its state aside, keyed by
// address). init: expected arrivals `count`, phase 0. A phase completes when its pending
// arrivals reach 0 and its tx-count is 0; then the phase number increments, pending arrivals
// reset to the expected count. Using an address never initialised is an error.
void mbarrier_init(void* bar, unsigned count);
// mbarrier.arrive[.expect_tx]: tx-count += tx_bytes, then one arrival. Returns the phase
// number the arrival belongs to.
uint64_t mbarrier_arrive(void* bar, unsigned tx_bytes);
void mbarrier_expect_tx(void* bar, unsigned tx_bytes);
// Blocks until the phase of parity `parity` has completed, i.e. while the current phase's
// parity equals `parity` (PTX try_wait.parity in a loop). A wait that can never complete
// is reported as a deadlock with the barrier's state.
void mbarrier_wait_parity(void* bar, unsigned parity);

// A bulk asynchronous copy (TMA) completing on an mbarrier: op writes shared memory when it
// lands, then the barrier's tx-count drops by `bytes`. Lands at issue, at a random
// synchronisation point, or as late as possible (when no thread of the block could run
// otherwise), per Schedule::async_timing. Copies still in flight when the block ends are an
// error.
void bulk_copy_issue(void* bar, unsigned bytes, AsyncOp op);

// Bulk stores (TMA shared -> global) of the calling thread, in bulk async-groups:
// bulk_commit closes a group (cp.async.bulk.commit_group), bulk_wait(n) lands all but the
// newest n groups (cp.async.bulk.wait_group[.read] n). A store reads shared memory and
// writes global memory when it lands: at issue, at a random synchronisation point of the
// thread, or at the covering wait, per the schedule; at the latest when the thread exits.
void bulk_store_issue(AsyncOp op);
void bulk_commit();
void bulk_wait(unsigned n);

// bar.sync / bar.arrive with a barrier id (1..15; id 0 is sync_block's) and a thread count
// (a multiple of 32, at most the block size). Every arrival of one phase must give the same
// count.
void named_barrier(unsigned id, unsigned count, bool wait);

// The lane elect.sync picks: 0 under the forward order, 31 under the reverse order, a
// seeded random lane under shuffled orders.
unsigned elect_lane();

// setmaxnreg.{inc,dec}: a warpgroup collective; checks the value (24..256, a multiple of 8,
// the same in every thread) and the direction against the warpgroup's last setting.
void setmaxnreg(unsigned regs, bool inc);

// Largest static + dynamic shared memory of one block (the sm_90 opt-in limit).
constexpr std::size_t kMaxSharedBytes = 227 * 1024;

// Runs fn(ctx) as every thread of a grid; throws std::invalid_argument for a bad
// configuration and std::runtime_error for an error inside the kernel. Synchronous.
struct KernelRef {
  void (*fn)(void*);
  void* ctx;
};
void launch(dim3 grid, dim3 block, std::size_t smem_bytes, KernelRef kernel);

}  // namespace fastattn::emu
