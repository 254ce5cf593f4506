#pragma once
// Warpgroup MMA (wgmma.mma_async, sm_90a): D[64 x N] (+)= A[64 x 16] * B[16 x N] per
// instruction, issued by the 128 threads of a warpgroup together, fp16/bf16 inputs, fp32
// accumulators in registers. A comes from shared memory (wgmma_ss) or registers
// (wgmma_rs); B always from shared memory, through a matrix descriptor. Also setmaxnreg.
//
// Asynchrony. The instruction only starts the MMA: it reads its shared-memory operands, the
// A registers and the accumulators, and writes the accumulators, at some moment before the
// wgmma_wait_group<n>() that covers it (wgmma_commit_group() closes a group of issued
// MMAs; wait_group<n> waits until at most n groups are pending). So: wgmma_fence() before
// the first wgmma of a batch (it orders the warpgroup's earlier register accesses before
// the asynchronous ones; needed again after every wait whose results were touched), no
// access to the accumulators or A registers and no write to the operand tiles until the
// wait, and wgmma_fence_operand(acc) around the batch so that nvcc keeps the accumulator
// registers in place. MMAs on the same accumulators between fence and wait chain in order.
// The emulation lands each MMA (reading A from shared memory or the A registers, and the
// accumulators) at issue, at a random synchronisation point of the warpgroup, or at its
// wait (per the schedule); it requires a fence since the warpgroup's last wait (stricter
// than the ISA, which only needs it when registers were touched). Not detected there: a
// write to the accumulators between the fence and the MMA.
//
// Fragments (thread r of the warpgroup: warp w = r / 32, g = (r % 32) / 4, t = r % 4).
//   accumulator d[N/2]: for j < N/8, d[4j + 0, 1] = D[16w + g][8j + 2t, + 1],
//                                     d[4j + 2, 3] = D[16w + g + 8][8j + 2t, + 1]
//   A registers a[4] (two 16-bit elements each, low half first):
//     a[0] = A[16w + g][2t, 2t + 1]      a[1] = A[16w + g + 8][2t, 2t + 1]
//     a[2] = A[16w + g][2t + 8, 2t + 9]  a[3] = A[16w + g + 8][2t + 8, 2t + 9]
// (each warp's 16 rows are laid out like mma.sync m16n8k16's A and C; mma.h).
//
// Shared-memory operands (64-bit matrix descriptor, make_smem_desc). An operand is MN x 16
// (A: M = 64 rows of K; B: N columns of K), in 16-bit elements, stored "K-major" (the 16 K
// values of a row contiguous) or "MN-major" (MN contiguous), in units of core matrices of
// 8 rows x 16 bytes. The byte offset of element (mn, k) from the start address, before the
// swizzle of the address (swizzle.h; W = its row width in bytes):
//   K-major,  no swizzle: (mn / 8) * SBO + (k / 8) * LBO + (mn % 8) * 16 + (k % 8) * 2
//   K-major,  swizzle W:  (mn / 8) * SBO + (mn % 8) * W + k * 2          (LBO unused)
//   MN-major, no swizzle: (mn / 8) * SBO + (k / 8) * LBO + (k % 8) * 16 + (mn % 8) * 2
//   MN-major, swizzle W:  (mn / (W / 2)) * LBO + (k / 8) * SBO + (k % 8) * W + (mn % (W / 2)) * 2
// Successive K slices of 16 inside a swizzled K-major row are reached by adding 32 bytes
// to the start address (smem_desc_advance); the emulation requires a swizzled operand to
// start in the first 128 bytes of its pattern period with the base-offset field 0, the
// one case where the hardware's address-based swizzle and the relative layout agree.
#include "fastattn/device/config.h"
#include "fastattn/device/math.h"
#include "fastattn/device/swizzle.h"

FA_DEVICE_NAMESPACE_BEGIN

// Whether an operand is stored K-major (the transpose immediate 0) or MN-major (1).
enum class Major : int { kK = 0, kMN = 1 };

// The matrix descriptor: start address >> 4 in bits 0-13, LBO >> 4 in 16-29, SBO >> 4 in
// 32-45, base offset in 49-51 (0 here), swizzle in 62-63.
FA_DEVICE uint64_t make_smem_desc(const void* start, Swizzle swizzle, uint32_t lbo_bytes,
                                  uint32_t sbo_bytes) {
  const uint32_t addr = smem_u32(start);
  return (uint64_t((addr & 0x3ffffu) >> 4)) | (uint64_t((lbo_bytes & 0x3ffffu) >> 4) << 16) |
         (uint64_t((sbo_bytes & 0x3ffffu) >> 4) << 32) | (uint64_t(swizzle) << 62);
}

// The same descriptor with its start address moved by `bytes` (a multiple of 16).
FA_DEVICE uint64_t smem_desc_advance(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }

namespace detail {
template <class T, int N>
struct WgmmaPtx;
#if defined(__CUDACC__) && defined(FA_SM90A)
#include "fastattn/device/wgmma_ptx.inc"
#endif

#if !defined(__CUDACC__)
struct WgmmaOperand {
  uint64_t desc_a;
  uint64_t desc_b;
  int scale_d;
  float* d;
  const uint32_t* a;  // wgmma_rs: the thread's four A registers
};

// Element addresses of an MN x 16 operand, checked against the block's shared memory.
inline void wgmma_operand_pointers(const uint16_t** out, int mn_count, uint64_t desc, bool mn_major,
                                   const char* which) {
  const uint32_t start = uint32_t(desc & 0x3fffu) << 4;
  const uint32_t lbo = uint32_t((desc >> 16) & 0x3fffu) << 4;
  const uint32_t sbo = uint32_t((desc >> 32) & 0x3fffu) << 4;
  const unsigned base_offset = unsigned((desc >> 49) & 7u);
  const auto sw = Swizzle(unsigned(desc >> 62));
  const uint32_t w = swizzle_bytes(sw), period = swizzle_period(sw);
  if (base_offset != 0) {
    ::fastattn::emu::fail("wgmma: the %s descriptor has base offset %u; the emulation supports 0 "
                          "(start swizzled operands at their pattern boundary)",
                          which, base_offset);
  }
  if (period && start % period >= 128) {
    ::fastattn::emu::fail("wgmma: the %s descriptor starts at shared address 0x%x, %u bytes into "
                          "its %u-byte swizzle period; a swizzled operand must start in the "
                          "period's first 128 bytes (K slices of a row: +32, +64, +96)",
                          which, start, start % period, period);
  }
  for (int mn = 0; mn < mn_count; ++mn) {
    for (int k = 0; k < 16; ++k) {
      uint32_t off;
      if (!mn_major) {
        off = sw == Swizzle::kNone
                  ? (mn / 8) * sbo + (k / 8) * lbo + (mn % 8) * 16 + (k % 8) * 2
                  : (mn / 8) * sbo + (mn % 8) * w + k * 2;
      } else {
        off = sw == Swizzle::kNone
                  ? (mn / 8) * sbo + (k / 8) * lbo + (k % 8) * 16 + (mn % 8) * 2
                  : (mn / (w / 2)) * lbo + (k / 8) * sbo + (k % 8) * w + (mn % (w / 2)) * 2;
      }
      const uint32_t addr = swizzle_address(sw, start + off);
      out[mn * 16 + k] = static_cast<const uint16_t*>(
          ::fastattn::emu::shared_pointer(addr, 2, which));
    }
  }
}

template <class T, int N>
struct WgmmaOp {
  bool a_in_registers;
  int scale_d;
  const uint16_t* a_ptr[64 * 16];  // [m][k], when A is in shared memory
  const uint32_t* a_reg[128];      // each thread's A registers, when A is in registers
  const uint16_t* b_ptr[N * 16];   // [n][k]
  float* d[128];                   // each thread's accumulators

  static float value(uint16_t bits) {
    return std::is_same_v<T, bf16_t> ? bf16_bits_to_float(bits) : f16_bits_to_float(bits);
  }

  // Products of 16-bit floats are exact in double, and so is their 16-term sum to far below
  // fp32 resolution: D = C + A*B rounded once (hardware rounds partial sums its own way,
  // within a few fp32 ulps; README).
  static void run(void* self) {
    auto& op = *static_cast<WgmmaOp*>(self);
    // A registers are read now, not at issue: like the accumulators, they must stay
    // untouched until the covering wait.
    uint16_t a_val[64 * 16];
    if (op.a_in_registers) {
      for (int r = 0; r < 128; ++r) {
        const int w = r / 32, g = (r % 32) / 4, t = r % 4;
        for (int i = 0; i < 4; ++i) {
          const int m = 16 * w + g + ((i & 1) ? 8 : 0);
          const int k = 2 * t + ((i & 2) ? 8 : 0);
          a_val[m * 16 + k] = uint16_t(op.a_reg[r][i] & 0xffffu);
          a_val[m * 16 + k + 1] = uint16_t(op.a_reg[r][i] >> 16);
        }
      }
    }
    float b[N][16];
    for (int n = 0; n < N; ++n) {
      for (int k = 0; k < 16; ++k) b[n][k] = value(*op.b_ptr[n * 16 + k]);
    }
    for (int r = 0; r < 128; ++r) {
      const int w = r / 32, g = (r % 32) / 4, t = r % 4;
      float* d = op.d[r];
      for (int i = 0; i < N / 2; ++i) {
        const int j = i / 4, q = i % 4;
        const int m = 16 * w + g + (q >= 2 ? 8 : 0);
        const int n = 8 * j + 2 * t + (q & 1);
        double acc = op.scale_d ? double(d[i]) : 0.0;
        for (int k = 0; k < 16; ++k) {
          const uint16_t a = op.a_in_registers ? a_val[m * 16 + k] : *op.a_ptr[m * 16 + k];
          acc += double(value(a)) * double(b[n][k]);
        }
        d[i] = float(acc);
      }
    }
  }
  static void destroy(void* self) { delete static_cast<WgmmaOp*>(self); }
};

template <class T, int N, bool kRegA, Major kMajorA, Major kMajorB>
inline void wgmma_collective(const void* const* ops, void* const*) {
  const auto& o0 = *static_cast<const WgmmaOperand*>(ops[0]);
  for (int r = 1; r < 128; ++r) {
    const auto& o = *static_cast<const WgmmaOperand*>(ops[r]);
    if (o.desc_b != o0.desc_b || (!kRegA && o.desc_a != o0.desc_a) || o.scale_d != o0.scale_d) {
      ::fastattn::emu::fail("wgmma: thread %d of the warpgroup passes other descriptors or "
                            "scale-d than thread 0 (they must be warpgroup-uniform)",
                            r);
    }
  }
  // Descriptors are resolved (and can fail) before anything is allocated: a failing kernel
  // thread never returns, so nothing allocated before it would be freed.
  static thread_local const uint16_t* a_ptr[64 * 16];
  static thread_local const uint16_t* b_ptr[256 * 16];
  if constexpr (!kRegA) {
    wgmma_operand_pointers(a_ptr, 64, o0.desc_a, kMajorA == Major::kMN, "A");
  }
  wgmma_operand_pointers(b_ptr, N, o0.desc_b, kMajorB == Major::kMN, "B");
  auto* op = new WgmmaOp<T, N>;
  op->a_in_registers = kRegA;
  op->scale_d = o0.scale_d;
  if constexpr (kRegA) {
    for (int r = 0; r < 128; ++r) op->a_reg[r] = static_cast<const WgmmaOperand*>(ops[r])->a;
  } else {
    std::memcpy(op->a_ptr, a_ptr, sizeof op->a_ptr);
  }
  std::memcpy(op->b_ptr, b_ptr, sizeof op->b_ptr);
  for (int r = 0; r < 128; ++r) op->d[r] = static_cast<const WgmmaOperand*>(ops[r])->d;
  ::fastattn::emu::wgmma_issue({&WgmmaOp<T, N>::run, &WgmmaOp<T, N>::destroy, op});
}
#endif

template <class T>
inline constexpr bool kWgmmaType = std::is_same_v<T, half_t> || std::is_same_v<T, bf16_t>;
template <int N>
inline constexpr bool kWgmmaN = N >= 16 && N <= 256 && N % 16 == 0;
}  // namespace detail

// wgmma.mma_async m64nNk16, A and B from shared memory: d (+)= A * B, `accumulate` false
// ignores d's old value. A is M x K (descriptor desc_a, layout kMajorA), B is K x N stored as
// N x K (desc_b, kMajorB).
template <class T, int N, Major kMajorA = Major::kK, Major kMajorB = Major::kK>
FA_DEVICE void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  static_assert(detail::kWgmmaType<T>, "fp16 or bf16 inputs");
  static_assert(detail::kWgmmaN<N>, "N: a multiple of 16 in 16..256");
#if defined(__CUDACC__)
#if defined(FA_SM90A)
  detail::WgmmaPtx<T, N>::template ss<int(kMajorA), int(kMajorB)>(d, desc_a, desc_b,
                                                                  accumulate ? 1 : 0);
#else
  __trap();
#endif
#else
  const detail::WgmmaOperand op{desc_a, desc_b, accumulate ? 1 : 0, d, nullptr};
  ::fastattn::emu::warpgroup_collective("wgmma.mma_async.sync.aligned (A in shared memory)",
                                        detail::wgmma_collective<T, N, false, kMajorA, kMajorB>,
                                        &op, nullptr);
#endif
}

// wgmma.mma_async m64nNk16 with A from registers (the fragment above). `a` is an lvalue
// array (no temporaries): the MMA reads it asynchronously, up to the covering wait.
template <class T, int N, Major kMajorB = Major::kK>
FA_DEVICE void wgmma_rs(float (&d)[N / 2], uint32_t (&a)[4], uint64_t desc_b, bool accumulate) {
  static_assert(detail::kWgmmaType<T>, "fp16 or bf16 inputs");
  static_assert(detail::kWgmmaN<N>, "N: a multiple of 16 in 16..256");
#if defined(__CUDACC__)
#if defined(FA_SM90A)
  detail::WgmmaPtx<T, N>::template rs<int(kMajorB)>(d, a, desc_b, accumulate ? 1 : 0);
#else
  __trap();
#endif
#else
  const detail::WgmmaOperand op{0, desc_b, accumulate ? 1 : 0, d, a};
  ::fastattn::emu::warpgroup_collective("wgmma.mma_async.sync.aligned (A in registers)",
                                        detail::wgmma_collective<T, N, true, Major::kK, kMajorB>,
                                        &op, nullptr);
#endif
}

// wgmma.fence.sync.aligned.
FA_DEVICE void wgmma_fence() {
#if defined(__CUDACC__)
#if defined(FA_SM90A)
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#else
  __trap();
#endif
#else
  ::fastattn::emu::wgmma_fence();
#endif
}

// wgmma.commit_group.sync.aligned.
FA_DEVICE void wgmma_commit_group() {
#if defined(__CUDACC__)
#if defined(FA_SM90A)
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#else
  __trap();
#endif
#else
  ::fastattn::emu::wgmma_commit();
#endif
}

// wgmma.wait_group.sync.aligned n.
template <int kPending>
FA_DEVICE void wgmma_wait_group() {
  static_assert(kPending >= 0 && kPending <= 7, "wait_group takes 0..7");
#if defined(__CUDACC__)
#if defined(FA_SM90A)
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(kPending) : "memory");
#else
  __trap();
#endif
#else
  ::fastattn::emu::wgmma_wait(unsigned(kPending));
#endif
}

// Keeps nvcc from moving accesses to these registers across the asynchronous MMAs (an empty
// asm that "reads and writes" each); a no-op in the emulation.
template <class T, int kN>
FA_DEVICE void wgmma_fence_operand(T (&regs)[kN]) {
#if defined(__CUDACC__)
  FA_UNROLL
  for (int i = 0; i < kN; ++i) {
    if constexpr (sizeof(T) == 4 && std::is_floating_point_v<T>) {
      asm volatile("" : "+f"(regs[i])::"memory");
    } else {
      asm volatile("" : "+r"(regs[i])::"memory");
    }
  }
#else
  (void)regs;
#endif
}

// setmaxnreg.{inc,dec}.sync.aligned.u32 kRegs: the warpgroup's per-thread register budget
// (24..256, a multiple of 8); producers lower theirs so consumers can raise theirs.
template <int kRegs>
FA_DEVICE void setmaxnreg_inc() {
  static_assert(kRegs >= 24 && kRegs <= 256 && kRegs % 8 == 0, "24..256, a multiple of 8");
#if defined(__CUDACC__)
#if defined(FA_SM90A)
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kRegs));
#else
  __trap();
#endif
#else
  ::fastattn::emu::setmaxnreg(kRegs, true);
#endif
}

template <int kRegs>
FA_DEVICE void setmaxnreg_dec() {
  static_assert(kRegs >= 24 && kRegs <= 256 && kRegs % 8 == 0, "24..256, a multiple of 8");
#if defined(__CUDACC__)
#if defined(FA_SM90A)
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kRegs));
#else
  __trap();
#endif
#else
  ::fastattn::emu::setmaxnreg(kRegs, false);
#endif
}

FA_DEVICE_NAMESPACE_END
