#pragma once
// Tensor-core MMA (mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32) and
// ldmatrix (ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16). Both are warp
// collectives: all 32 lanes execute the same instruction.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type").
// With g = lane >> 2 and t = lane & 3, and the two 16-bit elements of a b32 register listed
// low half first:
//   A (16x16, row-major, 4 regs):  a[0] = A[g][2t..2t+1]     a[1] = A[g+8][2t..2t+1]
//                                  a[2] = A[g][2t+8..2t+9]   a[3] = A[g+8][2t+8..2t+9]
//   B (16x8, K x N, 2 regs):       b[0] = B[2t..2t+1][g]     b[1] = B[2t+8..2t+9][g]
//   C, D (16x8, fp32, 4 regs):     c[0..1] = C[g][2t..2t+1]  c[2..3] = C[g+8][2t..2t+1]
//
// ldmatrix: lanes 8i..8i+7 give the 16-byte-aligned shared-memory addresses of rows 0..7 of
// matrix i (x1 reads lanes 0-7, x2 lanes 0-15, x4 all lanes; other lanes' addresses are
// ignored). Register i of lane l receives row l/4, elements 2(l%4) and 2(l%4)+1 of matrix i;
// with .trans, of the transposed matrix: elements [2(l%4)][l/4] and [2(l%4)+1][l/4].
// So for a row-major 16x16 A tile, x4 with lane address &A[l % 16][(l / 16) * 8] yields
// exactly a[0..3]; for B stored K-major (row k holds N contiguous elements), x2.trans with
// lane address &B[l % 16][0] yields b[0..1].
#include "fastattn/device/config.h"
#include "fastattn/device/math.h"

FA_DEVICE_NAMESPACE_BEGIN

namespace detail {
#if !defined(__CUDACC__)
struct MmaOperand {
  uint32_t a[4];
  uint32_t b[2];
  float c[4];
};

// Products of two fp16 or two bf16 values are exact in double, and so (to far below fp32
// resolution) is their 16-term sum: D is C + A*B rounded once to fp32. Hardware rounds its
// partial sums in an undocumented way (within a few fp32 ulps of this).
template <bool kBf16>
inline void mma_m16n8k16_collective(const void* const* ops, void* const* res) {
  float a[16][16], b[16][8], c[16][8];
  auto elem = [](uint32_t reg, int half) {
    const uint16_t h = uint16_t(half ? reg >> 16 : reg & 0xffffu);
    return kBf16 ? bf16_bits_to_float(h) : f16_bits_to_float(h);
  };
  for (int lane = 0; lane < 32; ++lane) {
    const auto* op = static_cast<const MmaOperand*>(ops[lane]);
    const int g = lane >> 2, t = lane & 3;
    for (int h = 0; h < 2; ++h) {
      a[g][2 * t + h] = elem(op->a[0], h);
      a[g + 8][2 * t + h] = elem(op->a[1], h);
      a[g][2 * t + 8 + h] = elem(op->a[2], h);
      a[g + 8][2 * t + 8 + h] = elem(op->a[3], h);
      b[2 * t + h][g] = elem(op->b[0], h);
      b[2 * t + 8 + h][g] = elem(op->b[1], h);
      c[g][2 * t + h] = op->c[h];
      c[g + 8][2 * t + h] = op->c[2 + h];
    }
  }
  float d[16][8];
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 8; ++j) {
      double acc = c[i][j];
      for (int k = 0; k < 16; ++k) acc += double(a[i][k]) * double(b[k][j]);
      d[i][j] = float(acc);
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    float* out = static_cast<float*>(res[lane]);
    const int g = lane >> 2, t = lane & 3;
    out[0] = d[g][2 * t];
    out[1] = d[g][2 * t + 1];
    out[2] = d[g + 8][2 * t];
    out[3] = d[g + 8][2 * t + 1];
  }
}
#endif
}  // namespace detail

// D = A * B + C for one 16x8x16 tile per warp; T is half_t or bf16_t (the type of the
// elements packed in a and b). d may alias c.
template <class T>
FA_DEVICE void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                            const float (&c)[4]) {
  static_assert(std::is_same_v<T, half_t> || std::is_same_v<T, bf16_t>, "fp16 or bf16 inputs");
#if defined(__CUDACC__)
  if constexpr (std::is_same_v<T, half_t>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
          "f"(c[1]), "f"(c[2]), "f"(c[3]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
          "f"(c[1]), "f"(c[2]), "f"(c[3]));
  }
#else
  constexpr bool kBf16 = std::is_same_v<T, bf16_t>;
  // Operands are copied, so d aliasing c is harmless.
  detail::MmaOperand op{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}, {c[0], c[1], c[2], c[3]}};
  float out[4];
  ::fastattn::emu::warp_collective(
      kBf16 ? "mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32"
            : "mma.sync.m16n8k16.row.col.f32.f16.f16.f32",
      detail::mma_m16n8k16_collective<kBf16>, &op, out);
  for (int i = 0; i < 4; ++i) d[i] = out[i];
#endif
}

namespace detail {
#if !defined(__CUDACC__)
template <int kNum, bool kTrans>
inline void ldmatrix_collective(const void* const* ops, void* const* res) {
  // Row addresses of each matrix, checked before any lane reads.
  const unsigned char* rows[4][8];
  for (int i = 0; i < kNum; ++i) {
    for (int r = 0; r < 8; ++r) {
      const auto* p = *static_cast<const unsigned char* const*>(ops[8 * i + r]);
      if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
        ::fastattn::emu::fail("ldmatrix: lane %d row address %p is not 16-byte aligned", 8 * i + r,
                              static_cast<const void*>(p));
      }
      if (!::fastattn::emu::is_shared(p, 16)) {
        ::fastattn::emu::fail("ldmatrix: lane %d row address %p is not in shared memory",
                              8 * i + r, static_cast<const void*>(p));
      }
      rows[i][r] = p;
    }
  }
  auto elem = [&](int i, int row, int col) {
    uint16_t v;
    memcpy(&v, rows[i][row] + 2 * col, 2);
    return uint32_t(v);
  };
  for (int lane = 0; lane < 32; ++lane) {
    uint32_t* out = static_cast<uint32_t*>(res[lane]);
    const int r = lane >> 2, c = 2 * (lane & 3);
    for (int i = 0; i < kNum; ++i) {
      out[i] = kTrans ? (elem(i, c, r) | (elem(i, c + 1, r) << 16))
                      : (elem(i, r, c) | (elem(i, r, c + 1) << 16));
    }
  }
}

template <int kNum, bool kTrans>
constexpr const char* ldmatrix_name() {
  if constexpr (kNum == 1) return kTrans ? "ldmatrix.m8n8.x1.trans.b16" : "ldmatrix.m8n8.x1.b16";
  if constexpr (kNum == 2) return kTrans ? "ldmatrix.m8n8.x2.trans.b16" : "ldmatrix.m8n8.x2.b16";
  return kTrans ? "ldmatrix.m8n8.x4.trans.b16" : "ldmatrix.m8n8.x4.b16";
}
#endif
}  // namespace detail

// ldmatrix.sync.aligned.m8n8.x{kNum}{.trans}.shared.b16: loads kNum 8x8 matrices of 16-bit
// elements; `row` is this lane's row address in shared memory (see the header comment).
template <int kNum, bool kTrans = false>
FA_DEVICE void ldmatrix(uint32_t (&r)[kNum], const void* row) {
  static_assert(kNum == 1 || kNum == 2 || kNum == 4, "x1, x2 or x4");
#if defined(__CUDACC__)
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (kNum == 1) {
    if constexpr (kTrans) {
      asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];"
                   : "=r"(r[0]) : "r"(addr) : "memory");
    } else {
      asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];"
                   : "=r"(r[0]) : "r"(addr) : "memory");
    }
  } else if constexpr (kNum == 2) {
    if constexpr (kTrans) {
      asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
                   : "=r"(r[0]), "=r"(r[1]) : "r"(addr) : "memory");
    } else {
      asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];"
                   : "=r"(r[0]), "=r"(r[1]) : "r"(addr) : "memory");
    }
  } else {
    if constexpr (kTrans) {
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                   : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr)
                   : "memory");
    } else {
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                   : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr)
                   : "memory");
    }
  }
#else
  uint32_t out[4];
  ::fastattn::emu::warp_collective(detail::ldmatrix_name<kNum, kTrans>(),
                                   detail::ldmatrix_collective<kNum, kTrans>, &row, out);
  for (int i = 0; i < kNum; ++i) r[i] = out[i];
#endif
}

FA_DEVICE_NAMESPACE_END
