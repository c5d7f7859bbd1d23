// The GPU kernels: a grid-stride loop over the octets of one tensor, each thread reconstructing one
// octet at a time with the shared definition in reconstruct.cuh. Built to PTX by build.rs (clang,
// no CUDA toolkit) and loaded at run time through the driver API.
#include "reconstruct.cuh"

template <int BD, int TD, int BITS>
__attribute__((device)) static void zdn_reconstruct(const ZdnParams p) {
  const u64 octets = p.numel / 8 + (p.numel % 8 != 0);
  const u64 stride = (u64)__nvvm_read_ptx_sreg_nctaid_x() * __nvvm_read_ptx_sreg_ntid_x();
  for (u64 j = (u64)__nvvm_read_ptx_sreg_ctaid_x() * __nvvm_read_ptx_sreg_ntid_x() +
               __nvvm_read_ptx_sreg_tid_x();
       j < octets; j += stride)
    zdn_octet<BD, TD, BITS>(p, j);
}

#define ZDN_KERNEL(BITS, BD, TD, NAME) \
  extern "C" __attribute__((global)) void NAME(const ZdnParams p) { zdn_reconstruct<BD, TD, BITS>(p); }
ZDN_FOR_EACH_KERNEL(ZDN_KERNEL)
