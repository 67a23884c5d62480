"""End-to-end pipeline: pretrain -> export -> ADE20K train/test -> COCO train/test -> report.

python tools/pipeline.py --config tools/demo_pipeline.yaml [--dry-run] [--only VARIANT ...] [--stages ...]

The pipeline itself is adpe.tooling.pipeline (its docstring and ``--help`` say more); tools/pipeline.sh runs this file.
"""

from adpe.tooling.pipeline import main

if __name__ == "__main__":
    main()
