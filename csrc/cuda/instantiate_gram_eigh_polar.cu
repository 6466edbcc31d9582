// Compile check only (.ci/check_cuda_sources.sh): every (input, Gram, apply) combination the op dispatches to.
#include "cuda/gram_eigh_polar.cuh"

namespace orthokern {
namespace cuda {
#define ORTHOKERN_INST(In, GramT, ApplyT)                                                                  \
  template cudaError_t launch_gram_eigh_polar<In, GramT, ApplyT>(const In*, In*, int64_t, int, int, double, \
                                                                 cudaStream_t);
ORTHOKERN_INST(double, double, double)
ORTHOKERN_INST(float, double, float)
ORTHOKERN_INST(float, float, float)
ORTHOKERN_INST(__half, double, float)
ORTHOKERN_INST(__half, float, float)
ORTHOKERN_INST(__nv_bfloat16, double, float)
ORTHOKERN_INST(__nv_bfloat16, float, float)
#undef ORTHOKERN_INST
}  // namespace cuda
}  // namespace orthokern
