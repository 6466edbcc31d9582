"""Registers the compiled ops of ``orthokern._C`` (CPU and CUDA) as backends "cpp" and "cuda"."""
