"""Plain-text output of the benchmarks: formatted numbers, aligned tables and the ``[ok]`` / ``[MISS]`` lines."""

from __future__ import annotations

from collections.abc import Collection

from adpe.tooling.bench.targets import Check


def fmt(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``, or '-' for None."""
    return "-" if value is None else format(value, spec)


def print_aligned(header: list[str], rows: list[list[str]], right: Collection[int]) -> None:
    """A plain-text table: the header, a rule, then the rows; the ``right`` columns right-aligned."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for n, row in enumerate([header, *rows]):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def print_checks(title: str, checks: list[Check], none_checked: str | None = None) -> None:
    """``title``, then one ``[ok]`` / ``[MISS]`` line per checked target; with no checks, ``none_checked`` below the
    title, or nothing at all where it is None."""
    if not checks and none_checked is None:
        return
    print(f"\n{title}:")
    for c in checks:
        print(f"  [{'ok' if c.ok else 'MISS'}] {c.target}: {c.value:.3f}")
    if not checks:
        print(f"  ({none_checked})")
