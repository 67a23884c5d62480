"""Benchmark the pretraining input pipeline: images/s of the CPU path per loader core, and of the device path.

What it measures
    cpu     ``AdPEImageFolder(decode='cpu')``'s work: ``ImageFolderDataset`` + ``MultiCropTransform`` (PIL decode,
            --crops random-resized crops of --size, bicubic, flip, normalise) and ``multicrop_collate``, in a
            DataLoader with --workers processes of one thread each. Reported per loader core as well.
    device  ``decode='device'``: the same workers only read the files' bytes; ``adpe.data.decode_multicrop``
            then decodes (nvJPEG on CUDA, libjpeg on CPU) and crops the batch on --device, as the model's
            preprocessor does in training.
    Each path runs one untimed batch, then --batches timed ones of --batch images; images/s = images / seconds.

Data
    --data-root: an image folder (ImageNet layout or flat). Without it, --generate N JPEGs of 500 x 375 filled
    with noise (the worst case for a JPEG decoder) are written to a temporary folder.

How to run it
    .venv/bin/python tools/benchmark_data.py                       # 2 workers, cpu and device paths
    .venv/bin/python tools/benchmark_data.py --data-root /data/imagenet/train --workers 16 \\
        --device cuda --batch 128                                  # on a GPU node
    .venv/bin/python tools/benchmark_data.py --device cuda --batch 128 --pretrain-json bench.json
        # and the target, against a tools/benchmark_pretrain.py --json report from the same card

Target, checked with --pretrain-json (``TARGETS``): on one GPU the device path keeps up with the GPU's pretraining
step, the fastest timed row of the report (the most images/s to keep up with)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from adpe.tooling.bench.results import Result, timed
from adpe.tooling.bench.table import print_checks
from adpe.tooling.bench.targets import Target, check, describe_all

# The row the device path is compared with: the fastest step of a pretraining report.
PRETRAINING_STEP = "pretraining step"
TARGETS: tuple[Target, ...] = (Target("device", "images_per_s", 1.0, versus=PRETRAINING_STEP),)


def generate_jpegs(folder: Path, count: int) -> None:
    """``count`` 500 x 375 noise JPEGs (quality 90) in ``folder``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def images_per_second(loader, batches: int, consume) -> float:
    """Images/s over ``batches`` batches of ``loader`` after one untimed batch; ``consume(batch)`` -> images."""
    iterator = iter(loader)
    consume(next(iterator))
    images, start = 0, time.perf_counter()
    for _ in range(batches):
        images += consume(next(iterator))
    return images / (time.perf_counter() - start)


def measure(args: argparse.Namespace, root: Path) -> dict[str, float]:
    import torch
    from torch.utils.data import DataLoader

    from adpe.data import ImageFolderDataset, MultiCropTransform, decode_multicrop, multicrop_collate

    torch.set_num_threads(1)
    transform = MultiCropTransform(args.crops, args.size)
    device = torch.device(args.device)

    def loader(dataset, collate):
        return DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=args.workers, collate_fn=collate,
                          worker_init_fn=lambda _: torch.set_num_threads(1), persistent_workers=True,
                          generator=torch.Generator().manual_seed(0))

    def on_device(batch) -> int:
        crops = decode_multicrop(batch, transform, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return crops.shape[0] // args.crops

    cpu = images_per_second(loader(ImageFolderDataset(root, transform=transform), multicrop_collate), args.batches,
                            lambda crops: crops.shape[0] // args.crops)
    torch.set_num_threads(args.device_threads)
    dev = images_per_second(loader(ImageFolderDataset(root, encoded=True), list), args.batches, on_device)
    return {"cpu": cpu, "device": dev}


def pretraining_rate(report: Path) -> Result:
    """The row of the fastest timed step (most images/s) of a ``tools/benchmark_pretrain.py --json`` report."""
    results = [r for r in json.loads(report.read_text())["results"] if timed(r)]
    if not results:
        raise SystemExit(f"{report}: no timed pretraining step")
    return {"path": PRETRAINING_STEP, "images_per_s": max(r["images_per_s"] for r in results)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``tools/benchmark_data.py``."""
    parser = argparse.ArgumentParser(description=__doc__ + "".join(f"    * {line}\n" for line in describe_all(TARGETS)),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, help="image folder (default: generated noise JPEGs)")
    parser.add_argument("--generate", type=int, default=256, help="JPEGs to generate without --data-root (256)")
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes, one thread each (2)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (32)")
    parser.add_argument("--batches", type=int, default=4, help="timed batches per path (4)")
    parser.add_argument("--crops", type=int, default=4, help="crops per image (4)")
    parser.add_argument("--size", type=int, default=112, help="crop side (112)")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu", help="device of the device path")
    parser.add_argument("--device-threads", type=int, default=1,
                        help="torch threads of the main process for the device path on a CPU (1)")
    parser.add_argument("--pretrain-json", type=Path, metavar="REPORT",
                        help="a tools/benchmark_pretrain.py --json report from the same device: check the target")
    args = parser.parse_args(argv)
    if min(args.workers, args.batch, args.batches, args.crops, args.size, args.generate, args.device_threads) < 1:
        parser.error("--workers, --batch, --batches, --crops, --size, --generate and --device-threads must be >= 1")
    return args


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    """Measure both paths and print their images/s (and the target, with ``--pretrain-json``)."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root
        if root is None:
            root = Path(tmp)
            generate_jpegs(root, args.generate)
        rates = measure(args, root)
    source = args.data_root or f"{args.generate} generated 500x375 noise JPEGs"
    print(f"\ninput pipeline, {source}: batches of {args.batch} images x {args.crops} crops of {args.size}^2, "
          f"{args.workers} loader workers (1 thread each), {args.batches} timed batches after one untimed\n")
    print(f"{'path':<8}{'images/s':>10}{'per loader core':>18}")
    print(f"{'cpu':<8}{rates['cpu']:>10.1f}{rates['cpu'] / args.workers:>18.1f}")
    print(f"{'device':<8}{rates['device']:>10.1f}{'(' + args.device + ')':>18}")
    if args.pretrain_json:
        rows: list[Result] = [{"path": path, "images_per_s": rate} for path, rate in rates.items()]
        checks = check(TARGETS, [*rows, pretraining_rate(args.pretrain_json)], "path", args.device)
        print_checks(f"target (against {args.pretrain_json})", checks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
