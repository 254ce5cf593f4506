#pragma once
// Test kernels for the device primitives, written once against fastattn/device and
// compiled twice: on the CPU emulation (test_kernels_emu.cpp) and by nvcc
// (csrc/cuda/primitives_test.cu). tests/test_primitives.py checks both against plain
// references, so a lent GPU confirms that the emulation and the hardware agree.
//
// Grids: one warp per problem for mma/ldmatrix; flat 1-D grids elsewhere. Each runner
// launches and then synchronises, so results are ready when it returns.
#include "emu/test_kernels.h"
#include "fastattn/device/device.h"

#if defined(__CUDACC__)
#define FA_PRIMTEST_NS gpu
#else
#define FA_PRIMTEST_NS emulated
#endif

namespace fastattn::primtest {
namespace {

using namespace ::fastattn::device;

FA_KERNEL void index_kernel(IndexArgs args) {
  const unsigned block_linear = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
  uint32_t* o = args.out + (size_t(block_linear) * threads + thread_rank()) * 16;
  o[0] = threadIdx.x;
  o[1] = threadIdx.y;
  o[2] = threadIdx.z;
  o[3] = blockIdx.x;
  o[4] = blockIdx.y;
  o[5] = blockIdx.z;
  o[6] = blockDim.x;
  o[7] = blockDim.y;
  o[8] = blockDim.z;
  o[9] = gridDim.x;
  o[10] = gridDim.y;
  o[11] = gridDim.z;
  o[12] = thread_rank();
  o[13] = lane_id();
  o[14] = warp_id();
  o[15] = 0;
}

// ---------------------------------------------------------------------------------------
// mma.sync m16n8k16
// ---------------------------------------------------------------------------------------
FA_DEVICE uint32_t pair(uint16_t lo, uint16_t hi) { return uint32_t(lo) | (uint32_t(hi) << 16); }

constexpr int kMmaSmemAStride = 24;  // padded rows (48 bytes): rows need not be contiguous
constexpr int kMmaSmemBStride = 16;
constexpr size_t kMmaSmemBytes = (16 * kMmaSmemAStride + 16 * kMmaSmemBStride) * 2;

template <class T>
FA_KERNEL void mma_kernel(MmaArgs args) {
  const int p = blockIdx.x;
  const uint16_t* A = args.a + p * 256;  // [16, 16]
  const uint16_t* B = args.b + p * 128;  // [16, 8]
  const float* C = args.c + p * 128;     // [16, 8]
  float* D = args.d + p * 128;           // [16, 8]
  const int lane = int(lane_id());
  const int g = lane >> 2, t = lane & 3;

  uint32_t a[4], b[2];
  if (!args.via_ldmatrix) {
    a[0] = pair(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]);
    a[1] = pair(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]);
    a[2] = pair(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]);
    a[3] = pair(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9]);
    b[0] = pair(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]);
    b[1] = pair(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g]);
  } else {
    uint16_t* sa = dynamic_smem<uint16_t>();  // [16, kMmaSmemAStride]
    uint16_t* sb = sa + 16 * kMmaSmemAStride;  // [16, kMmaSmemBStride], K-major rows
    for (int i = lane; i < 256; i += 32) sa[(i / 16) * kMmaSmemAStride + i % 16] = A[i];
    for (int i = lane; i < 128; i += 32) sb[(i / 8) * kMmaSmemBStride + i % 8] = B[i];
    sync_warp();
    ldmatrix<4>(a, sa + (lane % 16) * kMmaSmemAStride + (lane / 16) * 8);
    ldmatrix<2, true>(b, sb + (lane % 16) * kMmaSmemBStride);
  }
  float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t],
                C[(g + 8) * 8 + 2 * t + 1]};
  float d[4];
  mma_m16n8k16<T>(d, a, b, c);
  D[g * 8 + 2 * t] = d[0];
  D[g * 8 + 2 * t + 1] = d[1];
  D[(g + 8) * 8 + 2 * t] = d[2];
  D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

// ---------------------------------------------------------------------------------------
// Shuffles and votes
// ---------------------------------------------------------------------------------------
template <class U>
FA_DEVICE U shfl_by_mode(U v, int arg, int mode, int width) {
  switch (mode) {
    case 0: return shfl_up(v, unsigned(arg), width);
    case 1: return shfl_down(v, unsigned(arg), width);
    case 2: return shfl_xor(v, arg, width);
    default: return shfl_idx(v, arg, width);
  }
}

FA_KERNEL void shfl_kernel(ShflArgs args) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (args.wide) {
    const auto* in = static_cast<const uint64_t*>(args.in);
    static_cast<uint64_t*>(args.out)[i] = shfl_by_mode(in[i], args.arg[i], args.mode, args.width);
  } else {
    const auto* in = static_cast<const uint32_t*>(args.in);
    static_cast<uint32_t*>(args.out)[i] = shfl_by_mode(in[i], args.arg[i], args.mode, args.width);
  }
}

FA_KERNEL void vote_kernel(VoteArgs args) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  const bool pred = args.pred[i] != 0;
  args.out[3 * i] = warp_ballot(pred);
  args.out[3 * i + 1] = warp_any(pred);
  args.out[3 * i + 2] = warp_all(pred);
}

// ---------------------------------------------------------------------------------------
// ldmatrix
// ---------------------------------------------------------------------------------------
template <int kNum, bool kTrans>
FA_KERNEL void ldmatrix_kernel(LdmatrixArgs args) {
  uint16_t* s = dynamic_smem<uint16_t>();  // [tile_elems]
  const int lane = int(lane_id());
  for (int i = lane; i < args.tile_elems; i += 32) s[i] = args.tile[i];
  sync_warp();
  uint32_t r[kNum];
  ldmatrix<kNum, kTrans>(r, s + args.offsets[lane]);
  for (int i = 0; i < kNum; ++i) args.out[lane * kNum + i] = r[i];
}

// ---------------------------------------------------------------------------------------
// cp.async
// ---------------------------------------------------------------------------------------
FA_DEVICE void copy16(uint8_t* dst, const uint8_t* src) {
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
}

FA_KERNEL void cp_async_kernel(CpAsyncArgs args) {
  const int i = int(threadIdx.x);
  const size_t tile_bytes = size_t(args.threads) * 16;
  uint8_t* ring = dynamic_smem<uint8_t>();  // [2, tile_bytes]
  auto issue = [&](int tile) {
    cp_async_16(ring + (tile % 2) * tile_bytes + i * 16, args.src + tile * tile_bytes + i * 16,
                unsigned(args.src_bytes));
  };
  if (args.mode == 1) {
    issue(0);
    cp_async_commit();
    issue(1);
    cp_async_commit();
    cp_async_wait<1>();  // tile 0 landed; tile 1 may still be in flight
    copy16(args.out + i * 16, ring + i * 16);
    copy16(args.out + tile_bytes + i * 16, ring + tile_bytes + i * 16);
    cp_async_wait<0>();
    return;
  }
  issue(0);
  cp_async_commit();
  for (int t = 0; t < args.tiles; ++t) {
    if (t + 1 < args.tiles) issue(t + 1);
    cp_async_commit();  // possibly empty: keeps "wait_group 1 = tile t landed" uniform
    if (!(args.flags & kSkipWait)) cp_async_wait<1>();
    if (!(args.flags & kSkipBarrierAfterWait)) sync_block();  // others' chunks landed too
    const int j = (i + 1) % args.threads;
    copy16(args.out + t * tile_bytes + j * 16, ring + (t % 2) * tile_bytes + j * 16);
    if (!(args.flags & kSkipBarrierBeforeRefill)) sync_block();  // buffer t%2 free again
  }
  cp_async_wait<0>();
}

// ---------------------------------------------------------------------------------------
// Block barrier: tree reduction in static shared memory
// ---------------------------------------------------------------------------------------
FA_DEVICE void reduce_barrier(int mode) {
  if (mode == kBarrierBlock) {
    sync_block();
  } else if (mode == kBarrierWarp) {
    sync_warp();
  }
}

FA_KERNEL void reduce_kernel(ReduceArgs args) {
  FA_SHARED(float[1024], buf);
  const int i = int(threadIdx.x);
  buf[i] = args.in[blockIdx.x * args.threads + i];
  reduce_barrier(args.barrier);
  for (int stride = args.threads / 2; stride > 0; stride /= 2) {
    if (i < stride) buf[i] += buf[i + stride];
    reduce_barrier(args.barrier);
  }
  if (i == 0) args.out[blockIdx.x] = buf[0];
}

// ---------------------------------------------------------------------------------------
// Atomics
// ---------------------------------------------------------------------------------------
FA_KERNEL void atomics_kernel(AtomicArgs args) {
  FA_SHARED(int, count);
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (threadIdx.x == 0) count = 0;
  sync_block();
  const int v = args.in[i];
  atomic_add(args.fsum, float(v));
  atomic_add(args.isum, v);
  atomic_max(args.imax, v);
  atomic_min(args.imin, v);
  atomic_or(args.bits, 1u << (i % 32));
  atomic_add(&count, 1);
  if (atomic_cas(args.cas_slot, -1, i) == -1) atomic_add(args.cas_wins, 1);
  atomic_exch(args.exch, i);
  sync_block();
  if (threadIdx.x == 0) args.block_counts[blockIdx.x] = count;
}

// ---------------------------------------------------------------------------------------
// Conversions and fast math
// ---------------------------------------------------------------------------------------
FA_KERNEL void math_kernel(MathArgs a) {
  const int stride = int(gridDim.x * blockDim.x);
  const int first = int(blockIdx.x * blockDim.x + threadIdx.x);
  for (int i = first; i < a.n; i += stride) {
    const float x = a.x[i];
    a.to_f16[i] = bits_of(from_float<half_t>(x));
    a.to_bf16[i] = bits_of(from_float<bf16_t>(x));
    a.exp2[i] = fast_exp2(x);
    a.rcp[i] = fast_rcp(x);
    a.tanh[i] = fast_tanh(x);
    if (i % 2 == 0) {
      const float y = a.x[i + 1];
      const uint32_t ph = pack2<half_t>(x, y);
      const uint32_t pb = pack2<bf16_t>(x, y);
      a.pack_f16[i / 2] = ph;
      a.pack_bf16[i / 2] = pb;
      const float2 uh = unpack2<half_t>(ph);
      const float2 ub = unpack2<bf16_t>(pb);
      a.unpack_f16[i] = uh.x;
      a.unpack_f16[i + 1] = uh.y;
      a.unpack_bf16[i] = ub.x;
      a.unpack_bf16[i + 1] = ub.y;
    }
  }
  for (int i = first; i < a.nbits; i += stride) {
    a.f16_to_f32[i] = to_float(from_bits<half_t>(a.bits[i]));
    a.bf16_to_f32[i] = to_float(from_bits<bf16_t>(a.bits[i]));
  }
}

// ---------------------------------------------------------------------------------------
// fp8 conversions: every function of fp8.h on both paths (Fp8Path), on the same inputs
// ---------------------------------------------------------------------------------------
template <class F, Fp8Path P>
FA_DEVICE void fp8_widen_group(const Fp8Args& a, int i, uint32_t w, int row_offset) {
  const size_t n = size_t(a.ncodes);
  auto put2 = [&](int row, int at, uint32_t v) {  // a packed pair: low half first
    a.wide16[(row + row_offset) * n + at] = uint16_t(v & 0xffffu);
    a.wide16[(row + row_offset) * n + at + 1] = uint16_t(v >> 16);
  };
  for (int h = 0; h < 2; ++h) {
    const uint16_t pair = uint16_t(w >> (16 * h));
    put2(kFp8F16x2, i + 2 * h, fp8x2_to_f16x2<F, P>(pair));
    put2(kFp8Bf16x2, i + 2 * h, fp8x2_to_bf16x2<F, P>(pair));
    const float2 f = fp8x2_to_float2<F, P>(pair);
    a.wide32[row_offset * n + i + 2 * h] = f.x;
    a.wide32[row_offset * n + i + 2 * h + 1] = f.y;
  }
  const uint2 h4 = fp8x4_to_pack2x2<half_t, F, P>(w), b4 = fp8x4_to_pack2x2<bf16_t, F, P>(w);
  put2(kFp8F16x4, i, h4.x);
  put2(kFp8F16x4, i + 2, h4.y);
  put2(kFp8Bf16x4, i, b4.x);
  put2(kFp8Bf16x4, i + 2, b4.y);
}

template <class F>
FA_KERNEL void fp8_kernel(Fp8Args a) {
  const int stride = int(gridDim.x * blockDim.x);
  const int first = int(blockIdx.x * blockDim.x + threadIdx.x);
  for (int q = first; q < a.ncodes / 4; q += stride) {
    const int i = 4 * q;
    const uint8_t* c = a.codes + i;
    const uint32_t w = uint32_t(c[0]) | (uint32_t(c[1]) << 8) | (uint32_t(c[2]) << 16) |
                       (uint32_t(c[3]) << 24);
    fp8_widen_group<F, Fp8Path::kNative>(a, i, w, 0);
    fp8_widen_group<F, Fp8Path::kSoftware>(a, i, w, 1);
    for (int k = 0; k < 4; ++k) a.wide32[2 * size_t(a.ncodes) + i + k] = to_float(F{c[k]});
  }
  const size_t nx = size_t(a.nx);
  for (int j = first; j < a.nx / 2; j += stride) {
    const float lo = a.x[2 * j], hi = a.x[2 * j + 1];
    const uint16_t p = float2_to_fp8x2<F>(lo, hi);
    const uint16_t ps = float2_to_fp8x2<F, Fp8Path::kSoftware>(lo, hi);
    a.narrow[2 * j] = uint8_t(p & 0xffu);
    a.narrow[2 * j + 1] = uint8_t(p >> 8);
    a.narrow[nx + 2 * j] = uint8_t(ps & 0xffu);
    a.narrow[nx + 2 * j + 1] = uint8_t(ps >> 8);
    a.narrow[2 * nx + 2 * j] = from_float<F>(lo).bits;
    a.narrow[2 * nx + 2 * j + 1] = from_float<F>(hi).bits;
  }
}

// ---------------------------------------------------------------------------------------
// Misuse the emulation must report instead of hanging or passing silently. Block of 64
// threads (48 for kind 5). Kind 0 is correct code (the control).
// ---------------------------------------------------------------------------------------
FA_KERNEL void misuse_kernel(MisuseArgs args) {
  const unsigned t = threadIdx.x;
  float v = float(t);
  switch (args.kind) {
    case 0:  // correct
      sync_block();
      v = float(shfl_xor(int(t), 1));
      break;
    case 1:  // half the block returns before a barrier
      if (t >= 32) return;
      sync_block();
      break;
    case 2:  // thread 0 skips the barrier and exits
      if (t != 0) sync_block();
      break;
    case 3:  // lanes of a warp at different collectives
      if (lane_id() % 2) {
        v = float(shfl_xor(int(t), 1));
      } else {
        v = float(warp_ballot(true));
      }
      break;
    case 4:  // a lane exited before a shuffle
      if (lane_id() == 0) return;
      v = float(shfl_xor(int(t), 1));
      break;
    case 5:  // shuffle in a partial warp (48 threads)
      v = float(shfl_xor(int(t), 1));
      break;
    case 6:  // half a warp at the block barrier, the other half at sync_warp
      if (lane_id() < 16) {
        sync_block();
      } else {
        sync_warp();
      }
      break;
    case 7: {  // ldmatrix row address not 16-byte aligned
      uint32_t r[1];
      ldmatrix<1>(r, dynamic_smem<uint16_t>() + 4);
      v = float(r[0]);
      break;
    }
    case 8: {  // ldmatrix from global memory
      uint32_t r[1];
      ldmatrix<1>(r, args.scratch + 16 * (t % 8));
      v = float(r[0]);
      break;
    }
    case 9:  // cp.async into global memory
      cp_async_16(args.scratch + 4 * t, args.scratch + 512);
      cp_async_wait_all();
      break;
    case 10:
      trap();
      break;
  }
  args.scratch[t] = v;
}

// ---------------------------------------------------------------------------------------
// Uninitialised shared memory
// ---------------------------------------------------------------------------------------
FA_KERNEL void smem_poison_kernel(SmemPoisonArgs args) {
  FA_SHARED(uint32_t[1024], stat);
  uint32_t* dyn = dynamic_smem<uint32_t>();
  const unsigned t = threadIdx.x;
  uint32_t* o = args.out + (size_t(blockIdx.x) * blockDim.x + t) * 2;
  o[0] = stat[t];
  o[1] = dyn[t];
  sync_block();
  stat[t] = t;  // a later block on the same worker must not see these
  dyn[t] = t;
}

}  // namespace

namespace FA_PRIMTEST_NS {

namespace dev = ::fastattn::device;

void run_index(const IndexArgs& a) {
  dev::launch(index_kernel,
              {dev::dim3(a.grid[0], a.grid[1], a.grid[2]),
               dev::dim3(a.block[0], a.block[1], a.block[2])},
              a);
  dev::synchronize();
}

void run_mma(const MmaArgs& a) {
  const dev::LaunchConfig cfg{dev::dim3(unsigned(a.problems)), dev::dim3(32),
                              a.via_ldmatrix ? kMmaSmemBytes : 0};
  if (a.bf16) {
    dev::launch(mma_kernel<dev::bf16_t>, cfg, a);
  } else {
    dev::launch(mma_kernel<dev::half_t>, cfg, a);
  }
  dev::synchronize();
}

// Blocks of 64 threads when possible, so that warp ids other than 0 are exercised.
dev::LaunchConfig flat(int threads) {
  const unsigned block = threads % 64 == 0 ? 64 : 32;
  return {dev::dim3(unsigned(threads) / block), dev::dim3(block)};
}

void run_shfl(const ShflArgs& a) {
  dev::launch(shfl_kernel, flat(a.threads), a);
  dev::synchronize();
}

void run_vote(const VoteArgs& a) {
  dev::launch(vote_kernel, flat(a.threads), a);
  dev::synchronize();
}

void run_ldmatrix(const LdmatrixArgs& a) {
  const dev::LaunchConfig cfg{dev::dim3(1), dev::dim3(32), size_t(a.tile_elems) * 2};
  const int key = a.num * 2 + (a.trans ? 1 : 0);
  switch (key) {
    case 2: dev::launch(ldmatrix_kernel<1, false>, cfg, a); break;
    case 3: dev::launch(ldmatrix_kernel<1, true>, cfg, a); break;
    case 4: dev::launch(ldmatrix_kernel<2, false>, cfg, a); break;
    case 5: dev::launch(ldmatrix_kernel<2, true>, cfg, a); break;
    case 8: dev::launch(ldmatrix_kernel<4, false>, cfg, a); break;
    case 9: dev::launch(ldmatrix_kernel<4, true>, cfg, a); break;
    default: throw std::invalid_argument("ldmatrix: num must be 1, 2 or 4");
  }
  dev::synchronize();
}

void run_cp_async(const CpAsyncArgs& a) {
  dev::launch(cp_async_kernel,
              {dev::dim3(1), dev::dim3(unsigned(a.threads)), size_t(a.threads) * 16 * 2}, a);
  dev::synchronize();
}

void run_reduce(const ReduceArgs& a) {
  dev::launch(reduce_kernel, {dev::dim3(unsigned(a.rows)), dev::dim3(unsigned(a.threads))}, a);
  dev::synchronize();
}

void run_atomics(const AtomicArgs& a) {
  dev::launch(atomics_kernel, {dev::dim3(unsigned(a.blocks)), dev::dim3(unsigned(a.threads))},
              a);
  dev::synchronize();
}

void run_math(const MathArgs& a) {
  dev::launch(math_kernel, {dev::dim3(8), dev::dim3(128)}, a);
  dev::synchronize();
}

void run_fp8(const Fp8Args& a) {
  const dev::LaunchConfig cfg{dev::dim3(4), dev::dim3(64)};
  if (a.e5m2) {
    dev::launch(fp8_kernel<dev::fp8_e5m2_t>, cfg, a);
  } else {
    dev::launch(fp8_kernel<dev::fp8_e4m3_t>, cfg, a);
  }
  dev::synchronize();
}

void run_misuse(const MisuseArgs& a) {
  dev::launch(misuse_kernel, {dev::dim3(2), dev::dim3(a.kind == 5 ? 48 : 64), 64}, a);
  dev::synchronize();
}

void run_smem_poison(const SmemPoisonArgs& a) {
  dev::launch(smem_poison_kernel,
              {dev::dim3(unsigned(a.blocks)), dev::dim3(unsigned(a.threads)),
               size_t(a.threads) * 4},
              a);
  dev::synchronize();
}

}  // namespace FA_PRIMTEST_NS
}  // namespace fastattn::primtest
