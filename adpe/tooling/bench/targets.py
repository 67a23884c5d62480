"""The benchmarks' targets as data, and the one ``check`` that turns a run's results into ``[ok]`` / ``[MISS]``.

A ``Target(row, metric, limit, versus=...)`` bounds one row's metric (a pretraining variant, a backbone
configuration, an input path), alone or as a ratio to another row's in the same dtype. Each benchmark module
lists its own (``TARGETS``); ``adpe.tooling.bench.catalog`` gathers them into the list the README shows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from adpe.tooling.bench.results import Result, timed_by_key


@dataclass(frozen=True)
class Metric:
    """What a target bounds: ``read(result, device)`` gives it (None where not measured); ``words`` name it, with
    ``{memory}`` for the memory that counts on the device; ``limit_format`` writes an absolute limit (``{times}``:
    the sign of a factor); ``at_least``: more is better, so the limit is a minimum."""

    read: Callable[[Result, str], float | None]
    words: str
    limit_format: str
    at_least: bool = False


METRICS: dict[str, Metric] = {
    "time": Metric(lambda r, device: r["seconds_per_step"], "time", "{limit} s/step"),
    # On a GPU the device's memory is the scarce one; on a CPU, the process's.
    "memory": Metric(lambda r, device: r["peak_cuda_gib"] if device == "cuda" else r["peak_rss_gib"], "{memory}",
                     "{limit:.2f} GiB"),
    "bf16_speedup": Metric(lambda r, device: r.get("bf16_speedup"), "speed-up over fp32", "{limit:.2f}{times}",
                           at_least=True),
    "datasheet_share": Metric(lambda r, device: r.get("utilisation", {}).get("datasheet"),
                              "share of the card's dense datasheet rate", "{limit:.0%}", at_least=True),
    "images_per_s": Metric(lambda r, device: r.get("images_per_s"), "images/s", "{limit:.1f}", at_least=True),
}
DEVICE_WORDS = {"cuda": "on CUDA", "cpu": "on a CPU"}
# The memory that counts on a device ('memory' metric), and on any device (None) for the README.
MEMORY_WORDS = {"cuda": "peak CUDA memory", "cpu": "peak RSS", None: "peak memory (CUDA on a GPU, RSS on a CPU)"}


@dataclass(frozen=True)
class Target:
    """``row``'s ``metric`` (a key of ``METRICS``) is at most ``limit`` (at least, for a metric where more is better);
    with ``versus``, its ratio to that row's in the same dtype is.

    ``dtype`` / ``device``: it holds for that dtype / on that device only (None: any). ``reference_only``: only at the
    benchmark's reference configuration (an absolute time measured there). ``source``: where the limit comes from.
    """

    row: str
    metric: str
    limit: float
    versus: str | None = None
    dtype: str | None = None
    device: str | None = None
    reference_only: bool = False
    source: str = ""

    def applies(self, row: str, dtype: str | None, device: str, reference: bool) -> bool:
        """Whether the target bounds the pair (``row``, ``dtype``) of a run on ``device`` (``reference``: a run at the
        reference configuration)."""
        return (row == self.row and self.dtype in (None, dtype) and self.device in (None, device)
                and (reference or not self.reference_only))

    def value(self, result: Result, versus: Result | None, device: str) -> float | None:
        """The bounded value of ``result``: its metric, or its ratio to ``versus``'s; None where either is missing."""
        read = METRICS[self.metric].read
        own = read(result, device)
        if self.versus is None or own is None:
            return own
        base = read(versus, device) if versus is not None else None
        return own / base if base else None

    def met_by(self, value: float) -> bool:
        """Whether ``value`` is within the limit."""
        return value >= self.limit if METRICS[self.metric].at_least else value <= self.limit

    def _bound(self, device: str | None, operators: tuple[str, str], times: str, versus: str) -> str:
        """'<metric words> <operator> <limit>[ (source)]': ``operators`` (at most, at least), ``times`` (the sign of a
        factor) and ``versus`` (how the versus row is written) are the text's or the Markdown's."""
        metric = METRICS[self.metric]
        if self.versus:
            limit = f"{self.limit:.2f}{times} {versus}"
        else:
            limit = metric.limit_format.format(limit=self.limit, times=times)
        source = f" ({self.source})" if self.source else ""
        words = metric.words.format(memory=MEMORY_WORDS[device])
        return f"{words} {operators[metric.at_least]} {limit}{source}"

    def label(self, dtype: str | None, device: str) -> str:
        """The check line's text, e.g. 'adpe_rpe_coord bf16 peak CUDA memory <= 1.20x mae_plus_rpe'."""
        who = f"{self.row} {dtype}" if dtype else self.row
        return f"{who} {self._bound(device, ('<=', '>='), 'x', str(self.versus))}"

    def describe(self, rows: Sequence[str]) -> str:
        """One Markdown line of the README's list for this target, said of each of ``rows`` (targets that differ
        only in their row share a line)."""
        who = ", ".join(f"`{row}`" for row in rows) + (f" {self.dtype}" if self.dtype else "")
        where = [DEVICE_WORDS[self.device]] if self.device else []
        where += ["at the reference configuration"] if self.reference_only else []
        bound = self._bound(self.device, ("≤", "≥"), "×", f"`{self.versus}`")
        return f"{who} {bound}{''.join(', ' + w for w in where)}"


@dataclass(frozen=True)
class Check:
    """One target checked on one pair: the check line's ``target``, the ``value`` found and whether it is ``ok``."""

    target: str
    value: float
    ok: bool


def check(
    targets: Iterable[Target], results: list[Result], name_key: str, device: str, reference: bool = False
) -> list[Check]:
    """Every target that this run can check, in the order of the results, then of ``targets``.

    ``name_key``: the result key that names a row ('variant', 'config', 'path'); ``device``: the run's; ``reference``:
    whether the run is at the benchmark's reference configuration. A target whose row, or ``versus`` row, was not
    timed in the pair's dtype, or whose metric was not measured, is left out.
    """
    targets = tuple(targets)
    by_key = timed_by_key(results, name_key)
    checks = []
    for (row, dtype), result in by_key.items():
        for target in targets:
            if not target.applies(row, dtype, device, reference):
                continue
            value = target.value(result, by_key.get((target.versus, dtype)) if target.versus else None, device)
            if value is not None:
                checks.append(Check(target.label(dtype, device), value, target.met_by(value)))
    return checks


def describe_all(targets: Iterable[Target]) -> list[str]:
    """The README's lines for ``targets``: one per target, except that targets differing only in their row share one."""
    rows_by_rest: dict[Target, list[str]] = {}
    for target in targets:
        rows_by_rest.setdefault(replace(target, row=""), []).append(target.row)
    return [rest.describe(rows) for rest, rows in rows_by_rest.items()]
