#pragma once
// Conversions between fp32 and fp16/bf16, packing two 16-bit values into a b32 register
// (the operand format of mma/ldmatrix), and the fast approximate math of the softmax.
//
// Conversions are exact in the emulation: round-to-nearest-even (cvt.rn), overflow to inf,
// subnormals kept, NaN -> canonical NaN (0x7fff). The approximate instructions (ex2, rcp,
// tanh .approx) have undocumented hardware algorithms; the emulation returns the libm value
// with the same flush-to-zero behaviour, which lies inside the documented error bounds but
// is not bit-identical to the GPU.
#include <cmath>

#include "fastattn/device/config.h"

FA_DEVICE_NAMESPACE_BEGIN

FA_DEVICE uint32_t float_as_uint(float f) {
#if defined(__CUDACC__)
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
#endif
}

FA_DEVICE float uint_as_float(uint32_t u) {
#if defined(__CUDACC__)
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, 4);
  return f;
#endif
}

#if !defined(__CUDACC__)
namespace detail {
// Exact widening conversions.
inline float bf16_bits_to_float(uint16_t h) {
  const uint32_t x = uint32_t(h) << 16;
  float f;
  memcpy(&f, &x, 4);
  return f;
}

inline float f16_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t x;
  if (exp == 0x1f) {
    x = sign | 0x7f800000u | (mant << 13);  // inf, NaN (payload kept)
  } else if (exp != 0) {
    x = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    x = sign;
  } else {  // subnormal: normalise
    exp = 113;
    while (!(mant & 0x400u)) {
      mant <<= 1;
      --exp;
    }
    x = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  memcpy(&f, &x, 4);
  return f;
}

// cvt.rn.f16.f32
inline uint16_t float_to_f16_bits(float f) {
  const uint32_t x = float_as_uint(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return 0x7fffu;                       // NaN
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);     // >= 65520 rounds to inf
  if (ax >= 0x38800000u) {                                    // normal fp16 (>= 2^-14)
    uint32_t h = ((ax >> 23) - 112) << 10 | ((ax >> 13) & 0x3ffu);
    const uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry bumps the exponent
    return uint16_t(sign | h);
  }
  if (ax <= 0x33000000u) return uint16_t(sign);  // <= 2^-25 (a tie) rounds to zero
  // Subnormal fp16: value = mant * 2^(e - 150); in units of 2^-24 that is mant >> (126 - e).
  const uint32_t e = ax >> 23;
  const uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126 - e;
  uint32_t q = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return uint16_t(sign | q);
}

// cvt.rn.bf16.f32
inline uint16_t float_to_bf16_bits(float f) {
  const uint32_t x = float_as_uint(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;  // NaN
  return uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
}  // namespace detail
#endif

FA_DEVICE float to_float(float x) { return x; }

FA_DEVICE float to_float(half_t h) {
#if defined(__CUDACC__)
  return __half2float(h);
#else
  return detail::f16_bits_to_float(h.bits);
#endif
}

FA_DEVICE float to_float(bf16_t h) {
#if defined(__CUDACC__)
  return __bfloat162float(h);
#else
  return uint_as_float(uint32_t(h.bits) << 16);
#endif
}

// Round-to-nearest-even conversion from fp32: from_float<half_t>(x), from_float<bf16_t>(x).
template <class T>
FA_DEVICE T from_float(float x);

template <>
FA_DEVICE float from_float<float>(float x) {
  return x;
}

template <>
FA_DEVICE half_t from_float<half_t>(float x) {
#if defined(__CUDACC__)
  return __float2half_rn(x);
#else
  return half_t{detail::float_to_f16_bits(x)};
#endif
}

template <>
FA_DEVICE bf16_t from_float<bf16_t>(float x) {
#if defined(__CUDACC__)
  return __float2bfloat16_rn(x);
#else
  return bf16_t{detail::float_to_bf16_bits(x)};
#endif
}

// The 16-bit pattern of an fp16/bf16 value, and back.
FA_DEVICE uint16_t bits_of(half_t h) {
#if defined(__CUDACC__)
  return __half_as_ushort(h);
#else
  return h.bits;
#endif
}

FA_DEVICE uint16_t bits_of(bf16_t h) {
#if defined(__CUDACC__)
  return __bfloat16_as_ushort(h);
#else
  return h.bits;
#endif
}

template <class T>
FA_DEVICE T from_bits(uint16_t b) {
  static_assert(std::is_same_v<T, half_t> || std::is_same_v<T, bf16_t>, "fp16 or bf16");
#if defined(__CUDACC__)
  if constexpr (std::is_same_v<T, half_t>) {
    return __ushort_as_half(b);
  } else {
    return __ushort_as_bfloat16(b);
  }
#else
  return T{b};
#endif
}

// Two values in one b32 register, `lo` in bits 0-15 (the first element of an mma/ldmatrix
// pair): cvt.rn.{f16,bf16}x2.f32 d, hi, lo.
template <class T>
FA_DEVICE uint32_t pack2(float lo, float hi) {
  static_assert(std::is_same_v<T, half_t> || std::is_same_v<T, bf16_t>, "fp16 or bf16");
#if defined(__CUDACC__)
  uint32_t r;
  if constexpr (std::is_same_v<T, half_t>) {
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  } else {
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  }
  return r;
#else
  return uint32_t(bits_of(from_float<T>(lo))) | (uint32_t(bits_of(from_float<T>(hi))) << 16);
#endif
}

// Two stored 16-bit values (lo first in memory) as one b32 register.
template <class T>
FA_DEVICE uint32_t pack2_bits(T lo, T hi) {
  return uint32_t(bits_of(lo)) | (uint32_t(bits_of(hi)) << 16);
}

// The inverse of pack2 (exact).
template <class T>
FA_DEVICE float2 unpack2(uint32_t r) {
  float2 f;
  f.x = to_float(from_bits<T>(uint16_t(r & 0xffffu)));
  f.y = to_float(from_bits<T>(uint16_t(r >> 16)));
  return f;
}

// ex2.approx.ftz.f32: 2^x, subnormal inputs and results flushed to zero.
FA_DEVICE float fast_exp2(float x) {
#if defined(__CUDACC__)
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
#else
  const float r = std::exp2(x);
  return std::fpclassify(r) == FP_SUBNORMAL ? 0.f : r;
#endif
}

// rcp.approx.ftz.f32: 1/x; a subnormal x counts as +-0 (-> +-inf), subnormal results flush.
FA_DEVICE float fast_rcp(float x) {
#if defined(__CUDACC__)
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
#else
  if (std::fpclassify(x) == FP_SUBNORMAL) x = std::copysign(0.f, x);
  const float r = 1.f / x;
  return std::fpclassify(r) == FP_SUBNORMAL ? std::copysign(0.f, r) : r;
#endif
}

// tanh.approx.f32 (sm_75+): tanh(x), absolute error around 2^-11 on hardware. For softcap.
FA_DEVICE float fast_tanh(float x) {
#if defined(__CUDACC__)
  float r;
  asm("tanh.approx.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
#else
  return std::tanh(x);
#endif
}

FA_DEVICE_NAMESPACE_END
