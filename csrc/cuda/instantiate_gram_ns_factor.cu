// Torch-free translation unit for the nvcc compile check (.ci/check_cuda_sources.sh): takes the launcher's address,
// which compiles the kernel for every architecture asked for.
#include "cuda/gram_ns_factor.cuh"

namespace orthokern {
namespace cuda {
extern cudaError_t (*const check_launch_gram_ns_factor)(const double*, double*, int64_t, int,
                                                        const gram_ns::Schedule&, cudaStream_t);
cudaError_t (*const check_launch_gram_ns_factor)(const double*, double*, int64_t, int, const gram_ns::Schedule&,
                                                 cudaStream_t) = &launch_gram_ns_factor;
}  // namespace cuda
}  // namespace orthokern
