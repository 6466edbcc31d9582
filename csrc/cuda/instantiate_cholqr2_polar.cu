// Compile check only (.ci/check_cuda_sources.sh): the CholeskyQR2 pipeline for every input dtype.
#include "cuda/cholqr2_polar.cuh"

namespace orthokern {
namespace cuda {
#define ORTHOKERN_INST(In)                                                                                      \
  template void launch_cholqr_prepare<In>(const In*, const Cholqr2Workspace&, int64_t, int, int, cudaStream_t); \
  template void launch_cholqr_apply<In>(const Cholqr2Workspace&, In*, int64_t, int, int, cudaStream_t);
ORTHOKERN_INST(double)
ORTHOKERN_INST(float)
ORTHOKERN_INST(__half)
ORTHOKERN_INST(__nv_bfloat16)
#undef ORTHOKERN_INST
// Non-template stages: odr-use them so that their kernels are compiled here too.
void instantiate_cholqr2_stages(const Cholqr2Workspace& w, int64_t batch, int m, int n, cudaStream_t st) {
  launch_cholqr_factor(w.Xt, w.A, w.R1, batch, m, n, st);
  launch_cholqr_trsm(w.Xt, w.R1, batch, m, n, st);
  launch_cholqr_small_polar(w, batch, n, 1e-3, st);
}
}  // namespace cuda
}  // namespace orthokern
