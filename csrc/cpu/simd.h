// Function multi-versioning for the hot loops of the CPU kernels: the extension is built for the baseline x86-64
// ISA (SSE2), and the loops over matrix rows run ~2x faster with AVX2/FMA (measured on the Gram accumulation:
// 0.37 -> 0.19 ms at 576 x 64). GCC's target_clones compiles both and picks one at load time (glibc ifunc).
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define ORTHOKERN_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define ORTHOKERN_CPU_CLONES
#endif
