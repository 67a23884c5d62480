"""The command line that the step benchmarks (``pretrain``, ``backbone``) share, and ``dispatch``: a run is either
the driver or one worker, the same module re-invoked with the hidden ``--worker`` flag (see ``driver``).

Nothing here imports torch at module level, so that a driver starts fast.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterable, Sequence

from adpe.tooling.bench.results import RESULT_PREFIX, Result

DTYPES = ("fp32", "bf16")
MODEL_SIZES = ("tiny", "base", "large", "huge")  # adpe.models.vit.SIZES (tested), without importing torch here
# The options that every worker takes from its driver, besides its own (see ``add_run_options``).
RUN_OPTIONS = ("warmup", "steps", "threads", "seed", "device")


def default_threads() -> int:
    """The number of cores this process may run on (all of them where affinity is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def new_parser(doc: str) -> argparse.ArgumentParser:
    """A parser whose ``--help`` shows ``doc`` as written (the benchmark's description and targets)."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_dtypes_option(parser: argparse.ArgumentParser) -> None:
    """``--dtypes``: fp32 and/or bf16 autocast, both by default."""
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES),
                        help="fp32 and/or bf16 autocast (default: both)")


def add_run_options(parser: argparse.ArgumentParser, default_steps: int) -> None:
    """The shared options from ``--warmup`` to ``--json``, then the hidden ``--worker`` and ``--dtype``."""
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--steps", type=int, default=default_steps,
                        help=f"timed steps; the median is reported (default {default_steps})")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="torch.set_num_threads on CPU (default: all cores available)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: cuda when available, else cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", help="also write every figure to this JSON file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=DTYPES, help=argparse.SUPPRESS)


def parse_checked(
    parser: argparse.ArgumentParser, argv: list[str] | None, positive: Sequence[str]
) -> argparse.Namespace:
    """Parse ``argv``; the ``positive`` options (attribute names) must be >= 1 and ``--warmup`` >= 0.

    Then ``--device auto`` is resolved and the dtypes are put in order, fp32 first (it carries what bf16 is
    compared with).
    """
    args = parser.parse_args(argv)
    if min(getattr(args, name) for name in positive) < 1 or args.warmup < 0:
        flags = [f"--{name.replace('_', '-')}" for name in positive]
        parser.error(f"{', '.join(flags[:-1])} and {flags[-1]} must be >= 1, --warmup >= 0")
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.dtypes = [d for d in DTYPES if d in args.dtypes]
    return args


def forwarded_options(args: argparse.Namespace, names: Iterable[str]) -> list[str]:
    """``--name value`` for each of ``names`` (attribute names; underscores become dashes)."""
    options: list[str] = []
    for name in names:
        options += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return options


def dispatch(
    args: argparse.Namespace,
    selector: str,
    run_worker: Callable[[argparse.Namespace], Result],
    run_all: Callable[[argparse.Namespace], int],
) -> int:
    """As a worker, print ``run_worker``'s result as one marked JSON line; else run the driver ``run_all``.

    ``selector`` names the hidden option (besides ``--dtype``) that picks the worker's pair.
    """
    if not args.worker:
        return run_all(args)
    if getattr(args, selector) is None or args.dtype is None:
        raise SystemExit(f"--worker needs --{selector} and --dtype")
    print(RESULT_PREFIX + json.dumps(run_worker(args)), flush=True)
    return 0
