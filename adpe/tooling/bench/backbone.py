"""Benchmark the transfer backbones: forward + backward time and peak memory, fp32 and bf16, side by side.

What it measures
    One training-mode forward + backward of ``adpe.models.backbone.ViTBackbone`` (and, for segmentation, of
    mmseg's own ``MAE`` backbone, and of timm's reference models) on a random batch of ``--batch`` images (1);
    the loss is the sum of the means of the returned feature maps, so every output gets a gradient. No optimiser
    step: only the backbone's cost. FLOP per step are counted once per configuration
    (``torch.utils.flop_counter``, fp32 forward + backward) and give TFLOP/s and the share of the hardware's
    peak: the card's dense datasheet rate (A100 / H100 / H200, ``adpe.tooling.bench.peaks.DATASHEET_TFLOPS``) and
    the best square matmul measured on this machine in the same dtype, both printed in a small table.
    Each configuration runs in fp32 and under bf16 autocast (``torch.autocast`` on CPU or CUDA; backward
    outside the autocast region), every (configuration, dtype) pair in its own subprocess (this script
    module re-invoked with ``--worker``, one JSON line on stdout), so that its peak memory is its own: peak RSS
    (``getrusage``; it includes the imports, e.g. mmseg/mmcv for mmseg's backbone), plus
    ``torch.cuda.max_memory_allocated`` on GPU. Each worker builds its model from a fixed seed, in train
    mode (drop path 0.1), runs ``--warmup`` untimed steps (1), then times ``--steps`` steps (2) with
    ``time.perf_counter`` (``torch.cuda.synchronize`` on GPU) and reports the median.

    1. Segmentation (UperNet recipe), ``--seg-size`` 512^2, ``mode='seg'``, out_indices (3, 5, 7, 11) for ViT-B:
        seg config      backbone
        mmseg_mae       mmseg.models.backbones.MAE, the mmseg MAE ADE20K recipe's arguments (init_values=1.0,
                        drop_path_rate=0.1): APE + BEiT-style relative position bias in every block
        ours_ape        ViTBackbone(rel_pos='none')
        ours_ape_bias   ViTBackbone(rel_pos='bias')                        (the like-for-like of mmseg's)
        ours_rpe        ViTBackbone(rel_pos='irpe', rpe_lookup='discrete')
        ours_rpe_cont   ViTBackbone(rel_pos='irpe', rpe_lookup='continuous')
        timm_vit        timm VisionTransformer, same size: the reference of ours_ape
        timm_beit       timm Beit with APE and its relative position bias (through SDPA): the reference of
                        ours_ape_bias
       The table gives seconds per step, TFLOP/s and share of peak, peak memory, the bf16 speed-up over fp32,
       the ratio of its time (and peak memory) to mmseg's in the same dtype and, for ours_ape / ours_ape_bias,
       to the timm reference's.

    2. Detection (ViTDet-style Mask R-CNN recipe), ``--det-size`` 1024^2, ``mode='det'``, APE + decomposed
       relative position bias (``rel_pos='bias'``):
        det config      attention                                               activation checkpointing
        window          window 14 with global blocks (2, 5, 8, 11) for ViT-B    no
        window_ckpt     same                                                    yes (every block)
        global          all global (4096 tokens at 1024^2)                      no
        global_ckpt     same                                                    yes
        window_irpe_cont  as window, with iRPE continuous (rel_pos='irpe') instead of the decomposed bias
        timm_sam        timm VisionTransformerSAM with the same windows, global blocks and decomposed bias
                        (the ViTDet layout), no neck: a reference row
       The table gives seconds per step, TFLOP/s and share of peak, peak memory, the bf16 speed-up and the time
       and memory ratios to ``window`` in the same dtype. All-global attention at 1024^2 is heavy on a CPU:
       ``--skip-global`` leaves it out.

    ``--size`` sets both ours and mmseg's dimensions (tiny: 192 wide, 4 blocks, 3 heads; out_indices
    (0, 1, 2, 3); global blocks (1, 3) in detection mode), for a quick check of the script itself.

How to run it
    .venv/bin/python tools/benchmark_backbone.py                        # ViT-B, everything
    .venv/bin/python tools/benchmark_backbone.py --only seg --json seg.json
    .venv/bin/python tools/benchmark_backbone.py --only det --skip-global --dtypes bf16
    .venv/bin/python tools/benchmark_backbone.py --size tiny --seg-size 128 --det-size 256 \\
        --steps 1                                                                       # smoke test
    .venv/bin/python tools/benchmark_backbone.py --dtypes bf16 --batch 8 --only seg   # GPU, seg
    .venv/bin/python tools/benchmark_backbone.py --dtypes bf16 --batch 2 --only det   # GPU, det

    On a machine with CUDA the steps run on the GPU (``--device cpu`` forces the CPU). Run it on an otherwise
    idle machine: with other load on the cores, CPU step times become erratic (the script warns when the
    load average is already high). ViT-B all-global detection at 1024^2 takes minutes per step on 2 cores.

Targets, checked at the end of the run (``TARGETS``; the same size, input and dtype on both sides)
    Detection rows other than window_irpe_cont report what windowing and checkpointing cost and save. After the
    checks, the run prints mmseg's step time beside the one measured on the 2-core development CPU
    (``REFERENCE_MMSEG_S``, ViT-B at 512^2, batch 1).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from adpe.tooling.bench import cli, driver, measure
from adpe.tooling.bench.peaks import utilisation_fields, utilisation_text
from adpe.tooling.bench.results import Result, bf16_speedup, exit_status, timed, timed_by_key
from adpe.tooling.bench.table import fmt, print_aligned, print_checks
from adpe.tooling.bench.targets import Target, check, describe_all


@dataclass(frozen=True)
class Config:
    """One benchmarked backbone: ``section`` 'seg' or 'det'; ``kwargs`` go to ``ViTBackbone``."""

    name: str
    section: str
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    mmseg: bool = False
    timm: str | None = None  # a timm reference model: 'vit', 'beit' or 'sam'
    windowed: bool = False


CONFIGS: dict[str, Config] = {c.name: c for c in (
    Config("mmseg_mae", "seg", "mmseg MAE (APE + rel-pos bias)", mmseg=True),
    Config("ours_ape", "seg", "ours APE", {"rel_pos": "none"}),
    Config("ours_ape_bias", "seg", "ours APE + rel-pos bias", {"rel_pos": "bias"}),
    Config("ours_rpe", "seg", "ours RPE (discrete)", {"rel_pos": "irpe", "rpe_lookup": "discrete"}),
    Config("ours_rpe_cont", "seg", "ours RPE (continuous)", {"rel_pos": "irpe", "rpe_lookup": "continuous"}),
    Config("timm_vit", "seg", "timm VisionTransformer (APE; reference of ours_ape)", timm="vit"),
    Config("timm_beit", "seg", "timm Beit (APE + rel-pos bias; reference of ours_ape_bias)", timm="beit"),
    Config("window", "det", "window + global blocks", {"use_checkpoint": False}, windowed=True),
    Config("window_ckpt", "det", "window + global blocks, checkpointed", {"use_checkpoint": True}, windowed=True),
    Config("global", "det", "all global", {"use_checkpoint": False}),
    Config("global_ckpt", "det", "all global, checkpointed", {"use_checkpoint": True}),
    Config("window_irpe_cont", "det", "window + global blocks, iRPE continuous instead of the bias",
           {"use_checkpoint": False, "rel_pos": "irpe", "rpe_lookup": "continuous"}, windowed=True),
    Config("timm_sam", "det", "timm VisionTransformerSAM (the same ViTDet layout; reference)", timm="sam",
           windowed=True),
)}
SEG_BASELINE = "mmseg_mae"
DET_BASELINE = "window"

# Per size: the seg recipe's out_indices (mmseg's MAE / BEiT configs) and ViTDet's global blocks.
SEG_OUT_INDICES = {"tiny": (0, 1, 2, 3), "base": (3, 5, 7, 11), "large": (7, 11, 15, 23), "huge": (7, 15, 23, 31)}
DET_GLOBAL_BLOCKS = {"tiny": (1, 3), "base": (2, 5, 8, 11), "large": (5, 11, 17, 23), "huge": (7, 15, 23, 31)}
DROP_PATH_RATE = 0.1
MMSEG_INIT_VALUES = 1.0  # the mmseg MAE ADE20K recipe's layer-scale init

# Ours beside timm's model of the same attention (the reference rows).
TIMM_REFERENCES = {"ours_ape_bias": "timm_beit", "ours_ape": "timm_vit"}
TARGETS: tuple[Target, ...] = (
    # Each of our segmentation backbones no slower than mmseg's MAE backbone.
    *(Target(name, "time", 1.0, versus=SEG_BASELINE)
      for name, c in CONFIGS.items() if c.section == "seg" and not c.mmseg and not c.timm),
    # iRPE in detection mode: the continuous lookup at 1024^2 within 1.5x the decomposed bias.
    Target("window_irpe_cont", "time", 1.5, versus=DET_BASELINE),
    # No slower and no larger than timm's model of the same attention.
    *(Target(ours, metric, 1.0, versus=timm)
      for ours, timm in TIMM_REFERENCES.items() for metric in ("time", "memory")),
)
REFERENCE_CONFIG = {"size": "base", "seg_size": 512, "batch": 1, "device": "cpu"}
REFERENCE_MMSEG_S = {"fp32": 7.0, "bf16": 4.0}  # mmseg's ViT-B, 512^2, batch 1, 2-core development CPU


# ---------------------------------------------------------------------------------------------- worker
def build_timm_reference(args: argparse.Namespace, config: Config) -> Any:
    """timm's model of the same size and layout (drop path 0.1, no head), for the reference rows."""
    from timm.models.beit import Beit
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.vision_transformer_sam import VisionTransformerSAM

    from adpe.models.vit import SIZES

    dims = SIZES[args.size]
    common = {"patch_size": dims.patch_size, "embed_dim": dims.embed_dim, "depth": dims.depth,
              "num_heads": dims.num_heads, "num_classes": 0, "drop_path_rate": DROP_PATH_RATE}
    if config.timm == "sam":
        return VisionTransformerSAM(img_size=args.det_size, window_size=args.window_size, use_rel_pos=True,
                                    global_attn_indexes=DET_GLOBAL_BLOCKS[args.size], neck_chans=0, **common)
    if config.timm == "beit":
        return Beit(img_size=args.seg_size, use_abs_pos_emb=True, use_rel_pos_bias=True, **common)
    return VisionTransformer(img_size=args.seg_size, **common)


def build_model(args: argparse.Namespace, config: Config) -> Any:
    """The configuration's backbone (train mode, not yet on the device)."""
    from adpe.models.backbone import ViTBackbone
    from adpe.models.vit import SIZES

    if config.timm:
        model = build_timm_reference(args, config)
    elif config.section == "seg":
        side = args.seg_size
        out_indices = SEG_OUT_INDICES[args.size]
        if config.mmseg:
            from mmseg.models.backbones import MAE

            dims = SIZES[args.size]
            model = MAE(img_size=(side, side), patch_size=dims.patch_size, embed_dims=dims.embed_dim,
                        num_layers=dims.depth, num_heads=dims.num_heads, mlp_ratio=4,
                        init_values=MMSEG_INIT_VALUES, drop_path_rate=DROP_PATH_RATE, out_indices=list(out_indices))
            model.init_weights()
        else:
            model = ViTBackbone(args.size, img_size=(side, side), mode="seg", out_indices=out_indices,
                                drop_path_rate=DROP_PATH_RATE, **config.kwargs)
    else:
        side = args.det_size
        model = ViTBackbone(args.size, img_size=(side, side), mode="det",
                            window_size=args.window_size if config.windowed else 0,
                            global_blocks=DET_GLOBAL_BLOCKS[args.size] if config.windowed else (),
                            drop_path_rate=DROP_PATH_RATE, **{"rel_pos": "bias", **config.kwargs})
    model.train()  # drop path on, and use_checkpoint only acts while training (mmseg's train() returns None)
    return model


def run_worker(args: argparse.Namespace) -> Result:
    """Build one configuration, time its forward + backward in one dtype; the result goes to stdout as JSON."""
    import torch

    config = CONFIGS[args.config]
    device = measure.prepare_worker(args)
    model = build_model(args, config).to(device)
    side = args.seg_size if config.section == "seg" else args.det_size
    imgs = measure.random_inputs((args.batch, 3, side, side), args.seed, device)
    features = model.forward_features if config.timm else model
    forward = torch.compile(features) if args.compile else features

    def forward_backward(fn=forward) -> torch.Tensor:
        outputs = fn(imgs)
        outputs = [outputs] if isinstance(outputs, torch.Tensor) else outputs
        loss = sum(out.float().mean() for out in outputs)
        loss.backward()
        return loss.detach()

    def step() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        with measure.autocast(args.dtype, device):
            return forward_backward()

    times, loss = measure.time_steps(step, args.warmup, args.steps, device)
    result = {
        "config": config.name,
        "section": config.section,
        "dtype": args.dtype,
        "input": [args.batch, 3, side, side],
        **measure.timing_fields(times),
        "loss": float(loss) if loss is not None else None,
        **measure.peak_memory_fields(device),
        **measure.model_fields(model),
    }
    if args.count_flops:  # after the timing, so that the peak memory is the step's alone
        model.zero_grad(set_to_none=True)
        result["flop_per_step"] = measure.count_flops(partial(forward_backward, features))
    return result


# ---------------------------------------------------------------------------------------------- driver
def launch(args: argparse.Namespace, identity: Result, count_flops: bool) -> Result:
    """Run one (configuration, dtype) pair, ``identity``, in a worker subprocess; ``count_flops``: also count its
    FLOP (in fp32)."""
    options = ["--config", identity["config"], *cli.forwarded_options(
        args, ("size", "seg_size", "det_size", "window_size", "batch", *cli.RUN_OPTIONS))]
    return driver.launch_pair(__spec__.name, options, args, identity, count_flops)


def ratios(r: Result, base: Result | None) -> dict[str, float | None]:
    """Time, RSS and CUDA-memory ratios of result ``r`` to ``base`` (None where not measured)."""
    if base is None:
        return {"time_ratio": None, "rss_ratio": None, "cuda_ratio": None}
    return {"time_ratio": r["seconds_per_step"] / base["seconds_per_step"],
            "rss_ratio": r["peak_rss_gib"] / base["peak_rss_gib"],
            "cuda_ratio": (r["peak_cuda_gib"] / base["peak_cuda_gib"]
                           if r["peak_cuda_gib"] is not None and base["peak_cuda_gib"] else None)}


def fill_derived(results: list[Result], peaks: dict[str, dict[str, float]]) -> None:
    """Add FLOP figures, utilisation of ``peaks`` (per dtype), bf16 speed-ups, time / memory ratios to the
    section's baseline and to the timm reference (same dtype), in place."""
    by_key = timed_by_key(results, "config")
    flops = {r["config"]: r["flop_per_step"] for r in results if r.get("flop_per_step")}
    for (name, dtype), r in by_key.items():
        r["flop_per_step"] = flops.get(name)
        r.update(utilisation_fields(r, peaks[dtype]))
        r["bf16_speedup"] = bf16_speedup(by_key.get((name, "fp32")), dtype, r["seconds_per_step"])
        baseline = SEG_BASELINE if r["section"] == "seg" else DET_BASELINE
        r["baseline"] = baseline
        r.update(ratios(r, by_key.get((baseline, dtype)) if name != baseline else None))
        reference = by_key.get((TIMM_REFERENCES.get(name), dtype))
        r["to_reference"] = {"reference": TIMM_REFERENCES[name], **ratios(r, reference)} if reference else None


def print_table(results: list[Result], device: str, baseline: str) -> None:
    """One line per (configuration, dtype): FAILED or EMULATED with the reason, else its figures."""
    cuda = device == "cuda"
    memory = "CUDA" if cuda else "RSS"
    header = ["config", "description", "dtype", "s/step", "TFLOP/s", "of peak", "peak RSS GiB"]
    header += ["peak CUDA GiB"] if cuda else []
    header += ["bf16 x", f"time / {baseline}", f"{memory} mem / {baseline}", f"time, {memory} mem / timm"]
    rows = []
    for r in results:
        config = CONFIGS[r["config"]]
        if not timed(r):
            status, why = ("FAILED", r["error"]) if "error" in r else ("EMULATED", r["skipped"])
            rows.append([r["config"], config.description, r["dtype"], status] + [""] * (len(header) - 5)
                        + [why[:100]])
            continue
        is_base = r["config"] == baseline
        row = [r["config"], config.description, r["dtype"], f"{r['seconds_per_step']:.3f}",
               fmt(r["tflop_per_s"], ".2f"), utilisation_text(r), f"{r['peak_rss_gib']:.2f}"]
        row += [fmt(r["peak_cuda_gib"], ".2f")] if cuda else []
        ref = r["to_reference"]
        row += [fmt(r["bf16_speedup"], ".2f"),
                "(baseline)" if is_base else fmt(r["time_ratio"], ".3f"),
                "(baseline)" if is_base else fmt(r["cuda_ratio"] if cuda else r["rss_ratio"], ".3f"),
                "-" if ref is None else f"{fmt(ref['time_ratio'], '.3f')}, "
                f"{fmt(ref['cuda_ratio'] if cuda else ref['rss_ratio'], '.3f')} vs {ref['reference']}"]
        rows.append(row)
    print_aligned(header, rows, right=range(3, len(header) - 1))


def print_mmseg_reference(results: list[Result], args: argparse.Namespace) -> None:
    """mmseg's step time in this run beside the one measured on the development CPU (not a target)."""
    is_reference = driver.matches_reference(args, REFERENCE_CONFIG)
    measured = {r["dtype"]: r["seconds_per_step"] for r in results if r["config"] == SEG_BASELINE and timed(r)}
    reference = ", ".join(f"{d} about {s:.0f} s" for d, s in REFERENCE_MMSEG_S.items())
    here = ", ".join(f"{d} {s:.2f} s" for d, s in measured.items()) or "not run"
    note = "" if is_reference else " (this run is not that configuration)"
    print(f"  reference: mmseg MAE ViT-B 512^2 batch 1 on the 2-core CPU: {reference}; this run: {here}{note}")


def selected_configs(args: argparse.Namespace, section: str) -> list[str]:
    """The section's configurations, less the all-global ones with ``--skip-global``."""
    names = [n for n, c in CONFIGS.items() if c.section == section]
    if section == "det" and args.skip_global:
        names = [n for n in names if CONFIGS[n].windowed]
    return names


def run_all(args: argparse.Namespace) -> int:
    """Run every (configuration, dtype) pair, print the peak rates, a table per section and the targets; 1 when a
    worker failed."""
    import torch

    load = driver.warn_if_busy(args.device)
    sections = ["seg", "det"] if args.only is None else [args.only]
    rows = [(f"{section} {name}", {"config": name, "section": section})
            for section in sections for name in selected_configs(args, section)]
    results = driver.run_pairs(rows, args.dtypes, lambda identity, count: launch(args, identity, count))
    device_name, peaks = driver.measured_peaks(args)
    fill_derived(results, peaks)

    print(f"\nViT-{args.size}, batch {args.batch}{' (torch.compile)' if args.compile else ''}, forward + backward "
          f"(loss = sum of the outputs' means), train mode, "
          f"device {args.device} ({device_name}), {args.threads} threads, median of {args.steps} steps after "
          f"{args.warmup} warm-up, torch {torch.__version__}")
    if "seg" in sections:
        print(f"\n1. Segmentation, {args.seg_size}^2, out_indices {SEG_OUT_INDICES[args.size]} "
              f"(ratios: to mmseg's MAE backbone, same dtype)\n")
        print_table([r for r in results if r["section"] == "seg"], args.device, SEG_BASELINE)
    if "det" in sections:
        print(f"\n2. Detection, {args.det_size}^2, APE + decomposed rel-pos bias, window {args.window_size} with "
              f"global blocks {DET_GLOBAL_BLOCKS[args.size]} vs all global"
              f"{' (all global skipped)' if args.skip_global else ''} (ratios: to '{DET_BASELINE}', same dtype)\n")
        print_table([r for r in results if r["section"] == "det"], args.device, DET_BASELINE)
    checks = check(TARGETS, results, "config", args.device)
    print_checks("targets (same size, input and dtype)", checks,
                 none_checked="none checked: a baseline, a reference or ours missing from this run")
    if "seg" in sections:
        print_mmseg_reference(results, args)
    config_keys = ("size", "seg_size", "det_size", "window_size", "batch", "compile", "dtypes", "only", "skip_global",
                   "warmup", "steps", "threads", "seed", "device")
    driver.write_report(args, config_keys, device_name, load, results, checks)
    return exit_status(results)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``tools/benchmark_backbone.py`` (and of its workers)."""
    parser = cli.new_parser(__doc__ + "".join(f"    * {line}\n" for line in describe_all(TARGETS)))
    parser.add_argument("--size", default="base", choices=cli.MODEL_SIZES,
                        help="ViT size of ours and mmseg's (default base; tiny for a quick check)")
    parser.add_argument("--seg-size", type=int, default=512, help="segmentation input side (default 512)")
    parser.add_argument("--det-size", type=int, default=1024, help="detection input side (default 1024)")
    parser.add_argument("--window-size", type=int, default=14, help="detection window side (default 14)")
    parser.add_argument("--batch", type=int, default=1, help="images per step (default 1; 8 on a GPU for seg)")
    parser.add_argument("--compile", action="store_true", help="time the backbones under torch.compile")
    cli.add_dtypes_option(parser)
    parser.add_argument("--only", choices=["seg", "det"], help="run one section only (default: both)")
    parser.add_argument("--skip-global", action="store_true",
                        help="detection: leave out the all-global configurations (the heavy ones)")
    cli.add_run_options(parser, default_steps=2)
    parser.add_argument("--config", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)
    return cli.parse_checked(parser, argv,
                             positive=("steps", "threads", "seg_size", "det_size", "window_size", "batch"))


def main(argv: list[str] | None = None) -> int:
    """Drive the benchmark, or, with ``--worker``, time one pair."""
    return cli.dispatch(parse_args(argv), "config", run_worker, run_all)


if __name__ == "__main__":
    raise SystemExit(main())
