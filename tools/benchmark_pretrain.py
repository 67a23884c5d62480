"""Benchmark one MAE+ / AdPE pretraining step per variant, in fp32 and bf16, side by side.

The benchmark is ``adpe.tooling.bench.pretrain``: ``--help`` says what it measures and lists its targets, and
``python -m adpe.tooling.bench --targets`` lists every benchmark's.
"""

import sys

from adpe.tooling.bench.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
