"""Triton kernels of orthokern (installed as ``orthokern.triton_kernels``)."""
