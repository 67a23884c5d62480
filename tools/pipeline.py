"""End-to-end pipeline: pretrain -> export -> ADE20K train/test -> COCO train/test -> report.

python tools/pipeline.py --config tools/demo_pipeline.yaml [--dry-run] [--only VARIANT ...] [--stages ...]

The pipeline itself is adpe.tooling.pipeline (its docstring and ``--help`` say more); tools/pipeline.sh runs this file.
"""

import sys
from pathlib import Path

from adpe.tooling import checkout_root
from adpe.tooling.pipeline import main

if __name__ == "__main__":
    here, installed = Path(__file__).resolve().parents[1], checkout_root()
    if here != installed:  # its stages would run, and write, in the other checkout
        sys.exit(f"[pipeline] this is {here}/tools/pipeline.py, but the Python it runs on has adpe installed from "
                 f"{installed}, whose tools/ and work_dirs/ the stages would use. Run `make setup` in {here} and use "
                 f"its .venv, or run {installed}/tools/pipeline.sh.")
    main()
