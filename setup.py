"""orthokern: builds the compiled extension ``orthokern._C`` when it can, and never fails because of it.

* torch importable at build time (``pip install --no-build-isolation .``): build ``orthokern._C`` against that
  torch. CUDA sources are added when ``(torch.cuda.is_available() or FORCE_CUDA=1) and CUDA_HOME`` and torch
  itself has CUDA; ``ORTHOKERN_SKIP_CUDA_BUILD=1`` leaves them out. Architectures: ``ORTHOKERN_CUDA_ARCHS`` or
  ``TORCH_CUDA_ARCH_LIST`` (default "8.0;9.0").
* torch not importable (plain ``pip install .``: build isolation, and torch is deliberately not a build
  requirement, see pyproject.toml), no compiler, or a compile error: install the pure-Python package and say so.
"""
from __future__ import annotations

import glob
import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _version() -> str:
    # The one place the version lives is orthokern/_version.py; read it without importing the package (which needs
    # torch).
    scope: dict = {}
    with open(os.path.join(HERE, "orthokern", "_version.py")) as f:
        exec(f.read(), scope)
    return scope["__version__"]


def _warn(msg: str) -> None:
    bar = "=" * 78
    print(f"\n{bar}\northokern WARNING: {msg}\n{bar}\n", file=sys.stderr, flush=True)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() not in ("", "0", "false", "no", "off")


def _extensions_and_cmdclass():
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as e:  # noqa: BLE001  (any failure to import torch means: no extension)
        _warn(
            f"torch is not importable at build time ({type(e).__name__}: {e}); installing orthokern without its "
            "compiled extension orthokern._C (pure-PyTorch implementations only). To build it, install torch first "
            "and run `pip install --no-build-isolation .`."
        )
        return [], {}

    cuda_home = cpp_extension.CUDA_HOME
    force_cuda = _env_flag("FORCE_CUDA")
    skip_cuda = _env_flag("ORTHOKERN_SKIP_CUDA_BUILD")
    torch_has_cuda = torch.version.cuda is not None
    with_cuda = (
        not skip_cuda and torch_has_cuda and cuda_home is not None and (torch.cuda.is_available() or force_cuda)
    )
    if force_cuda and not skip_cuda and not with_cuda:
        _warn(
            "FORCE_CUDA=1 but the CUDA sources cannot be built: "
            + ("the installed torch has no CUDA" if not torch_has_cuda else "CUDA_HOME (nvcc) not found")
            + "; building the CPU ops only."
        )
    archs = os.environ.get("ORTHOKERN_CUDA_ARCHS") or os.environ.get("TORCH_CUDA_ARCH_LIST") or "8.0;9.0"

    def rel_glob(pattern):  # relative to this file, as setuptools wants relative source paths
        return sorted(glob.glob(pattern, root_dir=HERE))

    sources = [os.path.join("csrc", "orthokern.cpp")] + rel_glob(os.path.join("csrc", "cpu", "*.cpp"))
    # The kernel sources are C++17; the language standard itself is left to cpp_extension, which passes the one
    # the installed torch's headers need (C++20 for torch 2.13).
    cxx = ["-O3"]
    # No --use_fast_math: the Jacobi rotations and rsqrt thresholds need IEEE division and sqrt.
    nvcc = ["-O3"]
    define_macros = []
    if with_cuda:
        # cpp_extension reads TORCH_CUDA_ARCH_LIST to pick the -gencode flags.
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        sources += rel_glob(os.path.join("csrc", "cuda", "ops_*.cu"))
        define_macros.append(("ORTHOKERN_WITH_CUDA", "1"))
        ext_cls = cpp_extension.CUDAExtension
    else:
        ext_cls = cpp_extension.CppExtension

    print(
        "orthokern build configuration:\n"
        f"  torch {torch.__version__} (CUDA {torch.version.cuda}), CUDA_HOME={cuda_home}\n"
        f"  cuda available={torch.cuda.is_available()} FORCE_CUDA={force_cuda} "
        f"ORTHOKERN_SKIP_CUDA_BUILD={skip_cuda}\n"
        f"  -> building orthokern._C with CUDA={with_cuda}" + (f" for archs {archs}" if with_cuda else "") + "\n"
        f"  sources: {', '.join(sources)}",
        flush=True,
    )

    ext = ext_cls(
        name="orthokern._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx, "nvcc": nvcc} if with_cuda else {"cxx": cxx},
        py_limited_api=False,
    )

    class SafeBuildExt(cpp_extension.BuildExtension):
        """A failed extension build is reported and skipped: the package still installs (pure Python)."""

        def run(self):
            try:
                super().run()
            except Exception as e:  # noqa: BLE001
                _warn(f"building orthokern._C failed ({type(e).__name__}: {e}); installing without it.")

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as e:  # noqa: BLE001  (compiler missing, compile error, ...)
                _warn(
                    f"building {ext.name} failed ({type(e).__name__}: {e}); installing orthokern without its "
                    "compiled extension (pure-PyTorch implementations only)."
                )

    return [ext], {"build_ext": SafeBuildExt}


ext_modules, cmdclass = _extensions_and_cmdclass()

setup(
    name="orthokern",
    version=_version(),
    packages=find_packages(include=["orthokern", "orthokern.*"]) + ["orthokern.triton_kernels"],
    package_dir={"orthokern.triton_kernels": "triton_kernels"},
    python_requires=">=3.11",
    install_requires=["torch>=2.11", "numpy"],
    extras_require={
        "triton": ["triton>=3.6"],
        "bench": ["tqdm", "matplotlib", "pytest-benchmark"],
        "examples": ["scikit-learn", "matplotlib", "tqdm"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
