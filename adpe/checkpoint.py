"""Checkpoint files on torch >= 2.6, and their conversion into pretraining models and transfer backbones.

Every load keeps ``weights_only=True`` (no arbitrary unpickling). Besides tensors, release checkpoints hold
their ``args`` (an ``argparse.Namespace``) and numpy values: those classes are allow-listed here.
``adpe.mm`` adds what mmengine's training checkpoints need (its log ``HistoryBuffer``), globally, so that
mmengine's own resume works on torch >= 2.6 as well.

Supported layouts (docs/method.md, "Checkpoints"):
  ours        mmengine checkpoint {'state_dict': {'mae.blocks.0...'}, 'meta': {'cfg': config text, ...}}
  release     official MAE / AdPE {'model': {'blocks.0...', 'decoder_*', 'mask_token', ['adv_token'], ...},
              'args': argparse.Namespace}
  export      tensors-only backbone {'state_dict': {...}, 'meta': {'position', 'rpe_lookup', ...}}
  timm        a VisionTransformer state dict {'blocks.0...', 'norm', 'fc_norm', 'head', ...} (MAE's names)
  mmpretrain  MAE / ViT {'state_dict': {'backbone.layers.0.ln1...', 'neck.decoder_*', ...}, 'meta': {...}}
Files are local paths or URLs (http(s) built in, mmengine's other file backends once ``adpe.mm`` is
imported), fetched once into a cache; ``.safetensors`` files load as flat state dicts.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import re
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch

from adpe.config_text import config_model
from adpe.pos_embed import resample_pos_embed
from adpe.rpe import LOOKUP_KINDS

logger = logging.getLogger(__name__)


def _umask_mode() -> int:
    """The mode a plain ``open(path, 'w')`` gives a new file under the process's umask (0644 under umask 022)."""
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(data: bytes, path: str | os.PathLike[str]) -> None:
    """Write ``data`` to ``path`` all or nothing: a temporary file in the same folder, fsync, rename.

    A crash or kill mid-write leaves the previous file (if any) intact; the temporary file a kill leaves
    (``.NAME.*.tmp``) is removed by ``remove_stale_temporaries``. The file gets the umask's mode, as any
    other file would (mkstemp's 0600 would hide checkpoints from the rest of a group's shared work dir).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), _umask_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a quota: say which file, not only errno's words
        Path(tmp).unlink(missing_ok=True)
        raise OSError(err.errno, f"{err.strerror or err} while writing {path}; the previous file (if any) is "
                      "intact. Free space there (or fix its permissions) and run again") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files that ``atomic_write`` calls killed mid-write left in ``folder`` (not below).

    Only safe while no other process writes there (the work dir lock of ``adpe.mm.hooks`` guarantees it for
    training runs). Returns the removed files.
    """
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _numpy_globals() -> list:
    """numpy's pickling helpers and dtype classes (their module path differs between numpy 1 and 2)."""
    found = [np.ndarray, np.dtype]
    for module_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            module = __import__(module_name, fromlist=["_reconstruct", "scalar"])
        except ImportError:
            continue
        found += [module._reconstruct, module.scalar]
        break
    found += [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.uint32, np.uint8, np.bool_)]
    return found


# Classes that trusted training checkpoints contain besides tensors and plain containers.
TRAINING_CHECKPOINT_GLOBALS: list = [argparse.Namespace, *_numpy_globals()]


# ---------------------------------------------------------------------------------------------------------
# Sources: a local path, or a URL fetched once into the cache and then read like a local file.
# ---------------------------------------------------------------------------------------------------------

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
            _read_local(partial, url, map_location="cpu", suffix=dst.suffix, mmap=True)
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


def _read_local(local: Path, shown: str | os.PathLike, map_location="cpu", suffix: str | None = None,
                mmap: bool = False) -> dict:
    """Load the local file ``local`` (``shown`` in messages) with ``weights_only=True`` and the training-checkpoint
    allow-list, or as safetensors by ``suffix`` (default: its own). ``mmap``: map the tensors instead of reading
    them (a check that the file is whole and safe, without the memory of a load). Raises ValueError."""
    if (suffix or local.suffix) == ".safetensors":
        try:
            if mmap:
                with safetensors.safe_open(local, framework="pt") as f:
                    return {key: f.get_slice(key) for key in f.keys()}
            device = map_location if isinstance(map_location, str | torch.device) else "cpu"  # not a callable
            return safetensors.torch.load_file(local, device=str(torch.device(device)))
        except (safetensors.SafetensorError, OSError) as err:
            raise ValueError(f"could not read {shown} as a safetensors file: {err}") from err
    try:
        # Only what is not allow-listed already: leaving the context removes its entries again.
        registered = torch.serialization.get_safe_globals()
        extra = [g for g in TRAINING_CHECKPOINT_GLOBALS if g not in registered]
        with torch.serialization.safe_globals(extra):
            try:
                return torch.load(local, map_location=map_location, weights_only=True, mmap=mmap)
            except RuntimeError as err:
                if not mmap or "mmap" not in str(err):
                    raise
                return torch.load(local, map_location=map_location, weights_only=True)  # legacy (non-zip) format
    except Exception as err:  # torch raises UnpicklingError, RuntimeError or EOFError here, by version
        reason = str(err) or f"{type(err).__name__} (an empty or truncated file)"
        if isinstance(err, KeyError) or "Unsupported operand" in reason:  # a byte that starts no pickle opcode
            reason = "not a torch checkpoint: its bytes are no pickle (a text or HTML file, or another format?)"
        raise ValueError(
            f"could not load {shown} with weights_only=True: {reason}\n"
            "If the file is truncated or not a checkpoint, use another copy (a training run keeps the previous "
            "checkpoints of its work dir). Only tensors, plain containers and the allow-listed classes in "
            "adpe.checkpoint.TRAINING_CHECKPOINT_GLOBALS are accepted: a file pickled with other classes must be "
            "re-saved as a plain state dict by whoever trusts it."
        ) from err


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
    return _read_local(local, shown, map_location=map_location, mmap=mmap)


# ---------------------------------------------------------------------------------------------------------
# Key rules. Our pretraining model uses the release's names for every network tensor (MAE's, which timm's
# VisionTransformer shares); only the adversarial tensors differ (RELEASE_ADVERSARY). The transfer backbone
# renames other layouts' tensors to those names (RENAMED), drops what pretraining or classification alone uses
# (DROPPED_ON_PURPOSE) and refuses what it cannot compute (UNSUPPORTED). Order: strip, rename, drop.
# ---------------------------------------------------------------------------------------------------------

PREFIXES_TO_STRIP = ("module.", "mae.", "backbone.")
# mmpretrain's MAE / ViT backbone (backbone.layers.N.{ln1, attn.qkv, attn.proj, ln2, ffn.layers.0.0,
# ffn.layers.1}, patch_embed.projection, final norm ln1, pooled-feature norm ln2) -> MAE's names; layer scale
# (timm blocks.N.ls1/ls2.gamma, mmpretrain layers.N.gamma1/gamma2.weight) -> BEiT's / mmseg's gamma_1 / gamma_2.
RENAMED = (
    (re.compile(r"^patch_embed\.projection\."), "patch_embed.proj."),
    (re.compile(r"^layers\.(\d+)\.ln([12])\."), r"blocks.\1.norm\2."),
    (re.compile(r"^layers\.(\d+)\.ffn\.layers\.0\.0\."), r"blocks.\1.mlp.fc1."),
    (re.compile(r"^layers\.(\d+)\.ffn\.layers\.1\."), r"blocks.\1.mlp.fc2."),
    (re.compile(r"^layers\.(\d+)\.attn\."), r"blocks.\1.attn."),
    (re.compile(r"^ln1\."), "norm."),
    (re.compile(r"^ln2\."), "fc_norm."),
    (re.compile(r"^blocks\.(\d+)\.ls([12])\.gamma$"), r"blocks.\1.gamma_\2"),
    (re.compile(r"^layers\.(\d+)\.gamma([12])\.weight$"), r"blocks.\1.gamma_\2"),
)
# Layer scale in our names: loaded by a backbone with ``init_values``, refused by one without (fit_to_backbone).
LAYER_SCALE = re.compile(r"^blocks\.\d+\.gamma_[12]$")
DROPPED_ON_PURPOSE = (
    (re.compile(r"^decoder[._]"), "pretraining decoder"),
    (re.compile(r"^neck\.(decoder_|mask_token$|ln1\.)"), "pretraining decoder (mmpretrain's MAE neck)"),
    (re.compile(r"^mask_token$"), "pretraining mask token"),
    (re.compile(r"^(head|attn_pool)\."), "classification head (dense transfer trains its own heads)"),
    (re.compile(r"^adversary\."), "adversarial positions (pretraining only)"),
    (re.compile(r"(^|\.)adv_(token|shift)$"), "adversarial positions of the official release (pretraining only)"),
    (re.compile(r"\.rpe_k\.no_shift$"), "the release's constant zero shift of unperturbed RPE lookups"),
)

# Release adversarial tensor -> (our key, our shape from the release's). The release's RPE-embedding delta is
# stored per head (1 shared head, head_dim, 1); ours is the (head_dim,) vector.
RELEASE_ADVERSARY = (
    (re.compile(r"^adv_token$"), lambda m: "adversary.position"),
    (re.compile(r"^blocks\.(\d+)\.attn\.rpe_k\.adv_(?:token|shift)$"), lambda m: f"adversary.encoder.{m[1]}"),
    (re.compile(r"^decoder_blocks\.(\d+)\.attn\.rpe_k\.adv_(?:token|shift)$"),
     lambda m: f"adversary.decoder.{m[1]}"),
)
RELEASE_CONSTANTS = re.compile(r"\.rpe_k\.no_shift$")  # zeros (requires_grad=False), kept in the state dict
# Tensors of ViT features that the backbone does not compute: loading them would silently change the network.
UNSUPPORTED = (
    (re.compile(r"^reg_token$"), "register tokens (timm reg_tokens)"),
    (re.compile(r"^(norm_pre|pre_norm)\."), "a norm before the blocks (timm norm_pre, mmpretrain pre_norm: CLIP)"),
    (re.compile(r"\.attn\.[qk]_norm\."), "query / key norms (timm qk_norm)"),
)



# The transfer backbone's record of its relative-position structure (adpe.backbone): trained weights carry it,
# pretraining checkpoints do not (the backbone then accepts them with its own).
STRUCTURE_KEY = "structure_code"


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the backbone: the message lists every offending key."""


def strip_prefixes(key: str) -> str:
    """``key`` without the wrappers' prefixes (``module.``, ``mae.``, ``backbone.``), however nested."""
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES_TO_STRIP:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def checkpoint_state(ckpt: dict) -> dict:
    """The raw weights of any supported format: a flat {key: tensor} dict."""
    for field in ("state_dict", "model", "module"):
        if isinstance(ckpt.get(field), dict):
            return ckpt[field]
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt
    raise CheckpointMismatchError(
        f"unrecognised checkpoint layout (top-level keys {sorted(ckpt)[:8]}); expected 'state_dict' "
        "(this suite, mmengine), 'model' (official MAE / AdPE) or a plain state dict"
    )


def checkpoint_variant(ckpt: dict) -> dict[str, str]:
    """What the checkpoint was pretrained with: {'position': 'ape'|'rpe', 'rpe_lookup': 'discrete'|...}.

    From the export's meta, our config text (``meta['cfg']``), or the official ``args`` (adv_type 2 is the
    coordinate mode); RPE is recognised by its tables.
    """
    state = checkpoint_state(ckpt)
    position = "rpe" if any("rpe_k.lookup_table_weight" in k for k in state) else "ape"
    meta = ckpt.get("meta") or {}
    lookup = meta.get("rpe_lookup")
    if lookup is None and isinstance(meta.get("cfg"), str):
        model = config_model(meta["cfg"])
        lookup = model.get("rpe_lookup", model.get("backbone", {}).get("rpe_lookup"))
        lookup = lookup if lookup in LOOKUP_KINDS else None
    if lookup is None and ckpt.get("args") is not None:
        lookup = "continuous" if getattr(ckpt["args"], "adv_type", 0) == 2 else None
    return {"position": position, "rpe_lookup": lookup or "discrete"}


def backbone_key(raw_key: str) -> str:
    """``raw_key`` of any supported layout under MAE's name: prefixes stripped, the first matching RENAMED rule
    applied (e.g. 'backbone.layers.0.ffn.layers.0.0.weight' -> 'blocks.0.mlp.fc1.weight')."""
    key = strip_prefixes(raw_key)
    for pattern, replacement in RENAMED:
        renamed, count = pattern.subn(replacement, key, count=1)
        if count:
            return renamed
    return key


def to_backbone_state(ckpt: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Backbone-named weights of a pretraining checkpoint (any supported layout), and {dropped key: reason}.

    Raises CheckpointMismatchError for tensors of features the backbone does not compute (UNSUPPORTED).
    """
    state, dropped, unsupported = {}, {}, {}
    for raw_key, value in checkpoint_state(ckpt).items():
        key = backbone_key(raw_key)
        reason = next((why for pattern, why in DROPPED_ON_PURPOSE if pattern.search(key)), None)
        feature = next((what for pattern, what in UNSUPPORTED if pattern.search(key)), None)
        if feature:
            unsupported.setdefault(feature, []).append(raw_key)
        elif reason:
            dropped[raw_key] = reason
        else:
            state[key] = value
    if unsupported:
        raise CheckpointMismatchError(
            "the checkpoint's ViT has features the transfer backbone does not compute: "
            + "; ".join(f"{what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                        for what, keys in unsupported.items()))
    return state, dropped


def fit_to_backbone(state: dict, backbone: torch.nn.Module) -> tuple[dict, dict[str, str]]:
    """Adapt converted weights to ``backbone`` (an ``adpe.backbone.ViTBackbone``) and check them strictly.

    Resamples the APE table to the backbone's grid; drops the cls token, the final norm and the pooled-feature
    norm (``fc_norm``) when the backbone has none (on purpose, reported); zero-initialised learned relative
    biases and a fresh ``fc_norm`` (classification from a pretraining checkpoint) may be absent. Layer scale:
    a checkpoint without gammas (MAE, AdPE) gets the backbone's ``init_values`` ones, as mmseg's MAE leaves
    them; a checkpoint with gammas needs a backbone with layer scale. Any other missing, unexpected or
    mis-shaped key raises CheckpointMismatchError naming the keys.
    """
    state, dropped = dict(state), {}
    target = backbone.state_dict()
    width = state.get("patch_embed.proj.weight")
    if width is not None and width.shape[0] != backbone.embed_dim:
        raise CheckpointMismatchError(
            f"embed width mismatch: the checkpoint's ViT is {width.shape[0]}-d, the backbone "
            f"{backbone.embed_dim}-d; pick the backbone size that matches the pretrained model "
            "(e.g. model.backbone.size='base' for 768)")
    unused = {"cls_token": "the backbone has no cls token (det mode, or class_token=False)",
              "norm.": "final norm unused (final_norm=False, or average pooling with fc_norm)",
              "fc_norm.": "norm of the pooled classification feature (used in cls mode with pool='avg' only)"}
    for key in list(state):
        reason = next((why for prefix, why in unused.items() if key.startswith(prefix)), None)
        if reason and key not in target:
            state.pop(key)
            dropped[key] = reason
    gammas = sorted(k for k in state if LAYER_SCALE.search(k))
    if gammas and getattr(backbone, "init_values", None) is None:
        raise CheckpointMismatchError(
            f"the checkpoint's ViT has layer scale ({', '.join(gammas[:2])}, ...: timm ls1/ls2.gamma, mmpretrain "
            "gamma1/gamma2, BEiT / mmseg gamma_1/gamma_2), which this backbone does not compute: set "
            "model.backbone.init_values=1.0 (the checkpoint's gammas replace the initial value)")
    if not gammas:  # the gammas keep their init_values (the backbone's own tensors), as mmseg's MAE does
        state.update({k: v.clone() for k, v in target.items() if LAYER_SCALE.search(k)})
    if "pos_embed" in state:
        old = state["pos_embed"]
        side = int(round((old.shape[1] - 1) ** 0.5))
        if side * side + 1 != old.shape[1]:
            raise CheckpointMismatchError(f"pos_embed {tuple(old.shape)} is not a square grid plus a cls slot")
        state["pos_embed"] = resample_pos_embed(old.float(), (side, side), backbone.pos_grid)
    optional = {k for k in target if ".rel_bias." in k or k.startswith("fc_norm.")} | {STRUCTURE_KEY}
    problems = state_mismatch(state, target, optional)
    if problems:
        hint = ""
        if backbone.rel_pos == "irpe" and not any("rpe_k" in k for k in state):
            hint = " The checkpoint has no iRPE tables: use rel_pos='none' or 'bias' for an APE model."
        elif backbone.rel_pos != "irpe" and any("rpe_k" in k for k in state):
            hint = " The checkpoint is an RPE model: set rel_pos='irpe' to use its tables."
        raise CheckpointMismatchError("checkpoint does not fit the backbone." + hint + problems)
    return state, dropped


def state_mismatch(state: dict, target: dict, optional: set[str] = frozenset()) -> str:
    """Every missing (not in ``optional``), unexpected and mis-shaped key of ``state`` against ``target``, one
    per line; '' when ``state`` loads strictly."""
    missing = sorted(set(target) - set(state) - set(optional))
    unexpected = sorted(set(state) - set(target))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
                    for k in set(state) & set(target) if state[k].shape != target[k].shape)
    return ("".join(f"\n  missing: {k}" for k in missing)
            + "".join(f"\n  unexpected: {k}" for k in unexpected)
            + "".join(f"\n  shape: {s}" for s in shapes))


# ---------------------------------------------------------------------------------------------------------
# Pretraining checkpoint -> pretraining model (MaskedAutoencoder)
# ---------------------------------------------------------------------------------------------------------

# Arguments of our AdPEPretrainer config that are not MaskedAutoencoder arguments.
PRETRAINER_ONLY_KWARGS = ("type", "_scope_", "data_preprocessor", "init_cfg", "pretrained", "compile")
RELEASE_ADVERSARY_MODES = {0: None, 1: "embedding", 2: "coordinate"}  # args.adv_type
RELEASE_NORMS = {0: "none", 1: "l2", 2: "linf"}  # args.norm
# adpe_vit_base_patch16, mae_vit_large_patch16_dec512d8b, ... and 'tiny' (our test size).
RELEASE_NAME = re.compile(r"(?:\w+_vit_)?(tiny|base|large|huge)(?:_patch\d+(?:_dec\w+)?)?")


def pretrainer_from_checkpoint(ckpt: dict, **overrides) -> tuple[dict, dict[str, torch.Tensor], dict[str, str]]:
    """What a pretraining checkpoint describes: MaskedAutoencoder kwargs, its weights under our names, and
    {dropped key: reason}.

    Ours: the kwargs of the saved config's model. The MAE / AdPE releases: the variant from ``args``, the
    widths and depths from the tensors, the head counts from the model name (``overrides`` ``num_heads`` /
    ``decoder_num_heads`` for other names), confirmed by the iRPE tables' head_dim. ``overrides`` replace
    any keyword argument.
    """
    if ckpt.get("args") is not None and isinstance(ckpt.get("model"), dict):
        return _release_pretrainer(ckpt, overrides)
    cfg_text = (ckpt.get("meta") or {}).get("cfg")
    if not isinstance(cfg_text, str) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointMismatchError(
            f"not a pretraining checkpoint (top-level keys {sorted(ckpt)[:8]}): expected this suite's "
            "mmengine checkpoint (state_dict + meta.cfg) or an MAE / AdPE release checkpoint (model + args)")
    model_cfg = config_model(cfg_text)
    if model_cfg.get("type") != "AdPEPretrainer":
        raise CheckpointMismatchError(f"the checkpoint's config builds {model_cfg.get('type')!r}, not a "
                                      "pretraining model (AdPEPretrainer)")
    kwargs = {k: v for k, v in model_cfg.items() if k not in PRETRAINER_ONLY_KWARGS}
    state = {k[len("mae."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("mae.")}
    return {**kwargs, **overrides}, state, {}


def _release_pretrainer(ckpt: dict, overrides: dict) -> tuple[dict, dict, dict]:
    args, raw = ckpt["args"], ckpt["model"]
    is_adpe = hasattr(args, "pe_type")  # official MAE has no position or adversary arguments
    adv_type = getattr(args, "adv_type", 0)
    if adv_type not in RELEASE_ADVERSARY_MODES or getattr(args, "pe_type", 0) not in (0, 1):
        raise CheckpointMismatchError(f"release args pe_type={getattr(args, 'pe_type', None)}, adv_type="
                                      f"{adv_type}: expected pe_type 0 (APE) / 1 (RPE), adv_type 0 / 1 / 2")
    position = "rpe" if getattr(args, "pe_type", 0) == 1 else "ape"
    if (position == "rpe") != any("rpe_k.lookup_table_weight" in k for k in raw):
        raise CheckpointMismatchError(
            f"the checkpoint's args say pe_type={args.pe_type} ({position.upper()}) but its weights "
            f"{'have no' if position == 'rpe' else 'have'} iRPE tables (blocks.N.attn.rpe_k.lookup_table_weight)")
    state, dropped = {}, {}
    for key, value in raw.items():
        rule = next(((p.match(key), target) for p, target in RELEASE_ADVERSARY if p.match(key)), None)
        if rule:
            state[rule[1](rule[0])] = value.reshape(-1)
        elif RELEASE_CONSTANTS.search(key):
            dropped[key] = "the release's constant zero shift of unperturbed RPE lookups (no_shift)"
        else:
            state[key] = value
    kwargs = dict(
        variant="mae_plus" if is_adpe else "mae",
        position=position,
        rpe_lookup="continuous" if position == "rpe" and adv_type == 2 else "discrete",
        adversary=RELEASE_ADVERSARY_MODES[adv_type],
        img_size=getattr(args, "input_size", 112 if is_adpe else 224),
        mask_ratio=getattr(args, "mask_ratio", 0.75),
        norm_pix_loss=bool(getattr(args, "norm_pix_loss", True)),
        **_release_dims(raw, getattr(args, "model", ""), overrides),
    )
    if adv_type:
        kwargs.update(adv_norm=RELEASE_NORMS[getattr(args, "norm", 0)], adv_radius=float(getattr(args, "eps", 1.0)))
    return {**kwargs, **overrides}, state, dropped


def _release_dims(state: dict, model_name: str, overrides: dict) -> dict:
    """Widths and depths from the tensors, head counts from the model name / overrides, checked."""
    from adpe.vit import SIZES  # a table of numbers, read here to keep this module free of model imports

    def depth_of(prefix: str) -> int:
        return len({k.split(".")[1] for k in state if k.startswith(prefix)})

    proj = state["patch_embed.proj.weight"]
    dims = dict(
        size="base", patch_size=proj.shape[-1], in_chans=proj.shape[1], embed_dim=proj.shape[0],
        depth=depth_of("blocks."), decoder_embed_dim=state["decoder_embed.weight"].shape[0],
        decoder_depth=depth_of("decoder_blocks."), mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / proj.shape[0],
    )
    found = RELEASE_NAME.fullmatch(model_name)
    named = SIZES[found[1]] if found else None
    heads = {}
    for key, width, table in (("num_heads", dims["embed_dim"], "blocks.0.attn.rpe_k.lookup_table_weight"),
                              ("decoder_num_heads", dims["decoder_embed_dim"],
                               "decoder_blocks.0.attn.rpe_k.lookup_table_weight")):
        from_tables = width // state[table].shape[1] if table in state else None
        heads[key] = overrides.get(key, getattr(named, key, None) if named else from_tables)
        if heads[key] is None:
            raise CheckpointMismatchError(
                f"cannot tell {key} of release model {model_name!r} (not adpe_vit_{{tiny,base,large,huge}}_patchP "
                f"and no iRPE tables): pass load_pretrainer(path, num_heads=..., decoder_num_heads=...)")
        if from_tables is not None and from_tables != heads[key]:
            raise CheckpointMismatchError(
                f"{key}={heads[key]} gives head_dim {width // heads[key]}, but the iRPE table {table} has head_dim "
                f"{state[table].shape[1]}: pass {key}={from_tables}")
    if named is not None and "num_heads" not in overrides and named.embed_dim != dims["embed_dim"]:
        raise CheckpointMismatchError(
            f"release model {model_name!r} should be {named.embed_dim}-d but its tensors are {dims['embed_dim']}-d: "
            "pass load_pretrainer(path, num_heads=..., decoder_num_heads=...)")
    return {**dims, **heads}


def load_pretrainer(path: str | os.PathLike, **overrides):
    """The ``adpe.mae.MaskedAutoencoder`` that a pretraining checkpoint describes, loaded strictly.

    ``path``: this suite's mmengine checkpoint or an MAE / AdPE release checkpoint; ``overrides``: keyword
    arguments of MaskedAutoencoder (e.g. ``num_heads`` for a release model of unknown name). Raises
    CheckpointMismatchError listing every key that does not fit; no model is returned half-loaded.
    """
    from adpe.mae import MaskedAutoencoder  # here, not at the top: this module depends on no model module

    kwargs, state, dropped = pretrainer_from_checkpoint(load_checkpoint_file(path), **overrides)
    model = MaskedAutoencoder(**kwargs)
    load_strictly(model, state, f"{path} (described as {kwargs})")
    for key, reason in dropped.items():
        logger.info("load_pretrainer: dropped %s: %s", key, reason)
    return model


def load_strictly(model: torch.nn.Module, state: dict, source: str, optional: set[str] = frozenset()) -> None:
    """Load ``state`` into ``model`` only if every key fits (``optional`` keys may be missing and keep their
    values); otherwise raise CheckpointMismatchError naming the keys, with ``model`` untouched."""
    problems = state_mismatch(state, model.state_dict(), optional)
    if problems:
        raise CheckpointMismatchError(f"{source} does not fit {type(model).__name__}:{problems}")
    model.load_state_dict(state, strict=False)  # checked above: only optional keys can be missing


# ---------------------------------------------------------------------------------------------------------
# Pretraining checkpoint -> exported backbone file (tools/convert_checkpoint.py)
# ---------------------------------------------------------------------------------------------------------
def export_backbone(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Write the tensors-only backbone file of a pretraining checkpoint (ours, or an MAE / AdPE release).

    ``src``: a local path or URL (``load_checkpoint_file``), in any layout ``to_backbone_state`` reads. ``dst``
    holds {'state_dict': backbone weights (contiguous, on the CPU), 'meta': {'source': absolute ``src`` or the
    URL, 'position', 'rpe_lookup', 'dropped': sorted keys dropped on purpose}}, loads with
    ``torch.load(weights_only=True)`` and is written all or nothing. Returns what was written. Raises
    CheckpointMismatchError when no ViT blocks are left after the conversion.
    """
    ckpt = load_checkpoint_file(src)
    state, dropped = to_backbone_state(ckpt)
    if not any(k.startswith("blocks.") for k in state):
        raise CheckpointMismatchError(f"{src}: no ViT blocks found after conversion (keys: {sorted(state)[:5]}...)")
    out = {
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in state.items()},
        "meta": {"source": os.fspath(src) if url_scheme(src) else os.path.abspath(src), **checkpoint_variant(ckpt),
                 "dropped": sorted(dropped)},
    }
    buffer = io.BytesIO()
    torch.save(out, buffer)
    atomic_write(buffer.getvalue(), dst)
    return out
