// The kernels' per-octet code built for the CPU, octet after octet, for the unit tests
// (src/emulate.rs): the same source as the GPU's, run where there is no GPU.
#include "reconstruct.cuh"

template <int BD, int TD, int BITS> static void zdn_emulate_one(const ZdnParams* p) {
  const u64 octets = p->numel / 8 + (p->numel % 8 != 0);
  for (u64 j = 0; j < octets; j++) zdn_octet<BD, TD, BITS>(*p, j);
}

// Runs the kernel for (bits, base dtype, target dtype) over *p. Returns 0, or -1 for a combination
// that has no kernel (nothing written).
extern "C" int zdn_emulate(u32 bits, u32 base_dtype, u32 out_dtype, const ZdnParams* p) {
#define ZDN_CASE(BITS, BD, TD, NAME)                                \
  if (bits == BITS && base_dtype == BD && out_dtype == TD) {       \
    zdn_emulate_one<BD, TD, BITS>(p);                              \
    return 0;                                                      \
  }
  ZDN_FOR_EACH_KERNEL(ZDN_CASE)
#undef ZDN_CASE
  return -1;
}
