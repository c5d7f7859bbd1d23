// The reconstruction of quantized `.bitdelta` tensors (docs/format.md § 4.1), one source for two
// compilations:
//   * device: reconstruct.cu, built to PTX by clang (`-x cuda --cuda-device-only`, see build.rs);
//   * host: emulate.cpp, built for the CPU, which runs the very same per-octet function so the unit
//     tests can check its indexing, code extraction and rounding against the Rust reference without
//     a GPU.
//
// Element i of scale group k: out_i = round_T(fl32(x_i + fl32(s_k * level(q_i)))). The product and
// the sum are two separately rounded IEEE operations: on the device the NVVM builtins
// __nvvm_mul_rn_f / __nvvm_add_rn_f, which become `mul.rn.f32` / `add.rn.f32` (an explicit rounding
// modifier forbids ptxas from fusing them into an FMA, and neither has `.ftz`); on the host plain
// `*` and `+` with contraction off. Any NaN result is written as the canonical quiet NaN.
//
// Work is cut into octets: octet j is elements [8j, 8j+8) (the last one shorter). Its codes are the
// BITS bytes starting at byte BITS*j of the packed codes (8 codes of BITS bits never straddle a byte
// boundary), and its base and output elements are 16 or 32 contiguous bytes.
#pragma once
#pragma clang fp contract(off)

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

// Element types, as numbered in the kernel names and in the Rust side (launch.rs).
enum { ZDN_F32 = 0, ZDN_F16 = 1, ZDN_BF16 = 2 };

// One kernel launch: the Rust `KernelParams` (#[repr(C)], same field order). Addresses are device
// addresses on the GPU and host addresses in the emulation.
struct ZdnParams {
  u64 out;             // the reconstructed tensor, target dtype
  u64 base;            // the base tensor, base dtype
  u64 scales;          // the block's scales: little-endian f32, one per group
  u64 codes;           // the block's packed codes
  u64 numel;           // elements (> 0)
  u64 row_len;         // elements per row of the group layout (tensor granularity: numel)
  u64 width;           // elements per group within a row (the last group of a row may be shorter)
  u64 groups_per_row;  // ceil(row_len / width)
};

#if defined(__CUDA_ARCH__)
#define ZDN_FN __attribute__((device)) __attribute__((always_inline)) inline
typedef u32 zdn_u32x4 __attribute__((ext_vector_type(4)));

ZDN_FN float zdn_mul(float a, float b) { return __nvvm_mul_rn_f(a, b); }
ZDN_FN float zdn_add(float a, float b) { return __nvvm_add_rn_f(a, b); }
ZDN_FN u32 zdn_bits(float f) { return __builtin_bit_cast(u32, f); }
ZDN_FN float zdn_float(u32 u) { return __builtin_bit_cast(float, u); }
// Read-only loads (ld.global.nc); the launcher checks the alignment of every address.
ZDN_FN u32 zdn_ld8(u64 a) { return __nvvm_ldg_uc((const unsigned char*)a); }
ZDN_FN u32 zdn_ld16(u64 a) { return __nvvm_ldg_us((const unsigned short*)a); }
ZDN_FN u32 zdn_ld32(u64 a) { return __nvvm_ldg_ui((const unsigned int*)a); }
ZDN_FN void zdn_ld128(u64 a, u32 v[4]) {
  zdn_u32x4 w = __nvvm_ldg_ui4((const zdn_u32x4*)a);
  v[0] = w.x; v[1] = w.y; v[2] = w.z; v[3] = w.w;
}
ZDN_FN void zdn_st16(u64 a, u32 v) { *(u16*)a = (u16)v; }
ZDN_FN void zdn_st32(u64 a, u32 v) { *(u32*)a = v; }
ZDN_FN void zdn_st128(u64 a, const u32 v[4]) {
  zdn_u32x4 w = {v[0], v[1], v[2], v[3]};
  *(zdn_u32x4*)a = w;
}
// f16 <-> f32 in hardware: `cvt.f32.f16` is exact (subnormals included); `cvt.rn.f16.f32` rounds to
// nearest even, overflows to infinity and keeps subnormal results (no .ftz, no .satfinite).
ZDN_FN float zdn_f16_to_f32(u32 h) {
  float f;
  u16 hh = (u16)h;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(hh));
  return f;
}
ZDN_FN u32 zdn_f32_to_f16(float f) {
  u16 h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
#else
#define ZDN_FN inline
ZDN_FN float zdn_mul(float a, float b) { return a * b; }
ZDN_FN float zdn_add(float a, float b) { return a + b; }
ZDN_FN u32 zdn_bits(float f) { return __builtin_bit_cast(u32, f); }
ZDN_FN float zdn_float(u32 u) { return __builtin_bit_cast(float, u); }
ZDN_FN u32 zdn_ld8(u64 a) { return *(const u8*)a; }
ZDN_FN u32 zdn_ld16(u64 a) { u16 v; __builtin_memcpy(&v, (const void*)a, 2); return v; }
ZDN_FN u32 zdn_ld32(u64 a) { u32 v; __builtin_memcpy(&v, (const void*)a, 4); return v; }
ZDN_FN void zdn_ld128(u64 a, u32 v[4]) { __builtin_memcpy(v, (const void*)a, 16); }
ZDN_FN void zdn_st16(u64 a, u32 v) { u16 h = (u16)v; __builtin_memcpy((void*)a, &h, 2); }
ZDN_FN void zdn_st32(u64 a, u32 v) { __builtin_memcpy((void*)a, &v, 4); }
ZDN_FN void zdn_st128(u64 a, const u32 v[4]) { __builtin_memcpy((void*)a, v, 16); }
// The host has no f16 instructions to rely on: the exact integer conversions of the Rust reference
// (protocol/src/bitdelta/tensor.rs, F. Giesen's methods). The GPU checks compare the hardware ones.
ZDN_FN float zdn_f16_to_f32(u32 h) {
  const u32 EXP = 0x7c00u << 13;
  u32 o = ((h & 0x7fffu) << 13) + ((127u - 15u) << 23);
  u32 exp = (h << 13) & EXP;
  u32 inf_nan = o + ((128u - 16u) << 23);
  u32 sub = zdn_bits(zdn_float(o + (1u << 23)) - zdn_float(113u << 23));
  u32 r = exp == EXP ? inf_nan : (exp == 0 ? sub : o);
  return zdn_float(r | ((h & 0x8000u) << 16));
}
ZDN_FN u32 zdn_f32_to_f16(float f) {
  u32 u = zdn_bits(f);
  u32 sign = (u >> 16) & 0x8000u;
  u32 a = u & 0x7fffffffu;
  const u32 HALF = 126u << 23;
  u32 sub = zdn_bits(zdn_float(a) + zdn_float(HALF)) - HALF;
  u32 norm = (a - ((127u - 15u) << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
  u32 r = a >= 0x47800000u ? 0x7c00u : (a < 0x38800000u ? sub : norm);
  return (r | sign) & 0xffffu;
}
#endif

template <int D> struct ZdnElem;

template <> struct ZdnElem<ZDN_F32> {
  enum { SIZE = 4 };
  ZDN_FN static float load1(u64 a) { return zdn_float(zdn_ld32(a)); }
  ZDN_FN static void load8(u64 a, float x[8]) {
    u32 v[8];
    zdn_ld128(a, v);
    zdn_ld128(a + 16, v + 4);
    for (int e = 0; e < 8; e++) x[e] = zdn_float(v[e]);
  }
  ZDN_FN static u32 round(float y) { return y != y ? 0x7fc00000u : zdn_bits(y); }
  ZDN_FN static void store1(u64 a, float y) { zdn_st32(a, round(y)); }
  ZDN_FN static void store8(u64 a, const float y[8]) {
    u32 v[8];
    for (int e = 0; e < 8; e++) v[e] = round(y[e]);
    zdn_st128(a, v);
    zdn_st128(a + 16, v + 4);
  }
};

template <> struct ZdnElem<ZDN_F16> {
  enum { SIZE = 2 };
  ZDN_FN static float load1(u64 a) { return zdn_f16_to_f32(zdn_ld16(a)); }
  ZDN_FN static void load8(u64 a, float x[8]) {
    u32 v[4];
    zdn_ld128(a, v);
    for (int e = 0; e < 4; e++) {
      x[2 * e] = zdn_f16_to_f32(v[e] & 0xffffu);
      x[2 * e + 1] = zdn_f16_to_f32(v[e] >> 16);
    }
  }
  ZDN_FN static u32 round(float y) { return y != y ? 0x7e00u : zdn_f32_to_f16(y); }
  ZDN_FN static void store1(u64 a, float y) { zdn_st16(a, round(y)); }
  ZDN_FN static void store8(u64 a, const float y[8]) {
    u32 v[4];
    for (int e = 0; e < 4; e++) v[e] = round(y[2 * e]) | (round(y[2 * e + 1]) << 16);
    zdn_st128(a, v);
  }
};

template <> struct ZdnElem<ZDN_BF16> {
  enum { SIZE = 2 };
  ZDN_FN static float load1(u64 a) { return zdn_float(zdn_ld16(a) << 16); }
  ZDN_FN static void load8(u64 a, float x[8]) {
    u32 v[4];
    zdn_ld128(a, v);
    for (int e = 0; e < 4; e++) {
      x[2 * e] = zdn_float(v[e] << 16);
      x[2 * e + 1] = zdn_float(v[e] & 0xffff0000u);
    }
  }
  // Round to nearest even: add just under half an ulp, plus one if the kept part is odd; a carry
  // into the exponent, up to infinity, is the right answer.
  ZDN_FN static u32 round(float y) {
    u32 u = zdn_bits(y);
    return y != y ? 0x7fc0u : (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  }
  ZDN_FN static void store1(u64 a, float y) { zdn_st16(a, round(y)); }
  ZDN_FN static void store8(u64 a, const float y[8]) {
    u32 v[4];
    for (int e = 0; e < 4; e++) v[e] = round(y[2 * e]) | (round(y[2 * e + 1]) << 16);
    zdn_st128(a, v);
  }
};

// s * level(q), level(q) = 2q - (2^BITS - 1). For one bit the levels are -1 and +1, and s * -1 is
// exactly -s: the sign bit of s flipped where the code is 0 (docs/format.md § 4.1 allows it).
template <int BITS> ZDN_FN float zdn_product(float s, u32 q) {
  if (BITS == 1) return zdn_float(zdn_bits(s) ^ ((q ^ 1u) << 31));
  return zdn_mul(s, (float)((int)(2 * q) - ((1 << BITS) - 1)));
}

// Octet j of the tensor described by p.
template <int BD, int TD, int BITS> ZDN_FN void zdn_octet(const ZdnParams& p, u64 j) {
  typedef ZdnElem<BD> B;
  typedef ZdnElem<TD> T;
  const u64 i0 = j * 8;
  const u64 left = p.numel - i0;
  const u32 m = left < 8 ? (u32)left : 8u;
  float x[8];
  u32 codes;  // code of element e in bits [BITS*e, BITS*e + BITS)
  if (m == 8) {
    B::load8(p.base + i0 * B::SIZE, x);
    if (BITS == 1) codes = zdn_ld8(p.codes + j);
    else if (BITS == 2) codes = zdn_ld16(p.codes + 2 * j);
    else codes = zdn_ld32(p.codes + 4 * j);
  } else {
    // The last, short octet: only its own elements and code bytes are touched.
    codes = 0;
    const u32 nbytes = (m * BITS + 7) / 8;
    for (u32 b = 0; b < nbytes; b++) codes |= zdn_ld8(p.codes + BITS * j + b) << (8 * b);
    for (u32 e = 0; e < 8; e++) x[e] = e < m ? B::load1(p.base + (i0 + e) * B::SIZE) : 0.0f;
  }

  // The group of the octet's first element: row r, column c, group r*gpr + c/width.
  u64 r, c, cw, k;
  if (p.numel <= 0xffffffffull) {
    const u32 i = (u32)i0, rl = (u32)p.row_len;
    const u32 rr = i / rl;
    r = rr;
    c = i - rr * rl;
  } else {
    r = i0 / p.row_len;
    c = i0 - r * p.row_len;
  }
  if (p.groups_per_row == 1) {
    k = r;
    cw = c;
  } else {
    const u64 g = c <= 0xffffffffull && p.width <= 0xffffffffull ? (u64)((u32)c / (u32)p.width)
                                                                    : c / p.width;
    k = r * p.groups_per_row + g;
    cw = c - g * p.width;
  }
  float s[8];
  if (cw + m <= p.width && c + m <= p.row_len) {
    // The whole octet is in one group: the common case.
    const float sk = zdn_float(zdn_ld32(p.scales + 4 * k));
    for (int e = 0; e < 8; e++) s[e] = sk;
  } else {
    for (u32 e = 0; e < 8; e++) {
      s[e] = e < m ? zdn_float(zdn_ld32(p.scales + 4 * k)) : 0.0f;
      // Step to the next element: a new row starts a new group, as does the end of a group.
      if (++c == p.row_len) {
        c = 0;
        cw = 0;
        k++;
      } else if (++cw == p.width) {
        cw = 0;
        k++;
      }
    }
  }

  const u32 mask = (1u << BITS) - 1;
  float y[8];
  for (int e = 0; e < 8; e++)
    y[e] = zdn_add(x[e], zdn_product<BITS>(s[e], (codes >> (BITS * e)) & mask));
  if (m == 8) {
    T::store8(p.out + i0 * T::SIZE, y);
  } else {
    for (u32 e = 0; e < 8; e++)
      if (e < m) T::store1(p.out + (i0 + e) * T::SIZE, y[e]);
  }
}

// Every (bits, base dtype, target dtype) the format allows, as X(BITS, BD, TD, NAME).
#define ZDN_FOR_EACH_KERNEL(X)                                  \
  X(1, ZDN_F32, ZDN_F32, zdn_reconstruct_b1_f32_f32)             \
  X(1, ZDN_F32, ZDN_F16, zdn_reconstruct_b1_f32_f16)             \
  X(1, ZDN_F32, ZDN_BF16, zdn_reconstruct_b1_f32_bf16)           \
  X(1, ZDN_F16, ZDN_F32, zdn_reconstruct_b1_f16_f32)             \
  X(1, ZDN_F16, ZDN_F16, zdn_reconstruct_b1_f16_f16)             \
  X(1, ZDN_F16, ZDN_BF16, zdn_reconstruct_b1_f16_bf16)           \
  X(1, ZDN_BF16, ZDN_F32, zdn_reconstruct_b1_bf16_f32)           \
  X(1, ZDN_BF16, ZDN_F16, zdn_reconstruct_b1_bf16_f16)           \
  X(1, ZDN_BF16, ZDN_BF16, zdn_reconstruct_b1_bf16_bf16)         \
  X(2, ZDN_F32, ZDN_F32, zdn_reconstruct_b2_f32_f32)             \
  X(2, ZDN_F32, ZDN_F16, zdn_reconstruct_b2_f32_f16)             \
  X(2, ZDN_F32, ZDN_BF16, zdn_reconstruct_b2_f32_bf16)           \
  X(2, ZDN_F16, ZDN_F32, zdn_reconstruct_b2_f16_f32)             \
  X(2, ZDN_F16, ZDN_F16, zdn_reconstruct_b2_f16_f16)             \
  X(2, ZDN_F16, ZDN_BF16, zdn_reconstruct_b2_f16_bf16)           \
  X(2, ZDN_BF16, ZDN_F32, zdn_reconstruct_b2_bf16_f32)           \
  X(2, ZDN_BF16, ZDN_F16, zdn_reconstruct_b2_bf16_f16)           \
  X(2, ZDN_BF16, ZDN_BF16, zdn_reconstruct_b2_bf16_bf16)         \
  X(4, ZDN_F32, ZDN_F32, zdn_reconstruct_b4_f32_f32)             \
  X(4, ZDN_F32, ZDN_F16, zdn_reconstruct_b4_f32_f16)             \
  X(4, ZDN_F32, ZDN_BF16, zdn_reconstruct_b4_f32_bf16)           \
  X(4, ZDN_F16, ZDN_F32, zdn_reconstruct_b4_f16_f32)             \
  X(4, ZDN_F16, ZDN_F16, zdn_reconstruct_b4_f16_f16)             \
  X(4, ZDN_F16, ZDN_BF16, zdn_reconstruct_b4_f16_bf16)           \
  X(4, ZDN_BF16, ZDN_F32, zdn_reconstruct_b4_bf16_f32)           \
  X(4, ZDN_BF16, ZDN_F16, zdn_reconstruct_b4_bf16_f16)           \
  X(4, ZDN_BF16, ZDN_BF16, zdn_reconstruct_b4_bf16_bf16)
