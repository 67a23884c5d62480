"""Write a tensors-only backbone checkpoint from a pretraining checkpoint.

python tools/convert_checkpoint.py SRC DST

SRC: this suite's pretraining checkpoint (work_dirs/.../epoch_N.pth), an official MAE release
(mae_pretrain_vit_base.pth) or an official AdPE release. DST holds {'state_dict': backbone weights,
'meta': {'source', 'position', 'rpe_lookup', 'dropped'}} and loads with torch.load(weights_only=True).
Decoder, mask token and adversary weights are dropped on purpose and listed.
"""

from __future__ import annotations

import argparse
import io
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from adpe.checkpoint import atomic_write, checkpoint_variant, load_checkpoint_file, to_backbone_state  # noqa: E402

try:  # mmengine checkpoints carry its log history: adpe.mm allow-lists it for weights_only loading
    import adpe.mm.engine  # noqa: E402,F401
except ImportError:
    pass


def convert(src: str, dst: str) -> dict:
    ckpt = load_checkpoint_file(src)
    state, dropped = to_backbone_state(ckpt)
    if not any(k.startswith("blocks.") for k in state):
        raise SystemExit(f"{src}: no ViT blocks found after conversion (keys: {sorted(state)[:5]}...)")
    variant = checkpoint_variant(ckpt)
    out = {
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in state.items()},
        "meta": {"source": osp.abspath(src), **variant, "dropped": sorted(dropped)},
    }
    buffer = io.BytesIO()
    torch.save(out, buffer)
    atomic_write(buffer.getvalue(), dst)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src")
    parser.add_argument("dst")
    args = parser.parse_args(argv)
    out = convert(args.src, args.dst)
    meta = out["meta"]
    print(f"[adpe] {args.dst}: {len(out['state_dict'])} tensors, position={meta['position']}, "
          f"rpe_lookup={meta['rpe_lookup']}; dropped on purpose: {len(meta['dropped'])} keys")


if __name__ == "__main__":
    main()
