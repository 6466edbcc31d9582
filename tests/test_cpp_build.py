"""setup.py never fails: without torch at build time it installs the pure-Python package and says so."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_setup_without_torch_falls_back_to_pure_python(tmp_path):
    # A `torch` that fails to import stands for an isolated build environment without torch.
    (tmp_path / "torch.py").write_text("raise ImportError('torch is not installed in this build environment')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "orthokern"
    assert "torch is not importable at build time" in proc.stderr
    assert "without its compiled extension orthokern._C" in proc.stderr


def test_setup_reports_failed_extension_build_and_continues(tmp_path):
    # A compiler that always fails: the build of orthokern._C must be reported and skipped, not fatal.
    fake = tmp_path / "failing-cxx"
    fake.write_text("#!/bin/sh\necho 'fake compiler: refusing' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = dict(os.environ, CXX=str(fake), CC=str(fake), MAX_JOBS="1")
    build = tmp_path / "build"
    proc = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-temp", str(build / "t"), "--build-lib", str(build / "l")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "orthokern build configuration" in proc.stdout
    assert "building orthokern._C failed" in proc.stderr
    assert not list((build / "l").rglob("_C*.so"))


def _load_setup_functions():
    """setup.py's helper functions, without running setup()."""
    src = (ROOT / "setup.py").read_text().split("ext_modules, cmdclass = _extensions_and_cmdclass()")[0]
    scope = {"__file__": str(ROOT / "setup.py"), "__name__": "orthokern_setup"}
    exec(compile(src, "setup.py", "exec"), scope)
    return scope


def test_cuda_home_follows_a_wrapper_nvcc_to_its_toolkit(tmp_path, monkeypatch):
    # A toolkit in an unusual place, and an `nvcc` on PATH that is only a wrapper script elsewhere (torch would guess
    # CUDA_HOME = the wrapper's parent and fail to link -lcudart).
    kit = tmp_path / "cuda-9.9"
    (kit / "bin").mkdir(parents=True)
    (kit / "include").mkdir()
    (kit / "lib64").mkdir()
    (kit / "include" / "cuda_runtime.h").write_text("")
    (kit / "lib64" / "libcudart.so").write_text("")
    real = kit / "bin" / "nvcc"
    real.write_text(f"#!/bin/sh\necho '#$ _HERE_={kit / 'bin'}' >&2\n")
    real.chmod(0o755)
    wrappers = tmp_path / "wrappers"
    wrappers.mkdir()
    (wrappers / "nvcc").write_text(f"#!/bin/sh\nexec {real} \"$@\"\n")
    (wrappers / "nvcc").chmod(0o755)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", f"{wrappers}{os.pathsep}{os.environ['PATH']}")
    assert _load_setup_functions()["find_cuda_home"]() == str(kit)
    # An explicit CUDA_HOME wins only if it is a real toolkit.
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    assert _load_setup_functions()["find_cuda_home"]() == str(kit)


def test_require_extension_makes_a_failed_build_fatal(tmp_path):
    fake = tmp_path / "failing-cxx"
    fake.write_text("#!/bin/sh\necho 'fake compiler: refusing' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = dict(os.environ, CXX=str(fake), CC=str(fake), MAX_JOBS="1", ORTHOKERN_REQUIRE_EXTENSION="1")
    build = tmp_path / "build"
    proc = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-temp", str(build / "t"), "--build-lib", str(build / "l")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "building orthokern._C failed" in proc.stderr
