"""Benchmark harness: ``python -m orthokern.bench --help``.

Suites (``suites``), timing in interleaved rounds with paired ratios, threads and load (``timing``), peers
(``peers``), the GPU floor (``floor``), the runner and accuracy gate (``runner``), reports (``report``, ``plot``),
real ResNet gradients (``gradients``, ``resnet``) and the ResNet-50 training-step benchmark (``train``).
Accuracy is measured with ``orthokern.testing.Reference``.
"""
