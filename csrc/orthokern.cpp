// The op schemas of orthokern (declared once here; CPU kernels in cpu/ops_cpu.cpp, CUDA ones in cuda/ops_cuda.cu)
// and the minimal Python module that loads them: the ops are reached as torch.ops.orthokern.*, the module itself
// says whether the CUDA kernels were compiled in (WITH_CUDA) and their size limits (LIMITS, from kernel_limits.h).
#include <Python.h>
#include <torch/library.h>

#include "kernel_limits.h"

TORCH_LIBRARY(orthokern, m) {
  // Polar factor of each matrix of (B, m, n) by a float64 Gram matrix and a float64 eigensolver, numerics of
  // orthokern/reference/gram_eigh.py: singular values s_i >= rcond * s_max (and > 0) are kept, the others dropped.
  // Any strides; the result is contiguous, in G's dtype (half precision computes in float32 and is stored once);
  // a matrix holding NaN or Inf gives all NaN, a zero matrix zeros.
  m.def("gram_eigh_polar(Tensor G, float rcond) -> Tensor");
  // The same by shifted CholeskyQR2 in float64 and the SVD of the small R, (B, m, n) with m >= n, numerics of
  // orthokern/reference/cholqr2.py.
  m.def("cholqr2_polar(Tensor G, float rcond) -> Tensor");
  // The n x n factor Q of newton_schulz on the Gram side (orthokern/reference/newton_schulz.py, gram_side_factor)
  // for a batch of float64 Gram matrices (B, n, n), n <= 64; coeffs = (a, b, c) per step, flattened. CUDA: one
  // thread block per matrix, one launch, float64 tensor cores. CPU: the kernel's twin, for tests.
  m.def("gram_ns_factor(Tensor A, float[] coeffs) -> Tensor");
  // The largest column norm of each matrix of O (B, m, n), any strides: (B,) in float64 for float64 O, else float32;
  // NaN where the matrix holds a NaN. The breakdown guard of auto on the CPU (orthokern/dispatch.py, broken).
  m.def("column_norm_max(Tensor O) -> Tensor");
}

#ifdef ORTHOKERN_WITH_CUDA
static constexpr bool kWithCuda = true;
#else
static constexpr bool kWithCuda = false;
#endif

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "orthokern compiled ops: use torch.ops.orthokern.*", -1, nullptr,
  };
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
  PyObject* flag = kWithCuda ? Py_True : Py_False;
  Py_INCREF(flag);
  if (PyModule_AddObject(m, "WITH_CUDA", flag) < 0) {
    Py_DECREF(flag);
    Py_DECREF(m);
    return nullptr;
  }
  PyObject* lim = Py_BuildValue("{s:i,s:i}", "cuda_small_max_n", orthokern::limits::kCudaSmallMaxN,
                                "cuda_small_mma_tile", orthokern::limits::kCudaSmallMmaTile);
  if (lim == nullptr || PyModule_AddObject(m, "LIMITS", lim) < 0) {
    Py_XDECREF(lim);
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
