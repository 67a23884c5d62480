"""Weighted kNN top-1 / top-5 of a transfer backbone (an exported pretraining checkpoint, or random init).

    python tools/knn_eval.py CONFIG --work-dir DIR [--bank-split train] [--query-split test] [--cfg-options k=v ...]
    python tools/knn_eval.py CONFIG --cost IMAGES [--cfg-options k=v ...]

CONFIG is a linear-probe config (benchmarks/imagenet/linear_probe_*.py): its ``model.backbone`` is built and
initialised as the probe's is (``model.backbone.init_cfg.checkpoint=PATH``, or ``model.backbone.init_cfg=None``
for random init), and its features -- average-pooled, as the probe reads them -- are classified by
``KNNMonitorHook``'s kNN (DINO's k = 20, T = 0.07): the bank is ``--bank-split`` of the train loader's
``data_root``, the queries ``--query-split``, both resized as the probe's test pipeline does. Writes
``DIR/test_results.json`` ({"metrics": {"knn/top1", "knn/top5"}}, as the training tools' --test does) and
beside it ``test_records.npz`` (each query's top-5 classes and scores, adpe.report.samples), so the study's
report reads it like any transfer stage's, intervals and paired deltas included. No training: the same numbers
on every run.

``--cost IMAGES`` reads no data: it prints what one evaluation of IMAGES images (bank and queries) costs with the
config's backbone, from the FLOP of one image's forward (``torch.utils.flop_counter``) and the time of a
forward of 16 images here, in fp32 (e.g. the ViT-B monitor of the pretraining configs:
``benchmarks/imagenet/linear_probe_adpe_vitb.py --cost 20000``).
"""

from __future__ import annotations

import argparse
import time

import torch
from mmengine.config import DictAction
from mmengine.registry import MODELS

import adpe.mm  # noqa: F401  (registers the suite's modules)
from adpe.knn import score_accuracy
from adpe.mm.hooks import KNNMonitorHook
from adpe.mm.runner import build_config, write_test_results
from adpe.report import samples
from adpe.report.records import TEST_RESULTS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a linear-probe config (its backbone and test pipeline's sizes)")
    parser.add_argument("--work-dir", help="where test_results.json goes (required unless --cost)")
    parser.add_argument("--cost", type=int, metavar="IMAGES",
                        help="print the FLOP and time of an evaluation of IMAGES images instead of running one")
    parser.add_argument("--bank-split", default="train", help="labelled folder of the bank (default: train)")
    parser.add_argument("--query-split", default="test", help="labelled folder of the queries (default: test)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="override config entries, e.g. model.backbone.init_cfg.checkpoint=PATH")
    args = parser.parse_args(argv)
    if args.work_dir is None and args.cost is None:
        parser.error("--work-dir is required (or --cost IMAGES for the cost of an evaluation)")
    return args


def test_sizes(cfg) -> tuple[int, int]:
    """(short-side resize, centre crop) of the config's test pipeline."""
    steps = {step["type"]: step for step in cfg.test_dataloader.dataset.pipeline}
    return int(steps["ResizeEdge"]["scale"]), int(steps["CenterCrop"]["crop_size"])


def evaluation_cost(backbone, crop: int, images: int, batch: int = 16) -> dict[str, float]:
    """FLOP of one ``crop``^2 image's forward, seconds per image (a batch of ``batch``, after one warm-up) on the
    backbone's device in fp32, and both for ``images`` images."""
    from adpe.tooling.bench.measure import count_flops

    if torch.cuda.is_available():
        backbone.cuda()
    device = next(backbone.parameters()).device
    with torch.no_grad():
        flop = count_flops(lambda: backbone(torch.zeros(1, 3, crop, crop, device=device)))
        inputs = torch.randn(batch, 3, crop, crop, device=device)
        backbone(inputs)
        start = time.perf_counter()
        backbone(inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        per_image = (time.perf_counter() - start) / batch
    return {"flop_per_image": flop, "seconds_per_image": per_image, "images": images,
            "flop": flop * images, "seconds": per_image * images}


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = build_config(args.config, work_dir=args.work_dir or ".", cfg_options=args.cfg_options)
    torch.manual_seed(cfg.get("randomness", {}).get("seed", 0))  # random init: the same weights every run
    with torch.no_grad():
        classifier = MODELS.build({**cfg.model, "_scope_": "mmpretrain"}) if "_scope_" not in cfg.model \
            else MODELS.build(cfg.model)
    if args.cost is not None:  # the architecture's cost: no weights, no data
        cost = evaluation_cost(classifier.backbone.eval(), test_sizes(cfg)[1], args.cost)
        where = f"{torch.get_num_threads()} CPU threads" if not torch.cuda.is_available() else "the GPU"
        print(f"[adpe] kNN evaluation of {args.cost} images ({where}, fp32): "
              f"{cost['flop_per_image'] / 1e9:.1f} GFLOP and {cost['seconds_per_image'] * 1e3:.0f} ms per image; "
              f"{cost['flop'] / 1e12:.0f} TFLOP and {cost['seconds'] / 60:.1f} min in all")
        return cost
    classifier.init_weights()  # loads init_cfg's checkpoint, as the probe's Runner does
    backbone = classifier.backbone.eval()
    resize, crop = test_sizes(cfg)
    monitor = KNNMonitorHook(data_root=cfg.train_dataloader.dataset.data_root, bank_split=args.bank_split,
                             query_split=args.query_split, resize=resize)
    scores, labels, paths, n_bank = monitor.query_scores(backbone, crop)
    metrics = {f"knn/{k}": v for k, v in score_accuracy(scores, labels).items()}
    init = cfg.model.backbone.get("init_cfg") or {}
    print(f"[adpe] kNN ({n_bank} {args.bank_split} bank, {len(paths)} {args.query_split} query images): {metrics}")
    top = scores.topk(min(5, scores.shape[1]), dim=1)
    samples.cls_records(samples.relative_ids(paths), labels.numpy(), top.indices.numpy(), top.values.numpy(),
                        thr=None, metrics=metrics).save(samples.records_path(f"{args.work_dir}/{TEST_RESULTS[False]}"))
    return write_test_results(args.config, str(init.get("checkpoint") or "random init"), metrics, args.work_dir)


if __name__ == "__main__":
    main()
