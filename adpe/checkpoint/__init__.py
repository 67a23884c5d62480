"""Checkpoints on torch >= 2.6: files, sources, layouts, what they imply, the releases, and export.

Every load keeps ``weights_only=True`` (no arbitrary unpickling). Modules, lowest first (each imports only
those before it, ``adpe.structure``, ``adpe.config_text`` and the models):

  files     atomic writes, the safe read of a local file, the training-checkpoint allow-list
  sources   URL schemes, fetchers and the cache; ``load_checkpoint_file`` for any path or URL
  layouts   the key tables of every supported layout, conversion to backbone names, the strict fit
  variant   what a checkpoint implies: pretraining variant, 'auto' backbone settings, trained structure
  release   the MAE / AdPE releases' tables; a pretraining checkpoint as a ``MaskedAutoencoder``
  export    a pretraining checkpoint as a tensors-only backbone file (tools/convert_checkpoint.py)
"""

from adpe.checkpoint.export import export_backbone
from adpe.checkpoint.files import TRAINING_CHECKPOINT_GLOBALS, atomic_write, read_local, remove_stale_temporaries
from adpe.checkpoint.layouts import (
    DROPPED_ON_PURPOSE,
    LAYER_SCALE,
    PREFIXES_TO_STRIP,
    RENAMED,
    UNSUPPORTED,
    backbone_key,
    checkpoint_state,
    fit_to_backbone,
    load_strictly,
    state_mismatch,
    strip_prefixes,
    to_backbone_state,
)
from adpe.checkpoint.release import (
    PRETRAINER_ONLY_KWARGS,
    RELEASE_ADVERSARY,
    RELEASE_ADVERSARY_MODES,
    RELEASE_CONSTANTS,
    RELEASE_NAME,
    RELEASE_NORMS,
    load_pretrainer,
    pretrainer_from_checkpoint,
)
from adpe.checkpoint.sources import (
    FETCHERS,
    CheckpointSourceError,
    cached_checkpoint_path,
    checkpoint_cache_dir,
    expected_sha256_prefix,
    fetch_checkpoint,
    load_checkpoint_file,
    register_fetcher,
    url_scheme,
)
from adpe.checkpoint.variant import backbone_settings_of_trained, checkpoint_variant, resolve_auto
from adpe.structure import STRUCTURE_KEY, CheckpointMismatchError

__all__ = [
    "DROPPED_ON_PURPOSE", "FETCHERS", "LAYER_SCALE", "PREFIXES_TO_STRIP", "PRETRAINER_ONLY_KWARGS", "RELEASE_ADVERSARY",
    "RELEASE_ADVERSARY_MODES", "RELEASE_CONSTANTS", "RELEASE_NAME", "RELEASE_NORMS", "RENAMED", "STRUCTURE_KEY",
    "TRAINING_CHECKPOINT_GLOBALS", "UNSUPPORTED", "CheckpointMismatchError", "CheckpointSourceError", "atomic_write",
    "backbone_key", "backbone_settings_of_trained", "cached_checkpoint_path", "checkpoint_cache_dir",
    "checkpoint_state", "checkpoint_variant", "expected_sha256_prefix", "export_backbone", "fetch_checkpoint",
    "fit_to_backbone", "load_checkpoint_file", "load_pretrainer", "load_strictly", "pretrainer_from_checkpoint",
    "read_local", "register_fetcher", "remove_stale_temporaries", "resolve_auto", "state_mismatch", "strip_prefixes",
    "to_backbone_state", "url_scheme",
]
