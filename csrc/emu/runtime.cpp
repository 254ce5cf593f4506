// CPU emulation runtime for the device layer (fastattn/device/emu_runtime.h).
//
// Design
//   Grid     Blocks are handed out, in the schedule's block order, to a few OS worker
//            threads (one block at a time per worker). A block never leaves its worker.
//   Threads  Each CUDA thread of a block is a fiber with its own mmap'ed stack (a
//            PROT_NONE guard page below it turns an overflow into a crash instead of
//            silent corruption). The worker's own stack runs the block scheduler. On
//            x86-64 a fiber switch saves the callee-saved registers and swaps stack
//            pointers (a few ns); elsewhere, or with -DFASTATTN_EMU_UCONTEXT, it is
//            makecontext/swapcontext, whose signal-mask syscall costs ~150 ns a switch.
//            A warp collective costs ~64 switches, so this matters for emulated kernels.
//            Fibers do not change the FP environment (rounding mode, MXCSR), which is
//            therefore not switched.
//   Order    A fiber runs until it reaches a synchronisation point, then yields; the
//            scheduler then resumes one ready fiber: the lowest-numbered (forward), the
//            highest (reverse) or a random one (shuffle). Priority rather than rounds:
//            under forward order warp 0 runs past its shuffles and mmas all the way to the
//            next block barrier before warp 1 starts, so shared memory read without a
//            barrier is stale even when warp collectives sit between write and read (a
//            round-robin scheduler would hide that: every yield would act as a barrier).
//   Shared   Dynamic shared memory and each FA_SHARED variable are separate heap
//            allocations of the block, filled with 0xFF (NaN in fp32/fp16/bf16) when the
//            block starts and freed when it ends; ASan therefore sees overflows between them.
//   cp.async Copies are queued per thread and land according to Schedule::async_timing.
//   Errors   Detected misuse records an error in the block and switches back to the
//            scheduler for good (no exception crosses a fiber boundary); the launch stops
//            handing out blocks and throws std::runtime_error from launch().
//   ASan     With AddressSanitizer, every switch is annotated with
//            __sanitizer_{start,finish}_switch_fiber and stacks are unpoisoned before reuse.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "fastattn/device/emu_runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#define FA_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FA_EMU_ASAN 1
#endif
#endif
#if defined(FA_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(__x86_64__) && !defined(FASTATTN_EMU_UCONTEXT)
#define FA_EMU_FAST_SWITCH 1
// fastattn_emu_switch(&save_sp, new_sp): pushes the System V callee-saved registers, stores
// the stack pointer into *save_sp, loads new_sp and pops the registers saved there; `ret`
// then continues the other context (or enters a new fiber, see Context::init).
extern "C" void fastattn_emu_switch(void** save_sp, void* new_sp);
asm(R"(
  .text
  .p2align 4
  .globl fastattn_emu_switch
  .hidden fastattn_emu_switch
  .type fastattn_emu_switch, @function
fastattn_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fastattn_emu_switch, .-fastattn_emu_switch
)");
#endif

namespace fastattn::emu {

thread_local ThreadContext* t_current = nullptr;

void no_kernel_context() {
  throw std::logic_error(
      "fastattn emulation: a device primitive was called outside an emulated kernel");
}

Schedule Schedule::from_seed(uint64_t seed) {
  Schedule s;
  s.seed = seed;
  if (seed == 0) {
    s.order = Order::kForward;
    s.async_timing = AsyncTiming::kAtWait;
  } else if (seed == 1) {
    s.order = Order::kReverse;
    s.async_timing = AsyncTiming::kAtIssue;
  } else {
    s.order = Order::kShuffle;
    s.async_timing = AsyncTiming::kRandom;
  }
  return s;
}

std::string Schedule::describe() const {
  std::string s;
  switch (order) {
    case Order::kForward: s = "forward order"; break;
    case Order::kReverse: s = "reverse order"; break;
    case Order::kShuffle: s = "shuffled order"; break;
  }
  switch (async_timing) {
    case AsyncTiming::kAtWait: s += ", cp.async lands at wait"; break;
    case AsyncTiming::kAtIssue: s += ", cp.async lands at issue"; break;
    case AsyncTiming::kRandom: s += ", cp.async lands at random"; break;
  }
  return s + ", seed " + std::to_string(seed);
}

namespace {
size_t env_size(const char* name, size_t fallback);
}  // namespace

Options& options() {
  thread_local Options opts = [] {
    Options o;
    o.schedule = Schedule::from_seed(env_size("FASTATTN_EMU_SEED", 0));
    return o;
  }();
  return opts;
}

namespace {

// splitmix64: small, fast, and the same sequence on every platform.
struct Rng {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  unsigned below(unsigned n) { return unsigned(next() % n); }
  bool coin() { return next() & 1; }
};

template <class T>
void shuffle(std::vector<T>& v, Rng& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng.below(unsigned(i))]);
}

enum class State : uint8_t {
  kReady,
  kAtBarrier,     // sync_block
  kAtCollective,  // a warp collective
  kAtGroup,       // a warpgroup collective
  kAtMbarrier,    // mbarrier_wait_parity
  kAtNamed,       // bar.sync with an id
  kExited
};

// The ready fibers of a block: a bitset for the lowest/highest, a dense array for a
// uniformly random one.
class ReadySet {
 public:
  void reset(unsigned n) {
    words_.assign((n + 63) / 64, 0);
    dense_.clear();
    dense_.reserve(n);
    pos_.assign(n, kAbsent);
  }
  void insert(unsigned i) {
    if (pos_[i] != kAbsent) return;
    words_[i / 64] |= uint64_t(1) << (i % 64);
    pos_[i] = unsigned(dense_.size());
    dense_.push_back(i);
  }
  void erase(unsigned i) {
    if (pos_[i] == kAbsent) return;
    words_[i / 64] &= ~(uint64_t(1) << (i % 64));
    const unsigned p = pos_[i], last = dense_.back();
    dense_[p] = last;
    pos_[last] = p;
    dense_.pop_back();
    pos_[i] = kAbsent;
  }
  bool empty() const { return dense_.empty(); }
  unsigned lowest() const {
    for (size_t w = 0;; ++w) {
      if (words_[w]) return unsigned(w * 64 + __builtin_ctzll(words_[w]));
    }
  }
  unsigned highest() const {
    for (size_t w = words_.size(); w-- > 0;) {
      if (words_[w]) return unsigned(w * 64 + 63 - __builtin_clzll(words_[w]));
    }
    return 0;
  }
  unsigned random(Rng& rng) const { return dense_[rng.below(unsigned(dense_.size()))]; }

 private:
  static constexpr unsigned kAbsent = ~0u;
  std::vector<uint64_t> words_;
  std::vector<unsigned> dense_;
  std::vector<unsigned> pos_;
};

struct Copy {
  void* dst;
  const void* src;
  unsigned cp_size;
  unsigned src_size;
};

void land(const Copy& c) {
  if (c.src_size) std::memcpy(c.dst, c.src, c.src_size);
  std::memset(static_cast<unsigned char*>(c.dst) + c.src_size, 0, c.cp_size - c.src_size);
}

// An execution context: a fiber, or the scheduler running on the worker's own stack.
struct Context {
#if defined(FA_EMU_FAST_SWITCH)
  void* sp = nullptr;

  // A fresh fiber whose first switch "returns" into entry() with an ABI-aligned stack and
  // a null return address above it (entry never returns).
  void init(char* stack_lo, size_t size, void (*entry)()) {
    auto top = reinterpret_cast<uintptr_t>(stack_lo + size) & ~uintptr_t(15);
    auto* frame = reinterpret_cast<void**>(top - 64);
    for (int i = 0; i < 6; ++i) frame[i] = nullptr;  // r15 r14 r13 r12 rbx rbp
    frame[6] = reinterpret_cast<void*>(entry);        // at top - 16: 16-byte aligned
    frame[7] = nullptr;
    sp = frame;
  }
  static void swap(Context& from, Context& to) { fastattn_emu_switch(&from.sp, to.sp); }
#else
  ucontext_t uc;

  void init(char* stack_lo, size_t size, void (*entry)()) {
    getcontext(&uc);
    uc.uc_stack.ss_sp = stack_lo;
    uc.uc_stack.ss_size = size;
    uc.uc_link = nullptr;
    makecontext(&uc, entry, 0);
  }
  static void swap(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif
};

struct Block;

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

struct Fiber : ThreadContext {
  Block* block = nullptr;
  Context ctx;
  char* stack_lo = nullptr;
  size_t stack_size = 0;
  State state = State::kReady;
  void* asan_fake_stack = nullptr;
  std::vector<Copy> open_group;            // issued, not yet committed
  std::deque<std::vector<Copy>> groups;    // committed, oldest first; landed copies removed
  std::vector<AsyncOp> store_open;             // bulk stores (TMA) issued, not committed
  std::deque<std::vector<AsyncOp>> store_groups;  // committed bulk groups, oldest first
  const void* wait_bar = nullptr;          // kAtMbarrier: the barrier and parity waited for
  unsigned wait_parity = 0;
  unsigned named_id = 0;                   // kAtNamed: the barrier id
};

void destroy(AsyncOp& op) {
  if (op.destroy) op.destroy(op.payload);
  op = AsyncOp{nullptr, nullptr, nullptr};
}

// Four consecutive warps. wgmma operations are queued here between issue and landing.
struct Warpgroup {
  unsigned nthreads = 0;
  unsigned arrived = 0;  // threads waiting at the current warpgroup collective
  unsigned exited = 0;
  CollectiveFn fn = nullptr;
  const char* name = nullptr;
  const void* operands[128];
  void* results[128];
  bool fenced = false;                        // wgmma.fence since the last wait_group
  std::vector<AsyncOp> open;                  // issued, not committed
  std::deque<std::vector<AsyncOp>> groups;    // committed, oldest first
  unsigned maxnreg = 0;                       // last setmaxnreg value; 0: none yet

  bool pending() const { return !open.empty() || !groups.empty(); }
  void reset(unsigned n) {
    nthreads = n;
    arrived = exited = 0;
    fn = nullptr;
    name = nullptr;
    fenced = false;
    discard();
    maxnreg = 0;
  }
  void discard() {
    for (auto& op : open) destroy(op);
    open.clear();
    for (auto& g : groups) {
      for (auto& op : g) destroy(op);
    }
    groups.clear();
  }
};

struct MBarrier {
  const void* addr;
  unsigned expected;  // arrivals per phase
  unsigned pending;   // arrivals still missing in the current phase
  int64_t tx;         // tx-count of the current phase (may dip below 0 until expect_tx)
  uint64_t phase;     // number of completed phases
};

struct BulkCopy {
  const void* bar;
  unsigned bytes;
  AsyncOp op;
};

struct NamedBarrier {
  unsigned count = 0;    // threads expected in the current phase (from its first arrival)
  unsigned arrived = 0;  // in whole warps of 32
  uint64_t generation = 0;  // completed phases
};

struct Warp {
  unsigned nlanes = 0;
  unsigned arrived = 0;     // lanes waiting at the current collective
  unsigned at_barrier = 0;  // lanes waiting at the block barrier
  unsigned exited = 0;
  CollectiveFn fn = nullptr;
  const char* name = nullptr;
  const void* operands[32];
  void* results[32];
};

struct SmemAlloc {
  const void* key;      // null for the dynamic allocation
  unsigned char* ptr;
  size_t size;
  unsigned char* base;  // the host block holding ptr (freed with kSmemPeriod alignment)
  uint32_t shared;      // its address in the block's shared window (what cvta.to.shared gives)
};

// The emulated shared window gives each allocation only the alignment the GPU promises (16
// bytes, or the variable's own alignment), and its host pointer has the same low 10 bits
// as its window address: alignment a kernel computes on generic pointers (up to the
// 1024-byte period of the 128-byte swizzle) holds exactly for the shared addresses that
// wgmma and TMA swizzle, and is never more than the kernel asked for.
constexpr size_t kSmemPeriod = 1024;

struct LaunchState {
  dim3 grid, block;
  size_t smem_bytes;
  KernelRef kernel;
  Options opts;
  unsigned nthreads;
  std::vector<unsigned> block_order;  // linear block ids
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::string error;

  void record_error(const std::string& e) {
    std::lock_guard<std::mutex> lock(error_mutex);
    if (error.empty()) error = e;
    failed.store(true);
  }
};

size_t page_size() {
  static const size_t p = size_t(sysconf(_SC_PAGESIZE));
  return p;
}

size_t env_size(const char* name, size_t fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const unsigned long long x = std::strtoull(v, &end, 10);
  return (end && *end == '\0' && x > 0) ? size_t(x) : fallback;
}

// Stack per fiber: $FASTATTN_EMU_STACK_KB KiB, else 256 KiB (1 MiB under ASan).
size_t default_stack_bytes() {
#if defined(FA_EMU_ASAN)
  constexpr size_t kKiB = 1024;
#else
  constexpr size_t kKiB = 256;
#endif
  return env_size("FASTATTN_EMU_STACK_KB", kKiB) * 1024;
}

// The stacks of one worker's fibers: one mapping, a guard page below each stack.
class StackArena {
 public:
  StackArena(unsigned n, size_t stack_bytes) {
    const size_t page = page_size();
    stack_ = (stack_bytes + page - 1) / page * page;
    stride_ = stack_ + page;
    bytes_ = stride_ * n;
    void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("fastattn emulation: cannot map fiber stacks");
    base_ = static_cast<char*>(p);
    for (unsigned i = 0; i < n; ++i) mprotect(base_ + i * stride_, page, PROT_NONE);
  }
  ~StackArena() { munmap(base_, bytes_); }
  StackArena(const StackArena&) = delete;
  StackArena& operator=(const StackArena&) = delete;

  char* stack(unsigned i) const { return base_ + i * stride_ + page_size(); }
  size_t stack_size() const { return stack_; }

 private:
  char* base_ = nullptr;
  size_t bytes_ = 0, stack_ = 0, stride_ = 0;
};

void fiber_entry();

// One worker's block executor; reused for every block the worker runs.
struct Block {
  LaunchState& launch;
  const Schedule schedule;
  const unsigned nthreads;
  StackArena stacks;
  std::unique_ptr<Fiber[]> fibers;  // never moved: a ucontext_t may point into itself
  std::vector<Warp> warps;
  std::vector<Warpgroup> warpgroups;
  std::vector<MBarrier> mbarriers;
  std::vector<BulkCopy> bulk_copies;  // in flight, in issue order
  NamedBarrier named[16];
  ReadySet ready;

  uint3 block_idx{0, 0, 0};
  unsigned barrier_arrived = 0;
  unsigned exited = 0;
  Rng rng{0};
  std::vector<SmemAlloc> smem;  // smem[0]: dynamic shared memory
  size_t smem_total = 0;
  size_t smem_window = 0;       // end of the last allocation in the shared window

  Context sched;
  void* sched_fake_stack = nullptr;
  const void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;

  bool failed = false;
  std::string error;

  explicit Block(LaunchState& l)
      : launch(l),
        schedule(l.opts.schedule),
        nthreads(l.nthreads),
        stacks(l.nthreads, default_stack_bytes()),
        fibers(new Fiber[l.nthreads]),
        warps((l.nthreads + 31) / 32),
        warpgroups((l.nthreads + 127) / 128) {
    for (unsigned i = 0; i < nthreads; ++i) {
      Fiber& f = fibers[i];
      f.block = this;
      f.block_dim = l.block;
      f.grid_dim = l.grid;
      f.linear_tid = i;
      f.lane = i % 32;
      f.warp = i / 32;
      f.thread_idx = {i % l.block.x, (i / l.block.x) % l.block.y, i / (l.block.x * l.block.y)};
      f.stack_lo = stacks.stack(i);
      f.stack_size = stacks.stack_size();
    }
    for (size_t w = 0; w < warps.size(); ++w) {
      warps[w].nlanes = std::min(32u, nthreads - unsigned(w) * 32);
    }
  }

  ~Block() {
    discard_async();
    free_smem();
  }

  // Operations of a block abandoned after an error (or checked for at its end).
  void discard_async() {
    for (auto& wg : warpgroups) wg.discard();
    for (unsigned i = 0; i < nthreads; ++i) {
      Fiber& f = fibers[i];
      for (auto& op : f.store_open) destroy(op);
      f.store_open.clear();
      for (auto& g : f.store_groups) {
        for (auto& op : g) destroy(op);
      }
      f.store_groups.clear();
    }
    for (auto& c : bulk_copies) destroy(c.op);
    bulk_copies.clear();
  }

  void free_smem() {
    for (auto& a : smem) ::operator delete(a.base, std::align_val_t(kSmemPeriod));
    smem.clear();
    smem_total = 0;
    smem_window = 0;
  }

  // `at`: the window address, or ~0 for the next one with `align`.
  unsigned char* alloc_smem(const void* key, size_t size, size_t align, size_t at = ~size_t(0)) {
    if (at == ~size_t(0)) at = (smem_window + align - 1) / align * align;
    auto* base = static_cast<unsigned char*>(
        ::operator new(size + kSmemPeriod, std::align_val_t(kSmemPeriod)));
    unsigned char* p = base + at % kSmemPeriod;
    std::memset(p, 0xff, size);
    smem.push_back({key, p, size, base, uint32_t(at)});
    smem_window = at + size;
    smem_total += size;
    return p;
  }

  void run(unsigned linear_block) {
    const dim3 g = launch.grid;
    block_idx = {linear_block % g.x, (linear_block / g.x) % g.y, linear_block / (g.x * g.y)};
    barrier_arrived = 0;
    exited = 0;
    failed = false;
    error.clear();
    rng = Rng{schedule.seed * 0x2545f4914f6cdd1dull + linear_block};
    for (auto& w : warps) {
      w.arrived = 0;
      w.at_barrier = 0;
      w.exited = 0;
      w.fn = nullptr;
      w.name = nullptr;
    }
    for (size_t g = 0; g < warpgroups.size(); ++g) {
      warpgroups[g].reset(std::min(128u, nthreads - unsigned(g) * 128));
    }
    mbarriers.clear();
    discard_async();
    for (auto& nb : named) nb = NamedBarrier{};
    // On the GPU dynamic shared memory follows the static variables: only its 16-byte
    // alignment is promised. It starts 16..112 bytes past a 128-byte boundary here (by
    // schedule), so kernels must align swizzled tiles and TMA buffers themselves.
    alloc_smem(nullptr, launch.smem_bytes, 16, 16 * (1 + schedule.seed % 7));

    ready.reset(nthreads);
    for (unsigned i = 0; i < nthreads; ++i) {
      Fiber& f = fibers[i];
      f.block_idx = block_idx;
      f.state = State::kReady;  // not set_state: counters were reset above
      ready.insert(i);
      f.open_group.clear();
      f.groups.clear();
      f.asan_fake_stack = nullptr;
#if defined(FA_EMU_ASAN)
      // Frames of fibers abandoned after an error keep their redzones poisoned.
      __asan_unpoison_memory_region(f.stack_lo, f.stack_size);
#endif
      f.ctx.init(f.stack_lo, f.stack_size, fiber_entry);
    }

    schedule_loop();
    if (!failed && !bulk_copies.empty()) {
      set_error(nullptr, format("%zu bulk asynchronous copies (TMA) still in flight when the "
                                "block ended: no mbarrier wait covered them",
                                bulk_copies.size()));
    }
    discard_async();
    free_smem();
  }

  void set_state(Fiber& f, State s) {
    if (f.state == State::kAtBarrier) --warps[f.warp].at_barrier;
    if (s == State::kAtBarrier) ++warps[f.warp].at_barrier;
    f.state = s;
    if (s == State::kReady) {
      ready.insert(f.linear_tid);
    } else {
      ready.erase(f.linear_tid);
    }
  }

  bool land_stalled_copy();

  void schedule_loop() {
    for (;;) {
      if (ready.empty()) {
        // As late as allowed: a bulk copy lands when no thread could run without it.
        if (exited == nthreads || !land_stalled_copy()) break;
        if (failed) return;
        continue;
      }
      unsigned next;
      switch (schedule.order) {
        case Order::kForward: next = ready.lowest(); break;
        case Order::kReverse: next = ready.highest(); break;
        default: next = ready.random(rng); break;
      }
      resume(fibers[next]);
      if (failed) return;
    }
    if (exited != nthreads) report_deadlock();
  }

  void resume(Fiber& f) {
    t_current = &f;
#if defined(FA_EMU_ASAN)
    __sanitizer_start_switch_fiber(&sched_fake_stack, f.stack_lo, f.stack_size);
#endif
    Context::swap(sched, f.ctx);
#if defined(FA_EMU_ASAN)
    __sanitizer_finish_switch_fiber(sched_fake_stack, nullptr, nullptr);
#endif
    t_current = nullptr;
  }

  std::string where(const Fiber* f) const {
    char buf[160];
    std::snprintf(buf, sizeof buf, "block (%u,%u,%u)", block_idx.x, block_idx.y, block_idx.z);
    std::string s = buf;
    if (f) {
      std::snprintf(buf, sizeof buf, " thread (%u,%u,%u) [warp %u lane %u]", f->thread_idx.x,
                    f->thread_idx.y, f->thread_idx.z, f->warp, f->lane);
      s += buf;
    }
    return s;
  }

  void set_error(const Fiber* f, const std::string& msg) {
    if (failed) return;
    failed = true;
    error = "fastattn emulation: " + where(f) + ": " + msg + " [" + schedule.describe() + "]";
  }

  void report_deadlock() {
    unsigned at_barrier = 0, at_collective = 0, at_group = 0, at_mbar = 0, at_named = 0;
    const char* collective = nullptr;
    const char* group = nullptr;
    const Fiber* mbar_waiter = nullptr;
    const Fiber* named_waiter = nullptr;
    for (unsigned i = 0; i < nthreads; ++i) {
      const Fiber& f = fibers[i];
      switch (f.state) {
        case State::kAtBarrier: ++at_barrier; break;
        case State::kAtCollective:
          ++at_collective;
          if (!collective) collective = warps[f.warp].name;
          break;
        case State::kAtGroup:
          ++at_group;
          if (!group) group = warpgroups[f.warp / 4].name;
          break;
        case State::kAtMbarrier:
          ++at_mbar;
          if (!mbar_waiter) mbar_waiter = &f;
          break;
        case State::kAtNamed:
          ++at_named;
          if (!named_waiter) named_waiter = &f;
          break;
        default: break;
      }
    }
    char buf[768];
    int n = std::snprintf(buf, sizeof buf,
                          "deadlock: no thread can run (%u at sync_block, %u at warp collectives"
                          "%s%s, %u at warpgroup collectives%s%s, %u at mbarrier waits, %u at "
                          "named barriers, %u exited)",
                          at_barrier, at_collective, collective ? " e.g. " : "",
                          collective ? collective : "", at_group, group ? " e.g. " : "",
                          group ? group : "", at_mbar, at_named, exited);
    if (mbar_waiter && n > 0 && size_t(n) < sizeof buf) {
      for (const MBarrier& m : mbarriers) {
        if (m.addr != mbar_waiter->wait_bar) continue;
        n += std::snprintf(buf + n, sizeof buf - n,
                           "; thread %u waits for parity %u of mbarrier %p: phase %llu, %u of "
                           "%u arrivals pending, tx-count %lld (no copy in flight)",
                           mbar_waiter->linear_tid, mbar_waiter->wait_parity, m.addr,
                           (unsigned long long)m.phase, m.pending, m.expected, (long long)m.tx);
      }
    }
    if (named_waiter && n > 0 && size_t(n) < sizeof buf) {
      const NamedBarrier& nb = named[named_waiter->named_id];
      std::snprintf(buf + n, sizeof buf - n,
                    "; thread %u waits at named barrier %u: %u of %u threads arrived",
                    named_waiter->linear_tid, named_waiter->named_id, nb.arrived, nb.count);
    }
    set_error(nullptr, buf);
  }
};

Fiber* current_fiber() { return static_cast<Fiber*>(&current()); }

// Back to the scheduler. `finished`: the fiber will never be resumed.
void yield(Fiber* f, bool finished = false) {
  Block* b = f->block;
#if defined(FA_EMU_ASAN)
  __sanitizer_start_switch_fiber(finished ? nullptr : &f->asan_fake_stack, b->sched_stack_bottom,
                                 b->sched_stack_size);
#else
  (void)finished;
#endif
  Context::swap(f->ctx, b->sched);
#if defined(FA_EMU_ASAN)
  __sanitizer_finish_switch_fiber(f->asan_fake_stack, nullptr, nullptr);
#endif
}

[[noreturn]] void abort_fiber(Fiber* f, const std::string& msg) {
  f->block->set_error(f, msg);
  yield(f, /*finished=*/true);
  std::abort();  // never resumed
}

std::string vformat(const char* fmt, va_list ap) {
  char buf[512];
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  return buf;
}

std::string format(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string s = vformat(fmt, ap);
  va_end(ap);
  return s;
}

void land_all(Fiber* f) {
  for (const Copy& c : f->open_group) land(c);
  f->open_group.clear();
  for (auto& g : f->groups) {
    for (const Copy& c : g) land(c);
  }
  f->groups.clear();
}

void land_bulk_copy(Block& b, size_t i);
void land_oldest_wgmma(Warpgroup& wg);

// The oldest bulk store of the thread (committed groups first, in issue order).
void land_oldest_store(Fiber* f) {
  std::vector<AsyncOp>& q = f->store_groups.empty() ? f->store_open : f->store_groups.front();
  if (!q.empty()) {
    AsyncOp op = q.front();
    q.erase(q.begin());
    op.run(op.payload);
    destroy(op);
  }
  if (!f->store_groups.empty() && f->store_groups.front().empty()) f->store_groups.pop_front();
}

bool stores_pending(const Fiber* f) { return !f->store_open.empty() || !f->store_groups.empty(); }

// AsyncTiming::kRandom: each pending copy of this thread lands here with probability 1/2.
void maybe_land(Fiber* f) {
  Block* b = f->block;
  if (b->schedule.async_timing != AsyncTiming::kRandom) return;
  auto sweep = [&](std::vector<Copy>& v) {
    size_t kept = 0;
    for (size_t i = 0; i < v.size(); ++i) {
      if (b->rng.coin()) {
        land(v[i]);
      } else {
        v[kept++] = v[i];
      }
    }
    v.resize(kept);
  };
  sweep(f->open_group);
  for (auto& g : f->groups) sweep(g);
  // Bulk copies: each lands with probability 1/2 (no order between copies is guaranteed).
  for (size_t i = 0; i < b->bulk_copies.size();) {
    if (b->rng.coin()) {
      land_bulk_copy(*b, i);
    } else {
      ++i;
    }
  }
  while (stores_pending(f) && b->rng.coin()) land_oldest_store(f);
  // The warpgroup's wgmma operations land in issue order: each further one with
  // probability 1/2.
  if (f->warp / 4 < b->warpgroups.size()) {
    Warpgroup& wg = b->warpgroups[f->warp / 4];
    while (wg.pending() && b->rng.coin()) land_oldest_wgmma(wg);
  }
}

void fiber_exit(Fiber* f) {
  Block* b = f->block;
  land_all(f);
  if (stores_pending(f)) {
    abort_fiber(f, "thread exited with bulk stores (TMA) in flight: bulk_wait_group_read<0>() "
                   "must cover them before the block's shared memory goes away");
  }
  b->set_state(*f, State::kExited);
  ++b->exited;
  Warp& w = b->warps[f->warp];
  ++w.exited;
  if (b->barrier_arrived > 0) {
    abort_fiber(f, format("thread exited while %u thread(s) of the block wait at sync_block "
                          "(bar.sync 0); the barrier can never complete",
                          b->barrier_arrived));
  }
  if (w.arrived > 0) {
    abort_fiber(f, format("thread exited while %u lane(s) of its warp wait at %s; the "
                          "collective can never complete",
                          w.arrived, w.name));
  }
  if (f->warp / 4 < b->warpgroups.size()) {
    Warpgroup& wg = b->warpgroups[f->warp / 4];
    ++wg.exited;
    if (wg.arrived > 0) {
      abort_fiber(f, format("thread exited while %u thread(s) of its warpgroup wait at %s; the "
                            "collective can never complete",
                            wg.arrived, wg.name));
    }
    if (wg.pending()) {
      abort_fiber(f, "thread exited with wgmma operations of its warpgroup in flight (no "
                     "wgmma.wait_group covered them); the accumulator registers are gone");
    }
  }
  yield(f, /*finished=*/true);
  std::abort();  // never resumed
}

void fiber_entry() {
  Fiber* f = current_fiber();
  Block* b = f->block;
#if defined(FA_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &b->sched_stack_bottom, &b->sched_stack_size);
#endif
  // abort_fiber never returns: call it after the handler has finished, or the
  // exception would stay "being handled" on this OS thread (and leak).
  std::string error;
  try {
    b->launch.kernel.fn(b->launch.kernel.ctx);
  } catch (const std::exception& e) {
    error = std::string("kernel threw: ") + e.what();
  } catch (...) {
    error = "kernel threw a non-standard exception";
  }
  if (!error.empty()) abort_fiber(f, error);
  fiber_exit(f);
}

bool in_smem(const Block& b, const void* p, size_t bytes) {
  const auto* q = static_cast<const unsigned char*>(p);
  for (const auto& a : b.smem) {
    if (q >= a.ptr && bytes <= a.size && q <= a.ptr + (a.size - bytes)) return true;
  }
  return false;
}

void worker_main(LaunchState* launch) {
  try {
    Block block(*launch);
    while (!launch->failed.load(std::memory_order_relaxed)) {
      const size_t i = launch->next.fetch_add(1);
      if (i >= launch->block_order.size()) break;
      block.run(launch->block_order[i]);
      if (block.failed) launch->record_error(block.error);
    }
  } catch (const std::exception& e) {
    launch->record_error(std::string("fastattn emulation: ") + e.what());
  }
}

unsigned resolve_workers(int requested, size_t nblocks) {
  size_t n = requested > 0 ? size_t(requested) : 0;
  if (!n) n = env_size("FASTATTN_EMU_WORKERS", 0);
  if (!n) n = std::max(1u, std::thread::hardware_concurrency());
  return unsigned(std::min(n, nblocks));
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Primitives
// ---------------------------------------------------------------------------------------

void fail(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  const std::string msg = vformat(fmt, ap);
  va_end(ap);
  if (!t_current) throw std::logic_error("fastattn emulation: " + msg);
  abort_fiber(current_fiber(), msg);
}

void block_barrier() {
  Fiber* f = current_fiber();
  Block& b = *f->block;
  maybe_land(f);
  if (b.exited > 0) {
    abort_fiber(f, format("sync_block (bar.sync 0) reached while %u thread(s) of the block have "
                          "exited; the barrier can never complete",
                          b.exited));
  }
  const Warp& w = b.warps[f->warp];
  if (w.arrived > 0) {
    abort_fiber(f, format("sync_block (bar.sync 0) reached while %u lane(s) of this warp wait "
                          "at %s; neither can complete",
                          w.arrived, w.name));
  }
  if (++b.barrier_arrived == b.nthreads) {
    b.barrier_arrived = 0;
    for (unsigned i = 0; i < b.nthreads; ++i) {
      if (b.fibers[i].state == State::kAtBarrier) b.set_state(b.fibers[i], State::kReady);
    }
  } else {
    b.set_state(*f, State::kAtBarrier);
  }
  yield(f);
}

void warp_collective(const char* name, CollectiveFn fn, const void* operand, void* result) {
  Fiber* f = current_fiber();
  Block& b = *f->block;
  Warp& w = b.warps[f->warp];
  maybe_land(f);
  if (w.nlanes != 32) {
    abort_fiber(f, format("%s in a partial warp (%u lanes): warp collectives take the full "
                          "mask, so the block size must be a multiple of 32",
                          name, w.nlanes));
  }
  if (w.exited > 0) {
    abort_fiber(f, format("%s reached while %u lane(s) of this warp have exited; the "
                          "collective can never complete",
                          name, w.exited));
  }
  if (w.arrived > 0 && (w.fn != fn || std::strcmp(w.name, name) != 0)) {
    abort_fiber(f, format("warp divergence: this lane reached %s while %u lane(s) of its warp "
                          "wait at %s",
                          name, w.arrived, w.name));
  }
  if (w.at_barrier > 0) {
    abort_fiber(f, format("%s reached while %u lane(s) of this warp wait at sync_block "
                          "(bar.sync 0); neither can complete",
                          name, w.at_barrier));
  }
  w.fn = fn;
  w.name = name;
  w.operands[f->lane] = operand;
  w.results[f->lane] = result;
  if (++w.arrived == 32) {
    fn(w.operands, w.results);
    w.arrived = 0;
    for (unsigned l = 0; l < 32; ++l) {
      Fiber& lane = b.fibers[f->warp * 32 + l];
      if (lane.state == State::kAtCollective) b.set_state(lane, State::kReady);
    }
  } else {
    b.set_state(*f, State::kAtCollective);
  }
  yield(f);
}

void cp_async(void* dst, const void* src, unsigned cp_size, unsigned src_size) {
  Fiber* f = current_fiber();
  Block& b = *f->block;
  if (cp_size != 4 && cp_size != 8 && cp_size != 16) {
    abort_fiber(f, format("cp.async: cp-size %u is not 4, 8 or 16", cp_size));
  }
  if (src_size > cp_size) {
    abort_fiber(f, format("cp.async: src-size %u exceeds cp-size %u", src_size, cp_size));
  }
  if (reinterpret_cast<uintptr_t>(dst) % cp_size || reinterpret_cast<uintptr_t>(src) % cp_size) {
    abort_fiber(f, format("cp.async: addresses dst=%p src=%p are not %u-byte aligned", dst, src,
                          cp_size));
  }
  if (!in_smem(b, dst, cp_size)) {
    abort_fiber(f, format("cp.async: destination %p (%u bytes) is not in the block's shared "
                          "memory",
                          dst, cp_size));
  }
  if (src_size && in_smem(b, src, src_size)) {
    abort_fiber(f, format("cp.async: source %p is shared memory; it must be global", src));
  }
  const Copy c{dst, src, cp_size, src_size};
  switch (b.schedule.async_timing) {
    case AsyncTiming::kAtIssue: land(c); break;
    case AsyncTiming::kAtWait: f->open_group.push_back(c); break;
    case AsyncTiming::kRandom:
      f->open_group.push_back(c);
      maybe_land(f);
      break;
  }
}

void cp_async_commit() {
  Fiber* f = current_fiber();
  f->groups.emplace_back(std::move(f->open_group));
  f->open_group.clear();
  maybe_land(f);
}

void cp_async_wait(unsigned n) {
  Fiber* f = current_fiber();
  maybe_land(f);
  while (f->groups.size() > n) {
    for (const Copy& c : f->groups.front()) land(c);
    f->groups.pop_front();
  }
}

bool is_shared(const void* p, size_t bytes) { return in_smem(*current_fiber()->block, p, bytes); }

uint32_t shared_address(const void* p) {
  Fiber* f = current_fiber();
  const auto* q = static_cast<const unsigned char*>(p);
  for (const auto& a : f->block->smem) {
    if (q >= a.ptr && q < a.ptr + a.size) return a.shared + uint32_t(q - a.ptr);
  }
  for (const auto& a : f->block->smem) {  // one past the end
    if (q == a.ptr + a.size) return a.shared + uint32_t(a.size);
  }
  abort_fiber(f, format("cvta.to.shared: %p is not in the block's shared memory", p));
}

void* shared_pointer(uint32_t addr, size_t bytes, const char* what) {
  Fiber* f = current_fiber();
  for (const auto& a : f->block->smem) {
    if (addr >= a.shared && bytes <= a.size && addr - a.shared <= a.size - bytes) {
      return a.ptr + (addr - a.shared);
    }
  }
  abort_fiber(f, format("%s: shared address 0x%x (%zu bytes) is outside the block's shared "
                        "memory allocations",
                        what, addr, bytes));
}

void* dynamic_smem() { return current_fiber()->block->smem.at(0).ptr; }

void* static_smem(const void* key, size_t size, size_t align) {
  Fiber* f = current_fiber();
  Block& b = *f->block;
  for (size_t i = 1; i < b.smem.size(); ++i) {
    if (b.smem[i].key == key) return b.smem[i].ptr;
  }
  if (b.smem_window + align + size > kMaxSharedBytes) {
    abort_fiber(f, format("shared memory exhausted: %zu bytes in use, %zu more requested, limit "
                          "%zu",
                          b.smem_total, size, kMaxSharedBytes));
  }
  return b.alloc_smem(key, size, align);
}

// ---------------------------------------------------------------------------------------
// Hopper: warpgroup collectives, wgmma queues, mbarriers, bulk copies, named barriers
// ---------------------------------------------------------------------------------------
namespace {

Warpgroup& warpgroup_of(Fiber* f) {
  Block& b = *f->block;
  Warpgroup& wg = b.warpgroups[f->warp / 4];
  if (wg.nthreads != 128) {
    abort_fiber(f, format("warpgroup primitive in a partial warpgroup (%u threads): the block "
                          "size must be a multiple of 128",
                          wg.nthreads));
  }
  return wg;
}

void land_oldest_wgmma(Warpgroup& wg) {
  std::vector<AsyncOp>& q = wg.groups.empty() ? wg.open : wg.groups.front();
  if (!q.empty()) {
    AsyncOp op = q.front();
    q.erase(q.begin());
    op.run(op.payload);
    destroy(op);
  }
  if (!wg.groups.empty() && wg.groups.front().empty()) wg.groups.pop_front();
}

void land_all_wgmma(Warpgroup& wg) {
  while (wg.pending()) land_oldest_wgmma(wg);
}

MBarrier* find_mbarrier(Block& b, const void* bar) {
  for (auto& m : b.mbarriers) {
    if (m.addr == bar) return &m;
  }
  return nullptr;
}

// The 8 bytes of an mbarrier hold this word (changing with the phase) in the emulation: the
// object may only be touched by mbarrier instructions, so any other value means ordinary
// stores (or a TMA box) overwrote it.
uint64_t mbarrier_word(const MBarrier& m) { return 0x6d62617272696572ull ^ m.phase; }

bool mbarrier_intact(const MBarrier& m) {
  uint64_t word;
  std::memcpy(&word, m.addr, 8);
  return word == mbarrier_word(m);
}

MBarrier& armed_mbarrier(Fiber* f, const void* bar, const char* what) {
  MBarrier* m = find_mbarrier(*f->block, bar);
  if (!m) {
    abort_fiber(f, format("%s on mbarrier %p, which was never initialised (mbarrier.init) in "
                          "this block",
                          what, bar));
  }
  if (!mbarrier_intact(*m)) {
    abort_fiber(f, format("%s on mbarrier %p, whose 8 bytes were overwritten since its "
                          "mbarrier.init (only mbarrier instructions may touch it)",
                          what, bar));
  }
  return *m;
}

// Completes the current phase when nothing is missing; wakes the threads waiting for it.
void check_phase(Block& b, MBarrier& m) {
  if (m.pending != 0 || m.tx != 0) return;
  ++m.phase;
  const uint64_t word = mbarrier_word(m);
  std::memcpy(const_cast<void*>(m.addr), &word, 8);
  m.pending = m.expected;
  for (unsigned i = 0; i < b.nthreads; ++i) {
    Fiber& t = b.fibers[i];
    if (t.state == State::kAtMbarrier && t.wait_bar == m.addr &&
        (m.phase & 1) != t.wait_parity) {
      b.set_state(t, State::kReady);
    }
  }
}

// The tx-count's range is +-(2^20 - 1).
void add_tx(Fiber* f, MBarrier& m, unsigned bytes) {
  m.tx += bytes;
  if (m.tx >= (int64_t(1) << 20)) {
    abort_fiber(f, format("mbarrier %p: tx-count %lld exceeds 2^20 - 1 bytes in one phase", m.addr,
                          (long long)m.tx));
  }
}

void land_bulk_copy(Block& b, size_t i) {
  BulkCopy c = b.bulk_copies[i];
  b.bulk_copies.erase(b.bulk_copies.begin() + std::ptrdiff_t(i));
  c.op.run(c.op.payload);
  destroy(c.op);
  MBarrier* m = find_mbarrier(b, c.bar);
  if (!m) {
    b.set_error(nullptr, format("a bulk copy completed on mbarrier %p, which is no longer "
                                "initialised",
                                c.bar));
    return;
  }
  if (!mbarrier_intact(*m)) {
    b.set_error(nullptr, format("a bulk copy completed on mbarrier %p, whose 8 bytes were "
                                "overwritten since its mbarrier.init",
                                c.bar));
    return;
  }
  m->tx -= c.bytes;
  check_phase(b, *m);
}

void wgmma_fence_fn(const void* const*, void* const*) {
  warpgroup_of(current_fiber()).fenced = true;
}

void wgmma_commit_fn(const void* const*, void* const*) {
  Warpgroup& wg = warpgroup_of(current_fiber());
  wg.groups.emplace_back(std::move(wg.open));
  wg.open.clear();
}

void wgmma_wait_fn(const void* const* ops, void* const*) {
  Warpgroup& wg = warpgroup_of(current_fiber());
  const unsigned n = *static_cast<const unsigned*>(ops[0]);
  for (unsigned i = 1; i < 128; ++i) {
    if (*static_cast<const unsigned*>(ops[i]) != n) {
      fail("wgmma.wait_group: thread %u of the warpgroup waits for %u groups, thread 0 for %u "
           "(the immediate must be warpgroup-uniform)",
           i, *static_cast<const unsigned*>(ops[i]), n);
    }
  }
  // Each call lands one operation or drops an empty group.
  while (wg.groups.size() > n) land_oldest_wgmma(wg);
  // Registers the landed operations wrote may now be read and rewritten: the next wgmma
  // needs a fence again.
  wg.fenced = false;
}

struct MaxnregOperand {
  unsigned regs;
  bool inc;
};

void setmaxnreg_fn(const void* const* ops, void* const*) {
  Warpgroup& wg = warpgroup_of(current_fiber());
  const auto& o0 = *static_cast<const MaxnregOperand*>(ops[0]);
  for (unsigned i = 1; i < 128; ++i) {
    const auto& o = *static_cast<const MaxnregOperand*>(ops[i]);
    if (o.regs != o0.regs || o.inc != o0.inc) {
      fail("setmaxnreg: thread %u of the warpgroup asks for %s %u, thread 0 for %s %u (the "
           "instruction is warpgroup-uniform)",
           i, o.inc ? "inc" : "dec", o.regs, o0.inc ? "inc" : "dec", o0.regs);
    }
  }
  if (o0.regs < 24 || o0.regs > 256 || o0.regs % 8 != 0) {
    fail("setmaxnreg: %u registers; the count must be a multiple of 8 in [24, 256]", o0.regs);
  }
  if (wg.maxnreg && (o0.inc ? o0.regs < wg.maxnreg : o0.regs > wg.maxnreg)) {
    fail("setmaxnreg.%s.sync.aligned.u32 %u after a setting of %u: .inc may not lower and .dec "
         "may not raise the count",
         o0.inc ? "inc" : "dec", o0.regs, wg.maxnreg);
  }
  wg.maxnreg = o0.regs;
}

}  // namespace

bool Block::land_stalled_copy() {
  if (bulk_copies.empty()) return false;
  land_bulk_copy(*this, 0);
  return true;
}

void warpgroup_collective(const char* name, CollectiveFn fn, const void* operand, void* result) {
  Fiber* f = current_fiber();
  Block& b = *f->block;
  maybe_land(f);
  Warpgroup& wg = warpgroup_of(f);
  if (wg.exited > 0) {
    abort_fiber(f, format("%s reached while %u thread(s) of this warpgroup have exited; the "
                          "collective can never complete",
                          name, wg.exited));
  }
  if (wg.arrived > 0 && (wg.fn != fn || std::strcmp(wg.name, name) != 0)) {
    abort_fiber(f, format("warpgroup divergence: this thread reached %s while %u thread(s) of its "
                          "warpgroup wait at %s",
                          name, wg.arrived, wg.name));
  }
  const unsigned rank = f->linear_tid % 128;
  wg.fn = fn;
  wg.name = name;
  wg.operands[rank] = operand;
  wg.results[rank] = result;
  if (++wg.arrived == 128) {
    fn(wg.operands, wg.results);
    wg.arrived = 0;
    const unsigned first = (f->warp / 4) * 128;
    for (unsigned t = first; t < first + 128; ++t) {
      if (b.fibers[t].state == State::kAtGroup) b.set_state(b.fibers[t], State::kReady);
    }
  } else {
    b.set_state(*f, State::kAtGroup);
  }
  yield(f);
}

void wgmma_issue(AsyncOp op) {
  Fiber* f = current_fiber();
  Warpgroup& wg = warpgroup_of(f);
  if (!wg.fenced) {
    destroy(op);
    abort_fiber(f, "wgmma.mma_async issued without a wgmma.fence since the warpgroup started or "
                   "since its last wgmma.wait_group: the fence must order the warpgroup's "
                   "register accesses before the asynchronous read of accumulators and A");
  }
  wg.open.push_back(op);
  if (f->block->schedule.async_timing == AsyncTiming::kAtIssue) land_all_wgmma(wg);
}

void wgmma_fence() {
  warpgroup_collective("wgmma.fence.sync.aligned", wgmma_fence_fn, nullptr, nullptr);
}

void wgmma_commit() {
  warpgroup_collective("wgmma.commit_group.sync.aligned", wgmma_commit_fn, nullptr, nullptr);
}

void wgmma_wait(unsigned n) {
  warpgroup_collective("wgmma.wait_group.sync.aligned", wgmma_wait_fn, &n, nullptr);
}

void setmaxnreg(unsigned regs, bool inc) {
  const MaxnregOperand op{regs, inc};
  warpgroup_collective(inc ? "setmaxnreg.inc.sync.aligned.u32" : "setmaxnreg.dec.sync.aligned.u32",
                       setmaxnreg_fn, &op, nullptr);
}

unsigned elect_lane() {
  Block& b = *current_fiber()->block;
  switch (b.schedule.order) {
    case Order::kForward: return 0;
    case Order::kReverse: return 31;
    default: return b.rng.below(32);
  }
}

void mbarrier_init(void* bar, unsigned count) {
  Fiber* f = current_fiber();
  Block& b = *f->block;
  if (reinterpret_cast<uintptr_t>(bar) % 8 != 0 || !in_smem(b, bar, 8)) {
    abort_fiber(f, format("mbarrier.init: %p is not an 8-byte aligned shared-memory address", bar));
  }
  if (count == 0 || count >= (1u << 20)) {
    abort_fiber(f, format("mbarrier.init: expected count %u is outside [1, 2^20 - 1]", count));
  }
  MBarrier* m = find_mbarrier(b, bar);
  if (m) {
    for (unsigned i = 0; i < b.nthreads; ++i) {
      if (b.fibers[i].state == State::kAtMbarrier && b.fibers[i].wait_bar == bar) {
        abort_fiber(f, format("mbarrier.init on %p while thread %u waits on it", bar, i));
      }
    }
    for (const auto& c : b.bulk_copies) {
      if (c.bar == bar) {
        abort_fiber(f, format("mbarrier.init on %p while a bulk copy completing on it is in "
                              "flight",
                              bar));
      }
    }
    *m = MBarrier{bar, count, count, 0, 0};
  } else {
    b.mbarriers.push_back(MBarrier{bar, count, count, 0, 0});
  }
  const uint64_t word = mbarrier_word(*find_mbarrier(b, bar));
  std::memcpy(bar, &word, 8);
}

uint64_t mbarrier_arrive(void* bar, unsigned tx_bytes) {
  Fiber* f = current_fiber();
  Block& b = *f->block;
  maybe_land(f);
  MBarrier& m = armed_mbarrier(f, bar, tx_bytes ? "mbarrier.arrive.expect_tx" : "mbarrier.arrive");
  if (m.pending == 0) {
    abort_fiber(f, format("mbarrier.arrive on %p: all %u expected arrivals of phase %llu already "
                          "happened (more arrivals than the init count)",
                          bar, m.expected, (unsigned long long)m.phase));
  }
  const uint64_t phase = m.phase;
  add_tx(f, m, tx_bytes);
  --m.pending;
  check_phase(b, m);
  yield(f);
  return phase;
}

void mbarrier_expect_tx(void* bar, unsigned tx_bytes) {
  Fiber* f = current_fiber();
  MBarrier& m = armed_mbarrier(f, bar, "mbarrier.expect_tx");
  add_tx(f, m, tx_bytes);
  // A copy may have landed first (tx-count below 0): this can complete the phase.
  check_phase(*f->block, m);
}

void mbarrier_wait_parity(void* bar, unsigned parity) {
  Fiber* f = current_fiber();
  Block& b = *f->block;
  maybe_land(f);
  MBarrier& m = armed_mbarrier(f, bar, "mbarrier.try_wait.parity");
  if ((m.phase & 1) == (parity & 1)) {
    f->wait_bar = bar;
    f->wait_parity = parity & 1;
    b.set_state(*f, State::kAtMbarrier);
  }
  yield(f);
}

void bulk_copy_issue(void* bar, unsigned bytes, AsyncOp op) {
  Fiber* f = current_fiber();
  Block& b = *f->block;
  if (!find_mbarrier(b, bar)) {
    destroy(op);
    abort_fiber(f, format("bulk copy (cp.async.bulk) completing on mbarrier %p, which was never "
                          "initialised in this block",
                          bar));
  }
  b.bulk_copies.push_back(BulkCopy{bar, bytes, op});
  if (b.schedule.async_timing == AsyncTiming::kAtIssue) land_bulk_copy(b, b.bulk_copies.size() - 1);
  maybe_land(f);
}

void bulk_store_issue(AsyncOp op) {
  Fiber* f = current_fiber();
  f->store_open.push_back(op);
  if (f->block->schedule.async_timing == AsyncTiming::kAtIssue) {
    while (stores_pending(f)) land_oldest_store(f);
  }
  maybe_land(f);
}

void bulk_commit() {
  Fiber* f = current_fiber();
  f->store_groups.emplace_back(std::move(f->store_open));
  f->store_open.clear();
  maybe_land(f);
}

void bulk_wait(unsigned n) {
  Fiber* f = current_fiber();
  maybe_land(f);
  while (f->store_groups.size() > n) land_oldest_store(f);
}

namespace {

struct NamedOperand {
  unsigned id, count;
};

// The last lane of the warp: the warp arrives as 32 threads (bar counts whole warps).
void named_barrier_fn(const void* const* ops, void* const* res) {
  Fiber* f = current_fiber();
  Block& b = *f->block;
  const auto& o0 = *static_cast<const NamedOperand*>(ops[0]);
  for (unsigned lane = 1; lane < 32; ++lane) {
    const auto& o = *static_cast<const NamedOperand*>(ops[lane]);
    if (o.id != o0.id || o.count != o0.count) {
      fail("bar %u, %u in lane %u, bar %u, %u in lane 0: the lanes of a warp must name the same "
           "barrier and count",
           o.id, o.count, lane, o0.id, o0.count);
    }
  }
  NamedBarrier& nb = b.named[o0.id];
  if (nb.arrived == 0) {
    nb.count = o0.count;
  } else if (nb.count != o0.count) {
    fail("bar %u, %u: %u thread(s) arrived at this barrier's current phase with a thread count "
         "of %u",
         o0.id, o0.count, nb.arrived, nb.count);
  }
  const uint64_t generation = nb.generation;
  nb.arrived += 32;
  if (nb.arrived == nb.count) {
    nb.arrived = 0;
    ++nb.generation;
    for (unsigned i = 0; i < b.nthreads; ++i) {
      Fiber& t = b.fibers[i];
      if (t.state == State::kAtNamed && t.named_id == o0.id) b.set_state(t, State::kReady);
    }
  }
  for (unsigned lane = 0; lane < 32; ++lane) *static_cast<uint64_t*>(res[lane]) = generation;
}

}  // namespace

void named_barrier(unsigned id, unsigned count, bool wait) {
  Fiber* f = current_fiber();
  Block& b = *f->block;
  const char* what = wait ? "bar.sync" : "bar.arrive";
  if (id == 0 || id > 15) {
    abort_fiber(f, format("%s %u: named barrier ids are 1..15 (0 is sync_block's)", what, id));
  }
  if (count == 0 || count % 32 != 0 || count > b.nthreads) {
    abort_fiber(f, format("%s %u, %u: the thread count must be a non-zero multiple of 32 and at "
                          "most the block size (%u)",
                          what, id, count, b.nthreads));
  }
  // A warp collective: every lane of the warp executes the (.aligned) instruction.
  const NamedOperand op{id, count};
  uint64_t generation = 0;
  warp_collective(wait ? "bar.sync (named barrier)" : "bar.arrive (named barrier)",
                  named_barrier_fn, &op, &generation);
  while (wait && b.named[id].generation == generation) {
    f->named_id = id;
    b.set_state(*f, State::kAtNamed);
    yield(f);
  }
}

// ---------------------------------------------------------------------------------------
// Launch
// ---------------------------------------------------------------------------------------

void launch(dim3 grid, dim3 block, size_t smem_bytes, KernelRef kernel) {
  if (t_current) {
    throw std::logic_error("fastattn emulation: launching a kernel from a kernel is not supported");
  }
  const uint64_t nthreads = uint64_t(block.x) * block.y * block.z;
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || block.x > 1024 || block.y > 1024 ||
      block.z > 64 || nthreads > 1024) {
    throw std::invalid_argument(format("fastattn emulation: invalid block size (%u,%u,%u)",
                                       block.x, block.y, block.z));
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 ||
      grid.z > 65535 || nblocks > 0xffffffffull) {
    throw std::invalid_argument(format("fastattn emulation: invalid grid size (%u,%u,%u)",
                                       grid.x, grid.y, grid.z));
  }
  if (smem_bytes > kMaxSharedBytes) {
    throw std::invalid_argument(format("fastattn emulation: %zu bytes of dynamic shared memory "
                                       "exceed the %zu-byte limit",
                                       smem_bytes, kMaxSharedBytes));
  }

  LaunchState st;
  st.grid = grid;
  st.block = block;
  st.smem_bytes = smem_bytes;
  st.kernel = kernel;
  st.opts = options();
  st.nthreads = unsigned(nthreads);
  st.block_order.resize(nblocks);
  for (size_t i = 0; i < nblocks; ++i) st.block_order[i] = unsigned(i);
  switch (st.opts.schedule.order) {
    case Order::kForward: break;
    case Order::kReverse: std::reverse(st.block_order.begin(), st.block_order.end()); break;
    case Order::kShuffle: {
      Rng rng{st.opts.schedule.seed ^ 0x6a09e667f3bcc908ull};
      shuffle(st.block_order, rng);
      break;
    }
  }

  const unsigned nworkers = resolve_workers(st.opts.num_workers, nblocks);
  std::vector<std::thread> workers;
  workers.reserve(nworkers - 1);
  try {
    for (unsigned w = 1; w < nworkers; ++w) workers.emplace_back(worker_main, &st);
  } catch (const std::system_error&) {
    // Fewer threads than asked: the ones running (and this one) take all blocks.
  }
  worker_main(&st);
  for (auto& t : workers) t.join();
  if (st.failed.load()) throw std::runtime_error(st.error);
}

}  // namespace fastattn::emu
