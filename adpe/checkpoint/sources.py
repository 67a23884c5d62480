"""Checkpoint sources: a local path, or a URL fetched once into the cache and then read like a local file.

Files are local paths or URLs (http(s) built in, mmengine's other file backends once ``adpe.mm`` is imported,
``register_fetcher`` for any other scheme); ``.safetensors`` files load as flat state dicts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch

from adpe.checkpoint.files import _umask_mode, read_local

logger = logging.getLogger(__name__)

URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")  # 'https://...', 's3://...'; not a drive letter
Fetcher = Callable[[str, Path], None]


class CheckpointSourceError(OSError):
    """A checkpoint URL could not be fetched: no fetcher for its scheme, or the transfer failed."""


def _fetch_http(url: str, dst: Path) -> None:
    """Stream ``url`` into ``dst``, refusing a body shorter or longer than the server's Content-Length.

    torch.hub's ``download_url_to_file`` does not compare the two, and http.client ends a cut transfer as a
    quiet end of file, so a half-downloaded checkpoint would otherwise look complete.
    """
    request = urllib.request.Request(url, headers={"User-Agent": "adpe"})
    received = 0
    with urllib.request.urlopen(request, timeout=60) as response, open(dst, "wb") as f:
        expected = response.headers.get("Content-Length")
        while chunk := response.read(1 << 20):
            f.write(chunk)
            received += len(chunk)
    if expected is not None and received != int(expected):
        raise CheckpointSourceError(f"the transfer was cut: received {received} of {int(expected)} bytes")


# URL scheme -> fetch(url, dst), which writes the object at ``url`` to the local file ``dst``, all or nothing.
# http(s) is built in (pure torch); ``import adpe.mm`` adds mmengine's other file backends (s3, petrel, ...).
FETCHERS: dict[str, Fetcher] = {"http": _fetch_http, "https": _fetch_http}


def register_fetcher(scheme: str, fetch: Fetcher) -> None:
    """Make ``scheme://`` checkpoint URLs loadable: ``fetch(url, dst)`` writes the object to ``dst`` atomically."""
    FETCHERS[scheme.lower()] = fetch


def url_scheme(source: str | os.PathLike) -> str | None:
    """The lower-case scheme of a URL ('https', 's3', ...), None for a local path. Pass URLs as str:
    ``Path('https://a/b')`` collapses the '//'."""
    found = URL_SCHEME.match(os.fspath(source))
    return found[1].lower() if found else None


def checkpoint_cache_dir() -> Path:
    """Where fetched checkpoints live: ``$ADPE_CACHE/checkpoints``, default ``~/.cache/adpe/checkpoints`` (the
    cache folder that ``make setup`` keeps its mmcv wheel in)."""
    return Path(os.environ.get("ADPE_CACHE") or Path.home() / ".cache" / "adpe") / "checkpoints"


def cached_checkpoint_path(url: str) -> Path:
    """The cache file of ``url``: '<16 hex digits of the URL's sha256>-<its file name>'. The hash keeps different
    URLs apart; the file name keeps the suffix, which selects the format (.safetensors)."""
    name = os.path.basename(urllib.parse.urlsplit(url).path) or "checkpoint"
    return checkpoint_cache_dir() / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"


# torch.hub's convention for a hash in a file name ('name-<sha256 prefix>.pth', as mmengine's publish_model
# writes them), and pip's for one in the URL ('...pth#sha256=<hex>'); 8 hex digits at least, so that an
# ordinary name ('vit-b.pth') is never taken for a hash.
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[^/]*$")
HASH_IN_FRAGMENT = re.compile(r"sha256=([0-9a-f]{8,64})$")


def expected_sha256_prefix(url: str) -> str | None:
    """The sha256 (prefix) that ``url`` promises for its file: its '#sha256=HEX' fragment, else a '-HEX.' hash
    in its file name, else None."""
    parts = urllib.parse.urlsplit(url)
    found = HASH_IN_FRAGMENT.search(parts.fragment) or HASH_IN_NAME.search(os.path.basename(parts.path))
    return found[1] if found else None


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, scheme: str, dst: Path) -> None:
    """Fetch ``url`` into the cache file ``dst``, all or nothing: it enters the cache (by rename) only once its
    hash (if the URL names one) matches and it loads as a checkpoint, so a cut transfer, an error page or a
    text file is never cached. Raises CheckpointSourceError naming the URL."""
    fetch = FETCHERS.get(scheme)
    if fetch is None:
        raise CheckpointSourceError(
            f"no fetcher for {scheme}:// URLs ({url}). Built in: http, https; `import adpe.mm` adds mmengine's "
            f"file backends (s3, petrel, ...); register another with adpe.checkpoint.register_fetcher({scheme!r}, "
            "fetch), or download the file and pass its local path")
    dst.parent.mkdir(parents=True, exist_ok=True)
    logger.info("fetching checkpoint %s into %s", url, dst)
    fd, name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    partial = Path(name)
    try:
        try:
            fetch(url.split("#", 1)[0], partial)
        except Exception as err:  # urllib's URLError / HTTPError, a backend's own errors: one message naming the URL
            raise CheckpointSourceError(
                f"could not fetch checkpoint {url}: {err}\nCheck the URL, the network (or the storage backend's "
                "credentials), or download the file yourself and pass its local path") from err
        if not partial.is_file() or partial.stat().st_size == 0:
            raise CheckpointSourceError(f"the {scheme}:// fetcher wrote nothing for {url}")
        expected = expected_sha256_prefix(url)
        if expected is not None and not _sha256_of(partial).startswith(expected):
            raise CheckpointSourceError(
                f"{url}: the downloaded file's sha256 is {_sha256_of(partial)}, but the URL names {expected}. The "
                "file changed on the server or the transfer was corrupted; nothing was cached")
        try:
            read_local(partial, url, map_location="cpu", suffix=dst.suffix, mmap=True)
        except ValueError as err:
            raise CheckpointSourceError(f"{url} is not a loadable checkpoint, so it was not cached: {err}") from err
        os.chmod(partial, _umask_mode())
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)


def _is_local_leader() -> bool:
    """True for the process that fetches: local rank 0 of each node, or any process without a process group."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return True
    return int(os.environ.get("LOCAL_RANK", torch.distributed.get_rank())) == 0


def fetch_checkpoint(source: str | os.PathLike) -> Path:
    """The local file of checkpoint ``source``: a local path as it is, a URL's copy in the cache (fetched once).

    Under torch.distributed every rank must call this for a URL (it holds a barrier): local rank 0 of each node
    fetches (so nodes without a shared disk each get a copy), the others wait, then read the cached file.
    Without a process group each process fetches for itself; the atomic rename makes that safe. Raises
    FileNotFoundError for a missing local file, CheckpointSourceError naming the URL when a URL cannot be
    fetched; only complete files that load as checkpoints (and match the URL's sha256, if it names one) enter
    the cache.
    """
    scheme = url_scheme(source)
    if scheme is None:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return path
    url = os.fspath(source)
    cached = cached_checkpoint_path(url)
    failure = None
    if _is_local_leader() and not cached.is_file():
        try:
            _fetch(url, scheme, cached)
        except Exception as err:  # re-raised after the barrier, so that the other ranks are not left waiting
            failure = err
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    if failure is not None:
        raise failure
    if not cached.is_file():  # a rank whose cache the leader does not share (another $ADPE_CACHE or $HOME)
        _fetch(url, scheme, cached)
    return cached


def load_checkpoint_file(path: str | os.PathLike, map_location="cpu", mmap: bool = False) -> dict:
    """Load a checkpoint (a local path or a URL, see ``fetch_checkpoint``) with ``weights_only=True`` and the
    training-checkpoint allow-list; a ``.safetensors`` file gives its flat {name: tensor} state dict.

    Raises FileNotFoundError naming the path, CheckpointSourceError naming a URL that cannot be fetched, and
    a ValueError naming the file and saying what to do when it is truncated, not a checkpoint, or needs classes
    outside the allow-list (e.g. a checkpoint pickled with custom objects). Training checkpoints of this suite
    load once ``adpe.mm`` is imported. ``map_location``: torch.load's; a device for .safetensors. ``mmap``: map
    the tensors from the file instead of reading them into memory (torch.load's ``mmap``).
    """
    local = fetch_checkpoint(path)
    shown = local if url_scheme(path) is None else f"{os.fspath(path)} (cached as {local})"
    return read_local(local, shown, map_location=map_location, mmap=mmap)
