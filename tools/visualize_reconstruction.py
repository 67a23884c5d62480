"""Show what a pretraining checkpoint reconstructs: original, masked input, reconstruction, reconstruction + visible.

    python tools/visualize_reconstruction.py CHECKPOINT --images DIR [--num 4] [--out recon.png] [--seed 0]

CHECKPOINT is a pretraining checkpoint: this suite's (mmengine, ``state_dict`` with ``mae.`` keys and the
config text in ``meta.cfg``) or a release one of MAE or AdPE (``model`` + ``args``); adpe.checkpoint.load_pretrainer
builds the model it describes. The first ``--num`` images found under DIR (adpe.data.find_images) are resized
(shorter side) and centre-cropped to the model's input size; the mask is drawn from ``--seed``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # adpe, when not installed

from adpe.checkpoint import load_pretrainer  # noqa: E402
from adpe.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, find_images  # noqa: E402
from adpe.mae import MaskedAutoencoder, patch_stats  # noqa: E402

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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="pretraining checkpoint: ours (e.g. work_dirs/.../epoch_30.pth) or an "
                        "MAE / AdPE release one")
    parser.add_argument("--images", required=True, help="folder of images (ImageNet-style or flat)")
    parser.add_argument("--num", type=int, default=4, help="number of images (rows)")
    parser.add_argument("--out", default="recon.png", help="output PNG")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random mask")
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    if args.num < 1:
        raise SystemExit("--num must be >= 1")
    import adpe.mm  # noqa: F401  (allow-lists mmengine's classes in our training checkpoints for torch.load)

    try:
        model = load_pretrainer(args.checkpoint).eval()
        imgs = load_images(args.images, input_size(model), args.num)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from err
    result = reconstruct(model, imgs, args.seed)
    variant = f"{model.variant}, {model.position}" + (f", adversary={model.adversary.mode}" if model.adversary else "")
    title = f"{Path(args.checkpoint).name} ({variant}); mask ratio {model.mask_ratio}, seed {args.seed}, " \
            f"loss {result['loss'].item():.4f}"
    out = save_figure(result, args.out, title)
    print(out)
    return out


if __name__ == "__main__":
    main()
