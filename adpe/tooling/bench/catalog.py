"""Every benchmark's targets, and the README's list of them, printed by ``python -m adpe.tooling.bench --targets``
(``tests/test_bench.py`` keeps the README's list equal to it)."""

from __future__ import annotations

from typing import Any

from adpe.tooling.bench import backbone, data, pretrain
from adpe.tooling.bench.targets import Target, describe_all

# The tool that checks each set of targets: the set, and the reference configuration of its reference-only ones.
TARGETS: dict[str, tuple[tuple[Target, ...], dict[str, Any]]] = {
    "tools/benchmark_pretrain.py": (pretrain.TARGETS, pretrain.REFERENCE_CONFIG),
    "tools/benchmark_backbone.py": (backbone.TARGETS, {}),
    "tools/benchmark_data.py": (data.TARGETS, {}),
}


def target_list() -> str:
    """The README's Markdown list: per tool, one line per target (targets differing only in their row share one)."""
    lines = []
    for tool, (targets, reference) in TARGETS.items():
        options = ", ".join(f"{name.replace('_', '-')} {value}" for name, value in reference.items())
        lines.append(f"- `{tool}`" + (f" (reference configuration: {options}):" if reference else ":"))
        lines += [f"  - {line}" for line in describe_all(targets)]
    return "\n".join(lines) + "\n"
