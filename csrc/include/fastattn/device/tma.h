#pragma once
// The tensor memory accelerator (TMA, sm_90): a tile ("box") of a 1-5 dimensional global
// tensor copied into shared memory by one thread's instruction, completing on an mbarrier;
// and the way back (tma_store, completing in the thread's bulk async-groups).
//
// Host: make_tensor_map(&map, spec) encodes the tensor (address, sizes, byte strides), the
// box, the shared-memory swizzle and the out-of-bounds fill. On CUDA that is the driver's
// cuTensorMapEncodeTiled, reached through cudaGetDriverEntryPointByVersion (the runtime's
// cudaGetDriverEntryPoint; nothing links libcuda); in the emulation the same fields are
// stored in the same 128 bytes in a layout of our own, and the copy interprets them. Both
// check the arguments with the same rules first and throw std::invalid_argument naming the
// field. Pass the map to a kernel by value in its parameters (FA_GRID_CONSTANT on the
// parameter) so that its address is valid on the device.
//
// Device: tma_load(dst, &map, bar, coords) copies the box whose first element sits at the
// element coordinates `coords` (innermost first, signed: boxes may hang over any edge; the
// elements outside the tensor are filled with zeros, or NaN with oob_nan) into shared
// memory at dst, densely in box order (innermost fastest), each row of box[0] elements
// swizzled per the map (swizzle.h). dst is 128-byte aligned, and aligned to the swizzle
// period when the map swizzles. When the bytes have landed, the barrier's tx-count drops by
// the box size in bytes (all of it, including the filled elements): the producer calls
// mbarrier_arrive_expect_tx(bar, box bytes) for it in the same phase.
//
// Emulation: the copy lands at issue, at a random synchronisation point, or as late as
// possible (when no thread of the block could run otherwise), per the schedule; a consumer
// that reads the tile without waiting on the barrier, or a producer that does not expect the
// bytes, reads stale shared memory under some schedule.
#include <stdexcept>
#include <string>

#include "fastattn/device/config.h"
#include "fastattn/device/swizzle.h"

#if defined(__CUDACC__)
#include <cuda.h>
#endif

#if defined(__CUDACC__)
#define FA_GRID_CONSTANT __grid_constant__
#else
#define FA_GRID_CONSTANT
#endif

FA_DEVICE_NAMESPACE_BEGIN

// A CUtensorMap on CUDA (128 bytes; CUDA 13 declares it 128-byte aligned, the driver needs
// 64); the emulation's own encoding otherwise.
struct alignas(128) TensorMap {
  uint64_t opaque[16];
};

enum class TmaType : uint8_t { kU8 = 0, kF16 = 1, kBF16 = 2, kF32 = 3 };

FA_HD constexpr unsigned tma_type_bytes(TmaType t) {
  return t == TmaType::kU8 ? 1u : t == TmaType::kF32 ? 4u : 2u;
}

struct TensorMapSpec {
  TmaType type = TmaType::kBF16;
  int rank = 2;                  // 1..5
  const void* global = nullptr;  // 16-byte aligned
  uint64_t dims[5] = {};         // elements per dimension, innermost first
  uint64_t strides[5] = {};      // bytes; strides[0] is ignored (the element size)
  uint32_t box[5] = {};          // box elements per dimension, 1..256
  Swizzle swizzle = Swizzle::kNone;
  bool oob_nan = false;          // fill with NaN instead of zeros (float types only)
};

namespace detail {

// The rules of cuTensorMapEncodeTiled that our maps can break (elementStrides are all 1 and
// interleave is none here), checked identically in both builds.
inline void check_tensor_map(const TensorMapSpec& s) {
  auto bad = [](const std::string& what) {
    throw std::invalid_argument("fastattn: tensor map: " + what);
  };
  const unsigned esize = tma_type_bytes(s.type);
  if (s.rank < 1 || s.rank > 5) bad("rank " + std::to_string(s.rank) + " is not in 1..5");
  if (!s.global || reinterpret_cast<uintptr_t>(s.global) % 16) {
    bad("the global address must be non-null and 16-byte aligned");
  }
  for (int i = 0; i < s.rank; ++i) {
    const std::string d = std::to_string(i);
    if (s.dims[i] == 0 || s.dims[i] > (uint64_t(1) << 32)) {
      bad("dims[" + d + "] = " + std::to_string(s.dims[i]) + " is not in 1..2^32");
    }
    if (i > 0 && (s.strides[i] % 16 || s.strides[i] == 0 || s.strides[i] >= (uint64_t(1) << 40))) {
      bad("strides[" + d + "] = " + std::to_string(s.strides[i]) +
          " bytes is not a non-zero multiple of 16 below 2^40");
    }
    if (s.box[i] == 0 || s.box[i] > 256) {
      bad("box[" + d + "] = " + std::to_string(s.box[i]) + " is not in 1..256");
    }
  }
  const unsigned inner = s.box[0] * esize;
  if (inner % 16) bad("the inner box dimension is " + std::to_string(inner) +
                      " bytes; it must be a multiple of 16");
  if (s.swizzle != Swizzle::kNone && inner > swizzle_bytes(s.swizzle)) {
    bad("the inner box dimension is " + std::to_string(inner) + " bytes, more than the " +
        std::to_string(swizzle_bytes(s.swizzle)) + "-byte swizzle span");
  }
  if (s.oob_nan && s.type == TmaType::kU8) bad("NaN fill needs a floating-point type");
}

#if !defined(__CUDACC__)
// The emulation's encoding of a map.
struct EmuTensorMap {
  uint32_t magic;
  uint8_t type, rank, swizzle, oob_nan;
  uint64_t global;
  uint64_t dims[5];
  uint64_t strides[5];
  uint32_t box[5];
};
static_assert(sizeof(EmuTensorMap) <= sizeof(TensorMap), "fits a CUtensorMap");
constexpr uint32_t kEmuTensorMapMagic = 0x544d4150;  // "TMAP"
#endif

}  // namespace detail

// Host: encodes `spec` into `map`. Throws std::invalid_argument for arguments the rules
// above refuse, std::runtime_error when the driver refuses the rest.
inline void make_tensor_map(TensorMap* map, const TensorMapSpec& spec) {
  detail::check_tensor_map(spec);
#if defined(__CUDACC__)
  using Encode = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                              const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                              const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                              CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
  static Encode encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult status{};
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000,
                                                             cudaEnableDefault, &status);
    if (err != cudaSuccess || status != cudaDriverEntryPointSuccess || !fn) {
      throw std::runtime_error("fastattn: cuTensorMapEncodeTiled is not available from the driver");
    }
    return reinterpret_cast<Encode>(fn);
  }();
  static_assert(sizeof(CUtensorMap) == sizeof(TensorMap), "a CUtensorMap is 128 bytes");
  CUtensorMapDataType type = CU_TENSOR_MAP_DATA_TYPE_UINT8;
  switch (spec.type) {
    case TmaType::kU8: type = CU_TENSOR_MAP_DATA_TYPE_UINT8; break;
    case TmaType::kF16: type = CU_TENSOR_MAP_DATA_TYPE_FLOAT16; break;
    case TmaType::kBF16: type = CU_TENSOR_MAP_DATA_TYPE_BFLOAT16; break;
    case TmaType::kF32: type = CU_TENSOR_MAP_DATA_TYPE_FLOAT32; break;
  }
  CUtensorMapSwizzle swizzle = CU_TENSOR_MAP_SWIZZLE_NONE;
  switch (spec.swizzle) {
    case Swizzle::kNone: swizzle = CU_TENSOR_MAP_SWIZZLE_NONE; break;
    case Swizzle::k32B: swizzle = CU_TENSOR_MAP_SWIZZLE_32B; break;
    case Swizzle::k64B: swizzle = CU_TENSOR_MAP_SWIZZLE_64B; break;
    case Swizzle::k128B: swizzle = CU_TENSOR_MAP_SWIZZLE_128B; break;
  }
  cuuint64_t dims[5], strides[4];
  cuuint32_t box[5], elem_strides[5];
  for (int i = 0; i < spec.rank; ++i) {
    dims[i] = spec.dims[i];
    box[i] = spec.box[i];
    elem_strides[i] = 1;
    if (i > 0) strides[i - 1] = spec.strides[i];
  }
  const CUresult r =
      encode(reinterpret_cast<CUtensorMap*>(map), type, cuuint32_t(spec.rank),
             const_cast<void*>(spec.global), dims, strides, box, elem_strides,
             CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
             spec.oob_nan ? CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA
                          : CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    throw std::runtime_error("fastattn: cuTensorMapEncodeTiled failed with CUresult " +
                             std::to_string(int(r)));
  }
#else
  std::memset(map, 0, sizeof(TensorMap));
  detail::EmuTensorMap m{};
  m.magic = detail::kEmuTensorMapMagic;
  m.type = uint8_t(spec.type);
  m.rank = uint8_t(spec.rank);
  m.swizzle = uint8_t(spec.swizzle);
  m.oob_nan = spec.oob_nan;
  m.global = reinterpret_cast<uintptr_t>(spec.global);
  for (int i = 0; i < spec.rank; ++i) {
    m.dims[i] = spec.dims[i];
    m.strides[i] = i == 0 ? tma_type_bytes(spec.type) : spec.strides[i];
    m.box[i] = spec.box[i];
  }
  std::memcpy(map, &m, sizeof m);
#endif
}

namespace detail {
#if !defined(__CUDACC__)
// The box elements of `m` at `coords`, in box order (innermost fastest): fn(byte offset in
// the box before the swizzle, byte offset in the tensor, whether it is inside the tensor).
template <class Fn>
inline void for_each_box_element(const EmuTensorMap& m, const int32_t* coords, Fn fn) {
  const unsigned esize = tma_type_bytes(TmaType(m.type));
  uint32_t idx[5] = {0, 0, 0, 0, 0};
  size_t total = 1;
  for (int i = 0; i < m.rank; ++i) total *= m.box[i];
  for (size_t e = 0; e < total; ++e) {
    bool inside = true;
    uint64_t offset = 0;
    for (int i = 0; i < m.rank; ++i) {
      const int64_t c = int64_t(coords[i]) + idx[i];
      if (c < 0 || uint64_t(c) >= m.dims[i]) inside = false;
      offset += uint64_t(c) * m.strides[i];
    }
    fn(uint32_t(e * esize), offset, inside);
    for (int i = 0; i < m.rank; ++i) {
      if (++idx[i] < m.box[i]) break;
      idx[i] = 0;
    }
  }
}

// The shared-memory side of a box is dense rows of box[0] elements whose 16-byte chunks
// the swizzle permutes by the address bits above them; the tile is aligned to the period,
// so offsets relative to it swizzle like the addresses.
struct TmaLoad {
  EmuTensorMap map;
  int32_t coords[5];
  unsigned char* dst;  // host pointer of the shared-memory destination

  static void run(void* self) {
    const auto& t = *static_cast<const TmaLoad*>(self);
    const unsigned esize = tma_type_bytes(TmaType(t.map.type));
    const auto sw = Swizzle(t.map.swizzle);
    const auto* global = reinterpret_cast<const unsigned char*>(t.map.global);
    const bool nan_fill = t.map.oob_nan;
    for_each_box_element(t.map, t.coords, [&](uint32_t at, uint64_t offset, bool inside) {
      unsigned char* out = t.dst + swizzle_address(sw, at);
      if (inside) {
        std::memcpy(out, global + offset, esize);
      } else if (nan_fill) {
        // A quiet NaN; the bits the hardware writes are not documented (tests check NaN-ness).
        const uint32_t nan32 = 0x7fffffffu;
        const uint16_t nan16 = 0x7fffu;
        if (esize == 4) {
          std::memcpy(out, &nan32, 4);
        } else {
          std::memcpy(out, &nan16, 2);
        }
      } else {
        std::memset(out, 0, esize);
      }
    });
  }
  static void destroy(void* self) { delete static_cast<TmaLoad*>(self); }
};

struct TmaStore {
  EmuTensorMap map;
  int32_t coords[5];
  const unsigned char* src;  // host pointer of the shared-memory source

  // Elements outside the tensor are not written (the box is clipped).
  static void run(void* self) {
    const auto& t = *static_cast<const TmaStore*>(self);
    const unsigned esize = tma_type_bytes(TmaType(t.map.type));
    const auto sw = Swizzle(t.map.swizzle);
    auto* global = reinterpret_cast<unsigned char*>(t.map.global);
    for_each_box_element(t.map, t.coords, [&](uint32_t at, uint64_t offset, bool inside) {
      if (inside) std::memcpy(global + offset, t.src + swizzle_address(sw, at), esize);
    });
  }
  static void destroy(void* self) { delete static_cast<TmaStore*>(self); }
};

// Copies the map at `map` into `m` after checking it for a TMA of `rank` coordinates whose
// shared-memory side is `smem` (aligned to 128 bytes and to the swizzle period, the whole
// box in one allocation); returns the box bytes.
inline size_t checked_tma(EmuTensorMap& m, const TensorMap* map, int rank, const void* smem,
                          const char* what) {
  std::memcpy(&m, map, sizeof m);
  if (m.magic != kEmuTensorMapMagic) {
    ::fastattn::emu::fail("%s: the tensor map at %p was not made by make_tensor_map", what,
                          static_cast<const void*>(map));
  }
  if (m.rank != rank) {
    ::fastattn::emu::fail("%s: %d coordinates for a rank-%d tensor map", what, rank, int(m.rank));
  }
  size_t bytes = tma_type_bytes(TmaType(m.type));
  for (int i = 0; i < rank; ++i) bytes *= m.box[i];
  const uint32_t addr = smem_u32(smem);
  const unsigned period = swizzle_period(Swizzle(m.swizzle));
  if (addr % 128 || (period && addr % period)) {
    ::fastattn::emu::fail("%s: shared address 0x%x is not aligned to %u bytes%s", what, addr,
                          period > 128 ? period : 128u,
                          period > 128 ? " (the map's swizzle period)" : "");
  }
  ::fastattn::emu::shared_pointer(addr, bytes, what);
  return bytes;
}
#endif
}  // namespace detail

// cp.async.bulk.tensor.<rank>d.shared::cluster.global.mbarrier::complete_tx::bytes: issued
// by one thread; see the header comment.
template <int kRank>
FA_DEVICE void tma_load(void* dst, const TensorMap* map, uint64_t* bar,
                        const int32_t (&c)[kRank]) {
  static_assert(kRank >= 1 && kRank <= 5, "1-5 dimensional boxes");
#if defined(__CUDACC__)
#if defined(FA_SM90)
  const uint32_t d = smem_u32(dst), b = smem_u32(bar);
  const uint64_t m = reinterpret_cast<uint64_t>(map);
  if constexpr (kRank == 1) {
    asm volatile(
        "cp.async.bulk.tensor.1d.shared::cluster.global.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%3}], [%2];" ::"r"(d), "l"(m), "r"(b), "r"(c[0])
        : "memory");
  } else if constexpr (kRank == 2) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%3, %4}], [%2];" ::"r"(d), "l"(m), "r"(b), "r"(c[0]), "r"(c[1])
        : "memory");
  } else if constexpr (kRank == 3) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%3, %4, %5}], [%2];" ::"r"(d), "l"(m), "r"(b), "r"(c[0]), "r"(c[1]),
        "r"(c[2])
        : "memory");
  } else if constexpr (kRank == 4) {
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%3, %4, %5, %6}], [%2];" ::"r"(d), "l"(m), "r"(b), "r"(c[0]), "r"(c[1]),
        "r"(c[2]), "r"(c[3])
        : "memory");
  } else {
    asm volatile(
        "cp.async.bulk.tensor.5d.shared::cluster.global.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%3, %4, %5, %6, %7}], [%2];" ::"r"(d), "l"(m), "r"(b), "r"(c[0]),
        "r"(c[1]), "r"(c[2]), "r"(c[3]), "r"(c[4])
        : "memory");
  }
#else
  __trap();
#endif
#else
  detail::EmuTensorMap m;
  const size_t bytes = detail::checked_tma(m, map, kRank, dst, "tma_load");
  auto* op = new detail::TmaLoad{m, {}, static_cast<unsigned char*>(dst)};
  for (int i = 0; i < kRank; ++i) op->coords[i] = c[i];
  ::fastattn::emu::bulk_copy_issue(bar, unsigned(bytes),
                                   {&detail::TmaLoad::run, &detail::TmaLoad::destroy, op});
#endif
}

// cp.async.bulk.tensor.<rank>d.global.shared::cta.bulk_group: one thread stores the box at
// `src` (laid out as tma_load writes it: dense, swizzled per the map) into the tensor at
// element coordinates c; elements outside the tensor are not written. The store reads
// `src` asynchronously: fence_proxy_async() after writing the tile with ordinary stores
// (and a barrier if other threads wrote it), then bulk_commit_group() and
// bulk_wait_group_read<0>() before `src` is overwritten (bulk_wait_group<0>() for the
// global writes to be complete, e.g. before the kernel's results are read by later code of
// the same kernel).
template <int kRank>
FA_DEVICE void tma_store(const TensorMap* map, const void* src, const int32_t (&c)[kRank]) {
  static_assert(kRank >= 1 && kRank <= 5, "1-5 dimensional boxes");
#if defined(__CUDACC__)
#if defined(FA_SM90)
  const uint32_t s = smem_u32(src);
  const uint64_t m = reinterpret_cast<uint64_t>(map);
  if constexpr (kRank == 1) {
    asm volatile("cp.async.bulk.tensor.1d.global.shared::cta.bulk_group [%0, {%2}], [%1];"
                 ::"l"(m), "r"(s), "r"(c[0]) : "memory");
  } else if constexpr (kRank == 2) {
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];"
                 ::"l"(m), "r"(s), "r"(c[0]), "r"(c[1]) : "memory");
  } else if constexpr (kRank == 3) {
    asm volatile(
        "cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%2, %3, %4}], [%1];"
        ::"l"(m), "r"(s), "r"(c[0]), "r"(c[1]), "r"(c[2]) : "memory");
  } else if constexpr (kRank == 4) {
    asm volatile(
        "cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];"
        ::"l"(m), "r"(s), "r"(c[0]), "r"(c[1]), "r"(c[2]), "r"(c[3]) : "memory");
  } else {
    asm volatile(
        "cp.async.bulk.tensor.5d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5, %6}], "
        "[%1];" ::"l"(m), "r"(s), "r"(c[0]), "r"(c[1]), "r"(c[2]), "r"(c[3]), "r"(c[4])
        : "memory");
  }
#else
  __trap();
#endif
#else
  detail::EmuTensorMap m;
  detail::checked_tma(m, map, kRank, src, "tma_store");
  auto* op = new detail::TmaStore{m, {}, static_cast<const unsigned char*>(src)};
  for (int i = 0; i < kRank; ++i) op->coords[i] = c[i];
  ::fastattn::emu::bulk_store_issue({&detail::TmaStore::run, &detail::TmaStore::destroy, op});
#endif
}

// cp.async.bulk.commit_group: closes this thread's group of bulk stores.
FA_DEVICE void bulk_commit_group() {
#if defined(__CUDACC__)
#if defined(FA_SM90)
  asm volatile("cp.async.bulk.commit_group;" ::: "memory");
#else
  __trap();
#endif
#else
  ::fastattn::emu::bulk_commit();
#endif
}

// cp.async.bulk.wait_group.read N: all but the newest N groups have read their shared memory.
template <int N>
FA_DEVICE void bulk_wait_group_read() {
  static_assert(N >= 0, "a non-negative immediate");
#if defined(__CUDACC__)
#if defined(FA_SM90)
  asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(N) : "memory");
#else
  __trap();
#endif
#else
  ::fastattn::emu::bulk_wait(unsigned(N));
#endif
}

// cp.async.bulk.wait_group N: all but the newest N groups have completed their writes.
template <int N>
FA_DEVICE void bulk_wait_group() {
  static_assert(N >= 0, "a non-negative immediate");
#if defined(__CUDACC__)
#if defined(FA_SM90)
  asm volatile("cp.async.bulk.wait_group %0;" ::"n"(N) : "memory");
#else
  __trap();
#endif
#else
  ::fastattn::emu::bulk_wait(unsigned(N));
#endif
}

FA_DEVICE_NAMESPACE_END
