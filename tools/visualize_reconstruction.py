"""Show what a pretraining checkpoint reconstructs: original, masked input, reconstruction, reconstruction + visible.

    python tools/visualize_reconstruction.py CHECKPOINT --images DIR [--num 4] [--out recon.png] [--seed 0]

CHECKPOINT is a pretraining checkpoint: this suite's (mmengine, ``state_dict`` with ``mae.`` keys and the
config text in ``meta.cfg``) or a release one of MAE or AdPE (``model`` + ``args``); adpe.checkpoint.load_pretrainer
builds the model it describes. The first ``--num`` images found under DIR (adpe.data.find_images) are resized
(shorter side) and centre-cropped to the model's input size; the mask is drawn from ``--seed``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adpe.checkpoint import load_pretrainer
from adpe.report.reconstruction import input_size, load_images, reconstruct, save_figure


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
