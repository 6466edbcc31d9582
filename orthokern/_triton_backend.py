"""Registers the Triton kernels of ``orthokern.triton_kernels`` as backend "triton"."""
