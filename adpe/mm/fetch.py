"""Checkpoint URLs of mmengine's file backends (s3://, petrel://, ...): registered with adpe.checkpoint at import.

The core (``adpe.checkpoint``) stays free of mmengine and fetches http(s) itself; this module adds every other
URL prefix that mmengine has a backend for when it is imported, so ``init_cfg.checkpoint='s3://bucket/x.pth'``
works wherever ``adpe.mm`` is. Credentials and client packages (e.g. petrel_client) are the backend's business.
"""

from __future__ import annotations

from pathlib import Path

from mmengine import fileio
from mmengine.fileio.backends import prefix_to_backends

from adpe.checkpoint import FETCHERS, atomic_write, register_fetcher


def fetch_with_mmengine(url: str, dst: Path) -> None:
    """Write the bytes that mmengine's backend for ``url`` returns to ``dst``, all or nothing.

    The whole object passes through memory once (mmengine's ``get`` returns bytes): fine for checkpoints.
    """
    atomic_write(fileio.get(url), dst)


def register_mmengine_fetchers() -> list[str]:
    """Register ``fetch_with_mmengine`` for each URL prefix mmengine knows that has no fetcher yet (http(s)
    keeps the core's streaming download); returns the prefixes registered."""
    added = [p for p in prefix_to_backends if p and p not in FETCHERS]  # '' is mmengine's local backend
    for prefix in added:
        register_fetcher(prefix, fetch_with_mmengine)
    return added


register_mmengine_fetchers()
