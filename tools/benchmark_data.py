"""Benchmark the pretraining input pipeline: images/s of the CPU path per loader core, and of the device path.

The benchmark is ``adpe.tooling.bench.data``: ``--help`` says what it measures and lists its targets, and
``python -m adpe.tooling.bench --targets`` lists every benchmark's.
"""

import sys

from adpe.tooling.bench.data import main

if __name__ == "__main__":
    sys.exit(main())
