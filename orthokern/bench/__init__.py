"""Benchmark harness: ``python -m orthokern.bench --help``.

Suites (``suites``), timing (``timing``), peers (``peers``), the GPU floor (``floor``), accuracy against a
cached float64 reference (``accuracy``), the runner and accuracy gate (``runner``), reports (``report``,
``plot``) and a ResNet-50 training-step benchmark (``resnet``, ``train``).
"""
