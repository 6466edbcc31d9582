"""orthokern: builds the compiled extension ``orthokern._C`` when it can, and by default never fails because of it.

* torch importable at build time (``pip install --no-build-isolation .``): build ``orthokern._C`` against that
  torch. CUDA sources are added when torch itself has CUDA, a CUDA toolkit is found (``find_cuda_home``) and
  ``torch.cuda.is_available() or FORCE_CUDA=1``; ``ORTHOKERN_SKIP_CUDA_BUILD=1`` leaves them out. Architectures:
  ``ORTHOKERN_CUDA_ARCHS`` or ``TORCH_CUDA_ARCH_LIST`` (default "8.0;9.0+PTX": SASS for A100 and H100, and PTX that
  newer GPUs compile at load time).
* torch not importable (plain ``pip install .``: build isolation, and torch is deliberately not a build
  requirement, see pyproject.toml), no compiler, or a compile error: install the pure-Python package and say so,
  on the terminal too (pip hides a successful build's output unless -v).
* ``ORTHOKERN_REQUIRE_EXTENSION=1``: any failure to build ``orthokern._C`` is an error (CI sets it).
  ``ORTHOKERN_REQUIRE_CUDA=1``: so is building it without its CUDA kernels (set it on a GPU machine).
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
    text = f"\n{bar}\northokern WARNING: {msg}\n{bar}\n"
    print(text, file=sys.stderr, flush=True)
    # pip runs the build in a subprocess and shows its output only with -v or on failure: say it on the terminal.
    try:
        with open("/dev/tty", "w") as tty:
            tty.write(text)
    except OSError:
        pass


def _fail_or_warn(msg: str, required: bool) -> None:
    if required:
        raise SystemExit(f"orthokern: {msg}")
    _warn(msg)


def find_cuda_home() -> str | None:
    """The CUDA toolkit to build with, found the way users expect: $CUDA_HOME or $CUDA_PATH, else the toolkit the
    `nvcc` on PATH belongs to (asked with --dryrun, so a wrapper script in /usr/local/bin is followed to the real
    toolkit, where torch would guess /usr/local and fail to link -lcudart), else /usr/local/cuda. A candidate counts
    only if it has bin/nvcc, include/cuda_runtime.h and a libcudart."""
    import shutil
    import subprocess

    def valid(root):
        if not root:
            return False
        libs = glob.glob(os.path.join(root, "lib64", "libcudart*")) + glob.glob(
            os.path.join(root, "targets", "*", "lib", "libcudart*"))
        return (os.path.isfile(os.path.join(root, "bin", "nvcc"))
                and os.path.isfile(os.path.join(root, "include", "cuda_runtime.h")) and bool(libs))

    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        try:
            out = subprocess.run([nvcc, "--dryrun", "-c", "x.cu"], capture_output=True, text=True, timeout=60)
            for line in (out.stdout + out.stderr).splitlines():
                if line.startswith("#$ _HERE_="):
                    candidates.append(os.path.dirname(line.split("=", 1)[1].strip()))
        except (OSError, subprocess.SubprocessError):
            pass
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    return next((c for c in candidates if valid(c)), None)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() not in ("", "0", "false", "no", "off")


def _extensions_and_cmdclass():
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as e:  # noqa: BLE001  (any failure to import torch means: no extension)
        _fail_or_warn(
            f"torch is not importable at build time ({type(e).__name__}: {e}); installing orthokern without its "
            "compiled extension orthokern._C (pure-PyTorch implementations only). To build it, install torch first "
            "and run `pip install --no-build-isolation .`.",
            _env_flag("ORTHOKERN_REQUIRE_EXTENSION") or _env_flag("ORTHOKERN_REQUIRE_CUDA"))
        return [], {}

    require_ext = _env_flag("ORTHOKERN_REQUIRE_EXTENSION") or _env_flag("ORTHOKERN_REQUIRE_CUDA")
    require_cuda = _env_flag("ORTHOKERN_REQUIRE_CUDA")
    force_cuda = _env_flag("FORCE_CUDA") or require_cuda
    skip_cuda = _env_flag("ORTHOKERN_SKIP_CUDA_BUILD")
    torch_has_cuda = torch.version.cuda is not None
    cuda_home = find_cuda_home() if torch_has_cuda and not skip_cuda else None
    if cuda_home is not None:
        # cpp_extension guessed its own at import; the build functions read this module global.
        cpp_extension.CUDA_HOME = cuda_home
        os.environ["CUDA_HOME"] = cuda_home
    with_cuda = (
        not skip_cuda and torch_has_cuda and cuda_home is not None and (torch.cuda.is_available() or force_cuda)
    )
    if (force_cuda or require_cuda) and not with_cuda:
        _fail_or_warn(
            "the CUDA kernels cannot be built: "
            + ("ORTHOKERN_SKIP_CUDA_BUILD is set" if skip_cuda else
               "the installed torch has no CUDA" if not torch_has_cuda else
               "no CUDA toolkit found (set CUDA_HOME to the directory with bin/nvcc and include/cuda_runtime.h)")
            + "; building the CPU ops only.", require_cuda)
    archs = os.environ.get("ORTHOKERN_CUDA_ARCHS") or os.environ.get("TORCH_CUDA_ARCH_LIST") or "8.0;9.0+PTX"

    def rel_glob(pattern):  # relative to this file, as setuptools wants relative source paths
        return sorted(glob.glob(pattern, root_dir=HERE))

    sources = [os.path.join("csrc", "orthokern.cpp")] + rel_glob(os.path.join("csrc", "cpu", "*.cpp"))
    # The kernel sources are C++17; the language standard itself is left to cpp_extension, which passes the one
    # the installed torch's headers need (C++20 for torch 2.13).
    cxx = ["-O3"]
    # No --use_fast_math: the kernels' results must match their CPU twins (IEEE division and sqrt, explicit fma).
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
        """A failed extension build is reported and skipped (the package still installs, pure Python), unless
        ORTHOKERN_REQUIRE_EXTENSION / ORTHOKERN_REQUIRE_CUDA make it an error."""

        def run(self):
            try:
                super().run()
            except Exception as e:  # noqa: BLE001
                _fail_or_warn(f"building orthokern._C failed ({type(e).__name__}: {e}); installing without it.",
                              require_ext)

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as e:  # noqa: BLE001  (compiler missing, compile error, ...)
                _fail_or_warn(
                    f"building {ext.name} failed ({type(e).__name__}: {e}); installing orthokern without its "
                    "compiled extension (pure-PyTorch implementations only). Rebuild with "
                    "`pip install -v --no-build-isolation .` to see the compiler's output.", require_ext)

    return [ext], {"build_ext": SafeBuildExt}


ext_modules, cmdclass = _extensions_and_cmdclass()

with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
    _readme = f.read()

setup(
    name="orthokern",
    version=_version(),
    description="Fast batched polar decomposition (orthogonalisation) of gradients for PyTorch: Triton and CUDA "
    "kernels, Orthogonal-SGDM and the orthogonality toolkit around it",
    long_description=_readme,
    long_description_content_type="text/markdown",
    author="The orthokern developers",
    license="MIT",
    license_files=["LICENSE"],
    keywords=["pytorch", "polar decomposition", "orthogonalization", "newton-schulz", "optimizer", "triton", "cuda"],
    classifiers=[
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: C++",
        "Environment :: GPU :: NVIDIA CUDA",
        "Intended Audience :: Science/Research",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    packages=find_packages(include=["orthokern", "orthokern.*"]) + ["orthokern.triton_kernels"],
    package_dir={"orthokern.triton_kernels": "triton_kernels"},
    python_requires=">=3.11",
    install_requires=["torch>=2.11", "numpy"],
    extras_require={
        "triton": ["triton>=3.6"],
        "bench": ["tqdm", "matplotlib", "pytest-benchmark"],
        "examples": ["scikit-learn", "matplotlib", "tqdm"],
    },
    package_data={"orthokern": ["py.typed"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
