"""Reconstruction figures of a pretraining model: original, masked input, reconstruction, reconstruction + visible.

Used by ``tools/visualize_reconstruction.py`` and the pipeline's report. Needs matplotlib for the figure.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from adpe.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, find_images
from adpe.models.mae import MaskedAutoencoder, patch_stats

COLUMNS = ("original", "masked input", "reconstruction", "reconstruction + visible")


def input_size(model: MaskedAutoencoder) -> int:
    return model.grid[0] * model.patch_size


def load_images(folder: str | Path, size: int, num: int) -> Tensor:
    """(num, 3, size, size) normalised with the ImageNet mean / std: shorter side resize, centre crop."""
    from PIL import Image
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    paths = find_images(folder)[:num]
    transform = T.Compose([
        T.Resize(size, interpolation=InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ])
    images = []
    for path in paths:
        with Image.open(path) as img:
            images.append(transform(img.convert("RGB")))
    return torch.stack(images)


def _stats(imgs: Tensor) -> tuple[Tensor, Tensor]:
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, dtype=imgs.dtype, device=imgs.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD, dtype=imgs.dtype, device=imgs.device).view(1, 3, 1, 1)
    return mean, std


def denormalize(imgs: Tensor) -> Tensor:
    """Normalised images -> display pixels in [0, 1]."""
    mean, std = _stats(imgs)
    return (imgs * std + mean).clamp(0, 1)


@torch.no_grad()
def reconstruct(model: MaskedAutoencoder, imgs: Tensor, seed: int = 0) -> dict[str, Tensor]:
    """Run the model in eval mode on normalised ``imgs`` with a mask drawn from ``seed``.

    Returns (all images normalised like the input, (B, 3, H, W); patches (B, L, p*p*3)):
      'original', 'masked' (masked patches mid-grey), 'reconstruction' (every patch predicted),
      'pasted' (reconstruction with the visible original patches pasted back, bit-exact),
      'pred' (raw model output), 'pred_pixels' (un-normalised per patch when norm_pix_loss), 'target'
      (the patchified input), 'mask' (B, L), 1 = masked, and 'loss'.
    """
    was_training = model.training
    model.eval()
    try:
        out = model(imgs, generator=torch.Generator().manual_seed(seed))
    finally:
        model.train(was_training)
    pred, mask = out["pred"].float(), out["mask"]
    target = model.patchify(imgs)
    pred_pixels = pred
    if model.norm_pix_loss:
        mean, std = patch_stats(target)
        pred_pixels = pred * std + mean
    masked = mask[..., None].bool()
    mean_rgb, std_rgb = _stats(imgs)
    grey = model.patchify(((0.5 - mean_rgb) / std_rgb).expand_as(imgs))  # mid-grey once de-normalised
    return {
        "original": imgs,
        "masked": model.unpatchify(torch.where(masked, grey, target)),
        "reconstruction": model.unpatchify(pred_pixels),
        "pasted": model.unpatchify(torch.where(masked, pred_pixels, target)),
        "pred": out["pred"],
        "pred_pixels": pred_pixels,
        "target": target,
        "mask": mask,
        "loss": out["loss"],
    }


def save_figure(result: dict[str, Tensor], out: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("original", "masked", "reconstruction", "pasted")
    rows = result["original"].shape[0]
    fig, axes = plt.subplots(rows, len(keys), figsize=(2.6 * len(keys), 2.6 * rows + 0.4), squeeze=False)
    for col, (key, name) in enumerate(zip(keys, COLUMNS, strict=True)):
        images = denormalize(result[key].float()).permute(0, 2, 3, 1).cpu().numpy()
        for row in range(rows):
            ax = axes[row][col]
            ax.imshow(images[row])
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
