"""Tooling bound to a checkout of this repository, not part of the method: the pipeline (``pipeline``), the
benchmarks and their targets (``bench``), the environment report and mmcv build rules (``env``) and the demo datasets
(``demo_data``, which needs OpenCV). They run the scripts of ``tools/`` with relative paths from the checkout's
root, so they need the package installed editable from a checkout (``make setup`` does that): ``checkout_root``
is the one check.
"""

from __future__ import annotations

from pathlib import Path


def checkout_root() -> Path:
    """The checkout this package is installed from (editable); raises RuntimeError for any other installation."""
    root = Path(__file__).resolve().parents[2]
    if not ((root / "tools").is_dir() and (root / "pyproject.toml").is_file()):
        raise RuntimeError(f"adpe.tooling runs the scripts of a checkout's tools/, but adpe is installed at {root}, "
                           "which is not a checkout: clone the repository and run `make setup` (an editable install)")
    return root
