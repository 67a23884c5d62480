"""The benchmarks behind ``tools/benchmark_*.py``, each a module with its command line, its measurement and its
targets: ``pretrain`` (a pretraining step per variant), ``backbone`` (the transfer backbones' forward + backward)
and ``data`` (the input pipeline).

The step benchmarks share ``cli`` (options, driver or worker), ``driver`` (one subprocess per measured pair),
``measure`` (the worker's timing, memory and FLOP), ``peaks`` (the hardware's peak rates), ``results`` (what a pair
measures, typed), ``table`` (text output) and ``targets`` (``Target`` and ``check``). ``catalog`` gathers the
targets into the README's list (``python -m adpe.tooling.bench --targets``).
"""
