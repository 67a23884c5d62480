"""``python -m adpe.tooling.bench --targets``: print every benchmark's targets as the README lists them."""

from __future__ import annotations

import argparse

from adpe.tooling.bench.catalog import target_list


def main(argv: list[str] | None = None) -> int:
    """Print the target list (the only thing this entry point does; the benchmarks are tools/benchmark_*.py)."""
    parser = argparse.ArgumentParser(prog="python -m adpe.tooling.bench", description=__doc__)
    parser.add_argument("--targets", action="store_true", required=True, help="print the README's target list")
    parser.parse_args(argv)
    print(target_list(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
