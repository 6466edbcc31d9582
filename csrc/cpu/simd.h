// Function multi-versioning for the hot loops of the CPU kernels: the extension is built for the baseline x86-64
// ISA (SSE2), and the vectorised loops run about twice as fast with AVX2/FMA. GCC's target_clones compiles both and
// picks one at load time (glibc ifunc).
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define ORTHOKERN_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define ORTHOKERN_CPU_CLONES
#endif

// Small helpers of the cloned loops: always inlined, so that each clone gets them compiled for its own ISA.
#if defined(__GNUC__)
#define ORTHOKERN_ALWAYS_INLINE __attribute__((always_inline))
#else
#define ORTHOKERN_ALWAYS_INLINE
#endif
