from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def smooth_images(folder: Path, count: int, size: int = 128, seed: int = 0) -> Path:
    """Learnable images: sums of a few random low-frequency sinusoids per channel, as PNG files."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        img = np.zeros((size, size, 3))
        for c in range(3):
            for _ in range(3):
                fx, fy, phase = rng.uniform(0.5, 3, 2).tolist() + [rng.uniform(0, 6.3)]
                img[..., c] += np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
        img = (img - img.min()) / (np.ptp(img) + 1e-9) * 255
        sub = folder / f"class{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.astype(np.uint8)).save(sub / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    smooth_images(root / "train", 16)
    return root


def _timm_block_outputs(vit, x) -> list:
    """Every block's token output of a timm VisionTransformer for input x: list of (B, N, D)."""
    import torch

    captured = []
    hooks = [b.register_forward_hook(lambda _m, _i, out: captured.append(out)) for b in vit.blocks]
    try:
        with torch.no_grad():
            vit.forward_features(x)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


@pytest.fixture
def timm_block_outputs():
    """``(vit, x) -> [block outputs]`` of a timm VisionTransformer, for parity checks against our backbone."""
    return _timm_block_outputs


def _random_timm_vit(**kw):
    """A tiny timm VisionTransformer (the release fixture's dimensions: 112^2, 192-d, 4 blocks, 3 heads, 10
    classes unless ``kw`` says otherwise) with non-trivial values in every tensor, norms and biases included."""
    import timm
    import torch
    torch.manual_seed(0)
    model = timm.models.VisionTransformer(**{"img_size": 112, "patch_size": 16, "embed_dim": 192, "depth": 4,
                                             "num_heads": 3, "num_classes": 10, **kw}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.05)
    return model


@pytest.fixture
def random_timm_vit():
    """``(**kw) -> a tiny timm VisionTransformer with random non-trivial weights``, for parity checks."""
    return _random_timm_vit


def _write_release_rpe_coordinate_checkpoint(path: Path) -> Path:
    """A release-format AdPE RPE-coordinate pretraining checkpoint at ``path``: the MAE+ RPE fixture's weights
    plus the per-layer ``adv_shift`` (delta) and ``no_shift`` tensors, ``args.adv_type`` 2."""
    import argparse

    import torch

    from adpe.checkpoint import load_checkpoint_file

    release = load_checkpoint_file(Path(__file__).parent / "fixtures" / "official_adpe_pretrain_mae_plus_rpe_tiny.pth")
    state = dict(release["model"])
    for prefix, depth in (("blocks", 4), ("decoder_blocks", 1)):
        for i in range(depth):
            state[f"{prefix}.{i}.attn.rpe_k.adv_shift"] = torch.randn(2)
            state[f"{prefix}.{i}.attn.rpe_k.no_shift"] = torch.zeros(2)
    args = argparse.Namespace(**{**vars(release["args"]), "adv_type": 2, "norm": 1})
    torch.save({"model": state, "args": args, "epoch": 399}, path)
    return path


@pytest.fixture(scope="session")
def release_rpe_coordinate_checkpoint():
    """``path -> path``: writes a release-format RPE-coordinate checkpoint there (the paper's headline variant)."""
    return _write_release_rpe_coordinate_checkpoint
