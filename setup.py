"""Placeholder: the extension build lands with the C++ sources."""
from setuptools import find_packages, setup

setup(
    name="orthokern",
    version="0.1.0",
    packages=find_packages(include=["orthokern", "orthokern.*"]) + ["orthokern.triton_kernels"],
    package_dir={"orthokern.triton_kernels": "triton_kernels"},
    python_requires=">=3.11",
    install_requires=["torch>=2.11", "numpy"],
)
