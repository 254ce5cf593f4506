#pragma once
// fp8 storage types and their conversions (the fp8 KV cache): OCP e4m3fn ("e4m3": no
// infinity, NaN = 0x7f/0xff, max 448) and e5m2 (IEEE-like: inf = 0x7c/0xfc, NaN =
// 0x7d-0x7f/0xfd-0xff, max 57344).
//
//   fp8_e4m3_t, fp8_e5m2_t            1-byte storage { uint8_t bits; }; template arguments F
//   fp8_traits<F>                     kExpBits, kMantBits, kBias, kMax (448, 57344),
//                                     kMaxBits (0x7e, 0x7b), kNaNBits (0x7f), kHasInf
//   is_fp8_v<T>
//   Fp8Path                           kNative (default) or kSoftware, see below
//
// Packing: fp8 codes are packed first element in the lowest byte (memory order); 16-bit
// results first element in the low half (the mma/ldmatrix operand order, as pack2).
//
// Widening (exact: every fp8 value is an fp16 and a bf16 value):
//   uint32_t fp8x2_to_f16x2<F, P>(uint16_t codes)       cvt.rn.f16x2.{e4m3x2,e5m2x2}
//   float2   fp8x2_to_float2<F, P>(uint16_t codes)      f16x2, then cvt.f32.f16
//   uint32_t fp8x2_to_bf16x2<F, P>(uint16_t codes)      f16x2, cvt.f32.f16, cvt.rn.bf16x2.f32
//   uint32_t fp8x2_to_pack2<T, F, P>(uint16_t codes)    T = half_t or bf16_t (for kernels
//                                                       templated on the mma operand type)
//   uint2    fp8x4_to_pack2x2<T, F, P>(uint32_t codes)  .x = codes 0, 1; .y = codes 2, 3 (a
//                                                       16-byte load gives four of these)
//   float    to_float(fp8_e4m3_t | fp8_e5m2_t)
// Narrowing (round to nearest even, saturate to the finite range: |x| > max and +-inf give
// +-max; NaN gives NaN; the sign of zero and of underflow is kept):
//   uint16_t float2_to_fp8x2<F, P>(float lo, float hi)  cvt.rn.satfinite.{e4m3x2,e5m2x2}.f32
//                                                       d, hi, lo (a goes to the upper byte)
//   F        from_float<F>(float x)
//
// P (Fp8Path) defaults to kNative: the hardware cvt when __CUDA_ARCH__ >= 890 (the sm_90a
// build included), the software path on older GPUs (sm_80), and under FASTATTN_EMULATION an
// exact emulation of the cvt instructions written independently of the software path
// (through double, not bit tricks). Fp8Path::kSoftware selects the software path everywhere:
// plain integer code plus mul.rn.f16x2 (sm_53+), compiled the same way in both builds, so
// the emulation runs it too. tests/test_primitives.py checks both paths on all 256 codes and
// on every rounding boundary against float64 references; on a GPU that includes the hardware.
//
// NaN bit patterns. The PTX ISA only says "NaN" for these conversions, not which one.
// Like CUDA's own pre-sm_89 fallback in cuda_fp8.hpp (the only public statement), the
// emulation and the software path drop the sign and payload: every NaN narrows to 0x7f (both
// formats) and every fp8 NaN widens to the fp16 0x7fff (and hence bf16 0x7fff, the fp32 NaN
// 0x7fffe000). Whether the hardware produces exactly these bits is undocumented: the
// primitive tests require NaN-ness on the GPU (and warn if the bits differ), exact bits
// under emulation.
#include <algorithm>
#include <cmath>

#include "fastattn/device/config.h"
#include "fastattn/device/math.h"

FA_DEVICE_NAMESPACE_BEGIN

struct alignas(1) fp8_e4m3_t {
  uint8_t bits;
};
struct alignas(1) fp8_e5m2_t {
  uint8_t bits;
};
static_assert(sizeof(fp8_e4m3_t) == 1 && sizeof(fp8_e5m2_t) == 1, "8-bit float storage");

// The numbers of a format with kExp exponent and kMant mantissa bits (IEEE bias), whose
// largest finite code is kMaxCode; both formats use 0x7f as their NaN.
template <int kExp, int kMant, uint8_t kMaxCode, bool kInf>
struct fp8_format {
  static constexpr int kExpBits = kExp;
  static constexpr int kMantBits = kMant;
  static constexpr int kBias = (1 << (kExp - 1)) - 1;
  static constexpr uint8_t kMaxBits = kMaxCode;
  static constexpr uint8_t kNaNBits = 0x7f;
  static constexpr bool kHasInf = kInf;
  static constexpr float kMax = float((1 << kMant) + (kMaxCode & ((1 << kMant) - 1))) *
                                float(1u << ((kMaxCode >> kMant) - kBias)) / float(1 << kMant);
};

template <class F>
struct fp8_traits;
template <>
struct fp8_traits<fp8_e4m3_t> : fp8_format<4, 3, 0x7e, false> {};
template <>
struct fp8_traits<fp8_e5m2_t> : fp8_format<5, 2, 0x7b, true> {};
static_assert(fp8_traits<fp8_e4m3_t>::kMax == 448.0f && fp8_traits<fp8_e5m2_t>::kMax == 57344.0f);

template <class T>
inline constexpr bool is_fp8_v = std::is_same_v<T, fp8_e4m3_t> || std::is_same_v<T, fp8_e5m2_t>;

// The implementation a conversion uses: kNative is the hardware cvt on sm_89+ and the
// software path below that (under emulation: the exact emulation of the cvt); kSoftware is
// the software path everywhere (for the tests, which compare the two).
enum class Fp8Path { kNative, kSoftware };

namespace detail {

// mul.rn.f16x2 (sm_53+; subnormals kept without .ftz). Exact in the emulation: the product
// of two fp16 values is exact in fp32, then rounded once.
FA_DEVICE uint32_t mul_f16x2_rn(uint32_t a, uint32_t b) {
#if defined(__CUDACC__)
  uint32_t r;
  asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  return r;
#else
  const float lo = f16_bits_to_float(uint16_t(a)) * f16_bits_to_float(uint16_t(b));
  const float hi = f16_bits_to_float(uint16_t(a >> 16)) * f16_bits_to_float(uint16_t(b >> 16));
  return uint32_t(float_to_f16_bits(lo)) | (uint32_t(float_to_f16_bits(hi)) << 16);
#endif
}

// Per 16-bit half: 0xffff where `flags` has bit kBit of that half set, else 0.
template <int kBit>
FA_DEVICE uint32_t half_masks(uint32_t flags) {
  return ((flags >> kBit) & 0x00010001u) * 0xffffu;
}

// The software widening of two codes. Each byte is first moved into its own 16-bit half.
template <class F>
FA_DEVICE uint32_t fp8x2_to_f16x2_bits(uint16_t codes) {
  static_assert(is_fp8_v<F>, "fp8_e4m3_t or fp8_e5m2_t");
  const uint32_t t = (uint32_t(codes) & 0xffu) | ((uint32_t(codes) & 0xff00u) << 8);
  uint32_t h, nan;
  if constexpr (std::is_same_v<F, fp8_e5m2_t>) {
    // e5m2 is the top byte of an fp16 with the same exponent bias: exact, inf included.
    h = t << 8;
    nan = ((h & 0x7fff7fffu) + 0x03ff03ffu) & 0x80008000u;  // |h| > 0x7c00 (no carry out)
    nan = half_masks<15>(nan);
  } else {
    // sign | exponent and mantissa shifted to fp16 positions: as an fp16 (subnormals
    // included) that is the value times 2^(7 - 15); multiplying by 256 is exact.
    h = ((t & 0x00800080u) << 8) | ((t & 0x007f007fu) << 7);
    h = mul_f16x2_rn(h, 0x5c005c00u);                         // 256.0 in both halves
    nan = half_masks<7>(((t & 0x007f007fu) + 0x00010001u));  // low 7 bits all ones
  }
  return (h & ~nan) | (0x7fff7fffu & nan);
}

// The software narrowing of one value: the code in the low 8 bits.
template <class F>
FA_DEVICE uint32_t float_to_fp8_bits(float f) {
  static_assert(is_fp8_v<F>, "fp8_e4m3_t or fp8_e5m2_t");
  using Tr = fp8_traits<F>;
  constexpr int kDrop = 23 - Tr::kMantBits;  // fp32 mantissa bits dropped
  constexpr uint32_t kMinNormal = uint32_t(128 - Tr::kBias) << 23;  // 2^(1 - bias)
  const uint32_t x = float_as_uint(f);
  const uint32_t sign = (x >> 24) & 0x80u;
  const uint32_t a = x & 0x7fffffffu;
  if (a > 0x7f800000u) return Tr::kNaNBits;
  uint32_t q;
  if (a >= kMinNormal) {
    // Round the mantissa to kMantBits (a carry bumps the exponent), rebias; anything
    // past the largest finite code (rounding overflow, inf) saturates.
    q = (a + (1u << (kDrop - 1)) - 1u + ((a >> kDrop) & 1u)) >> kDrop;
    q -= uint32_t(127 - Tr::kBias) << Tr::kMantBits;
    q = q > Tr::kMaxBits ? uint32_t(Tr::kMaxBits) : q;
  } else {
    // Subnormal fp8 (or zero): the value in units of 2^(1 - bias - kMantBits) is
    // mant * 2^(e - 150) / 2^(1 - bias - kMantBits) = mant >> shift.
    const uint32_t e = a >> 23;
    const uint32_t mant = e ? ((a & 0x7fffffu) | 0x800000u) : a;
    const uint32_t shift = uint32_t(151 - Tr::kBias - Tr::kMantBits) - (e ? e : 1u);
    // Rounding up to 1 << kMantBits gives the smallest normal code, as it should.
    if (shift > 24) {
      q = 0;  // below half the smallest subnormal (mant < 2^24)
    } else {
      q = mant >> shift;
      const uint32_t rem = mant & ((1u << shift) - 1u);
      const uint32_t half = 1u << (shift - 1);
      q += (rem > half || (rem == half && (q & 1u))) ? 1u : 0u;
    }
  }
  return sign | q;
}

#if !defined(__CUDACC__)
// Emulation of the hardware cvt instructions, deliberately by another route than the
// software path's bit manipulation: values through double.
template <class F>
inline bool fp8_is_nan(uint8_t c) {
  if constexpr (fp8_traits<F>::kHasInf) {
    return (c & 0x7fu) > 0x7cu;
  } else {
    return (c & 0x7fu) == 0x7fu;
  }
}

template <class F>
inline double fp8_value(uint8_t c) {  // not for NaN codes
  using Tr = fp8_traits<F>;
  const int e = (c & 0x7f) >> Tr::kMantBits;
  const int m = c & ((1 << Tr::kMantBits) - 1);
  double v;
  if (Tr::kHasInf && e == (1 << Tr::kExpBits) - 1) {
    v = INFINITY;
  } else if (e == 0) {
    v = std::ldexp(double(m), 1 - Tr::kBias - Tr::kMantBits);
  } else {
    v = std::ldexp(double(m + (1 << Tr::kMantBits)), e - Tr::kBias - Tr::kMantBits);
  }
  return (c & 0x80) ? -v : v;
}

// cvt.rn.f16x2.{e4m3x2,e5m2x2} on one code.
template <class F>
inline uint16_t cvt_fp8_to_f16(uint8_t c) {
  if (fp8_is_nan<F>(c)) return 0x7fffu;  // undocumented bits: see the header comment
  return float_to_f16_bits(float(fp8_value<F>(c)));  // exact
}

// cvt.rn.satfinite.{e4m3x2,e5m2x2}.f32 on one value.
template <class F>
inline uint8_t cvt_rn_satfinite_fp8(float f) {
  using Tr = fp8_traits<F>;
  if (std::isnan(f)) return Tr::kNaNBits;  // undocumented bits: see the header comment
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  const double a = std::fabs(double(f));
  if (a > double(Tr::kMax)) return sign | Tr::kMaxBits;  // .satfinite, inf included
  // Scale so that one unit is the fp8 spacing at a, round to nearest even (exact in
  // double: a has 24 significant bits).
  int e;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  const int ulp_exp = std::max(e - 1, 1 - Tr::kBias) - Tr::kMantBits;
  const double s = std::ldexp(a, -ulp_exp);
  double n = std::floor(s);
  const double frac = s - n;
  if (frac > 0.5 || (frac == 0.5 && std::fmod(n, 2.0) != 0.0)) n += 1.0;
  const double r = std::ldexp(n, ulp_exp);
  if (r > double(Tr::kMax)) return sign | Tr::kMaxBits;
  if (r < std::ldexp(1.0, 1 - Tr::kBias)) return sign | uint8_t(n);  // subnormal or zero
  int re;
  const double rm = std::frexp(r, &re);  // r = rm * 2^re, rm in [0.5, 1)
  const int mant = int(std::ldexp(rm, Tr::kMantBits + 1)) - (1 << Tr::kMantBits);
  return sign | uint8_t(((re - 1 + Tr::kBias) << Tr::kMantBits) | mant);
}
#endif

}  // namespace detail

// ---------------------------------------------------------------------------------------
// Widening
// ---------------------------------------------------------------------------------------
template <class F, Fp8Path P = Fp8Path::kNative>
FA_DEVICE uint32_t fp8x2_to_f16x2(uint16_t codes) {
  static_assert(is_fp8_v<F>, "fp8_e4m3_t or fp8_e5m2_t");
  if constexpr (P == Fp8Path::kSoftware) {
    return detail::fp8x2_to_f16x2_bits<F>(codes);
  } else {
#if defined(__CUDACC__) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    uint32_t r;
    if constexpr (std::is_same_v<F, fp8_e4m3_t>) {
      asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(r) : "h"(codes));
    } else {
      asm("cvt.rn.f16x2.e5m2x2 %0, %1;" : "=r"(r) : "h"(codes));
    }
    return r;
#elif defined(__CUDACC__)
    return detail::fp8x2_to_f16x2_bits<F>(codes);
#else
    return uint32_t(detail::cvt_fp8_to_f16<F>(uint8_t(codes))) |
           (uint32_t(detail::cvt_fp8_to_f16<F>(uint8_t(codes >> 8))) << 16);
#endif
  }
}

template <class F, Fp8Path P = Fp8Path::kNative>
FA_DEVICE float2 fp8x2_to_float2(uint16_t codes) {
  return unpack2<half_t>(fp8x2_to_f16x2<F, P>(codes));
}

template <class F, Fp8Path P = Fp8Path::kNative>
FA_DEVICE uint32_t fp8x2_to_bf16x2(uint16_t codes) {
  const float2 f = fp8x2_to_float2<F, P>(codes);
  return pack2<bf16_t>(f.x, f.y);
}

// Into the 16-bit type T of an mma operand (half_t or bf16_t).
template <class T, class F, Fp8Path P = Fp8Path::kNative>
FA_DEVICE uint32_t fp8x2_to_pack2(uint16_t codes) {
  static_assert(std::is_same_v<T, half_t> || std::is_same_v<T, bf16_t>, "fp16 or bf16");
  if constexpr (std::is_same_v<T, half_t>) {
    return fp8x2_to_f16x2<F, P>(codes);
  } else {
    return fp8x2_to_bf16x2<F, P>(codes);
  }
}

// Four codes (first in the lowest byte) -> .x = elements 0, 1; .y = elements 2, 3.
template <class T, class F, Fp8Path P = Fp8Path::kNative>
FA_DEVICE uint2 fp8x4_to_pack2x2(uint32_t codes) {
  uint2 r;
  r.x = fp8x2_to_pack2<T, F, P>(uint16_t(codes));
  r.y = fp8x2_to_pack2<T, F, P>(uint16_t(codes >> 16));
  return r;
}

FA_DEVICE float to_float(fp8_e4m3_t v) { return fp8x2_to_float2<fp8_e4m3_t>(v.bits).x; }
FA_DEVICE float to_float(fp8_e5m2_t v) { return fp8x2_to_float2<fp8_e5m2_t>(v.bits).x; }

// ---------------------------------------------------------------------------------------
// Narrowing
// ---------------------------------------------------------------------------------------
template <class F, Fp8Path P = Fp8Path::kNative>
FA_DEVICE uint16_t float2_to_fp8x2(float lo, float hi) {
  static_assert(is_fp8_v<F>, "fp8_e4m3_t or fp8_e5m2_t");
  if constexpr (P == Fp8Path::kSoftware) {
    return uint16_t(detail::float_to_fp8_bits<F>(lo) | (detail::float_to_fp8_bits<F>(hi) << 8));
  } else {
#if defined(__CUDACC__) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    uint16_t r;  // the first source goes to the upper byte
    if constexpr (std::is_same_v<F, fp8_e4m3_t>) {
      asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
    } else {
      asm("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
    }
    return r;
#elif defined(__CUDACC__)
    return float2_to_fp8x2<F, Fp8Path::kSoftware>(lo, hi);
#else
    return uint16_t(detail::cvt_rn_satfinite_fp8<F>(lo) |
                    (uint32_t(detail::cvt_rn_satfinite_fp8<F>(hi)) << 8));
#endif
  }
}

template <>
FA_DEVICE fp8_e4m3_t from_float<fp8_e4m3_t>(float x) {
  return fp8_e4m3_t{uint8_t(float2_to_fp8x2<fp8_e4m3_t>(x, 0.0f))};
}

template <>
FA_DEVICE fp8_e5m2_t from_float<fp8_e5m2_t>(float x) {
  return fp8_e5m2_t{uint8_t(float2_to_fp8x2<fp8_e5m2_t>(x, 0.0f))};
}

FA_DEVICE_NAMESPACE_END
