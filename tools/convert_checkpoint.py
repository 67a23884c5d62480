"""Write a tensors-only backbone checkpoint from a pretraining checkpoint.

python tools/convert_checkpoint.py SRC DST

SRC: this suite's pretraining checkpoint (work_dirs/.../epoch_N.pth), an official MAE release
(mae_pretrain_vit_base.pth), an official AdPE release, a timm VisionTransformer state dict (.pth or
.safetensors) or an mmpretrain MAE checkpoint; a local path or a URL (https://..., s3://...), which is
downloaded once into $ADPE_CACHE/checkpoints (default ~/.cache/adpe/checkpoints). DST holds {'state_dict':
backbone weights, 'meta': {'source', 'position', 'rpe_lookup', 'dropped'}} and loads with
torch.load(weights_only=True). Decoder, mask token, adversary and classifier weights are dropped on purpose
and listed. See adpe.checkpoint.export_backbone.
"""

from __future__ import annotations

import argparse

from adpe.checkpoint import export_backbone

try:  # mmengine checkpoints carry its log history, which adpe.mm allow-lists; it also adds mmengine's URLs
    import adpe.mm  # noqa: F401
except ImportError:
    pass


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src")
    parser.add_argument("dst")
    args = parser.parse_args(argv)
    try:
        out = export_backbone(args.src, args.dst)
    except (OSError, ValueError) as err:  # no such file or URL, not loadable, or not a ViT: a message
        raise SystemExit(f"error: {err}") from err
    meta = out["meta"]
    print(f"[adpe] {args.dst}: {len(out['state_dict'])} tensors, position={meta['position']}, "
          f"rpe_lookup={meta['rpe_lookup']}; dropped on purpose: {len(meta['dropped'])} keys")


if __name__ == "__main__":
    main()
