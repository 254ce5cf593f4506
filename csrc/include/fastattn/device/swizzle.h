#pragma once
// Shared-memory swizzle modes of TMA and wgmma (sm_90), and their address function.
//
// A swizzled tile is stored in rows of W = 32, 64 or 128 bytes; the 16-byte chunk index
// inside each row is XORed with bits of the row index, so that the 8 rows a core matrix
// reads (or a TMA box writes) fall into different bank groups. Hardware applies it to the
// shared-memory address itself: bits [4, 4 + b) of the address are XORed with bits
// [7, 7 + b), b = log2(W / 16) (CuTe writes it Swizzle<b, 4, 3>). The pattern therefore
// repeats every 8 * 128 = 1024 (128B), 512 (64B) or 256 (32B) bytes of address, and a
// swizzled tile starts at a multiple of that period.
#include "fastattn/device/config.h"
#include "fastattn/macros.h"

FA_DEVICE_NAMESPACE_BEGIN

// Values as in the wgmma matrix descriptor's layout field (bits 62-63).
enum class Swizzle : uint8_t { kNone = 0, k128B = 1, k64B = 2, k32B = 3 };

// log2(W / 16): 0 for none, 1 for 32B, 2 for 64B, 3 for 128B.
FA_HD constexpr unsigned swizzle_bits(Swizzle s) {
  return s == Swizzle::k128B ? 3u : s == Swizzle::k64B ? 2u : s == Swizzle::k32B ? 1u : 0u;
}

// Row width W in bytes (16 for none: a core-matrix row).
FA_HD constexpr unsigned swizzle_bytes(Swizzle s) { return 16u << swizzle_bits(s); }

// The period of the pattern in bytes of address (0 for none).
FA_HD constexpr unsigned swizzle_period(Swizzle s) {
  return s == Swizzle::kNone ? 0u : 128u << swizzle_bits(s);
}

// The address a swizzled access really touches, for the unswizzled address `addr`.
FA_HD constexpr uint32_t swizzle_address(Swizzle s, uint32_t addr) {
  const unsigned b = swizzle_bits(s);
  const uint32_t mask = (1u << b) - 1u;
  return addr ^ (((addr >> 7) & mask) << 4);
}

FA_DEVICE_NAMESPACE_END
