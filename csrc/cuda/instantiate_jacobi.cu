// Compile check only (.ci/check_cuda_sources.sh): instantiates the torch-free Jacobi kernels.
#include "cuda/jacobi.cuh"

namespace orthokern {
namespace cuda {
template cudaError_t launch_eigh_small<float>(const float*, float*, float*, int64_t, int, cudaStream_t);
template cudaError_t launch_eigh_small<double>(const double*, double*, double*, int64_t, int, cudaStream_t);
}  // namespace cuda
}  // namespace orthokern
