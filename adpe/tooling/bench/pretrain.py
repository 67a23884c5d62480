"""Benchmark one MAE+ / AdPE pretraining step per variant, in fp32 and bf16, side by side.

What it measures
    A full training step -- forward, loss, backward, AdamW step (the recipe's betas and weight decay, the
    adversary's ascent group from ``adpe.optim.pretrain_param_groups``) and the adversary's projection --
    on random inputs of ``--images`` images x ``--crops`` crops of 112^2 (default 8 x 4 = a batch of 32
    crops), for each variant below, in fp32 and under bf16 autocast (forward and loss; CPU or CUDA).
    Every (variant, dtype) pair runs in its own subprocess (this module re-invoked with ``--worker``), so
    its peak memory is its own: peak RSS (``getrusage``) on CPU, plus ``torch.cuda.max_memory_allocated``
    on GPU. Each worker builds the model from a fixed seed, runs ``--warmup`` steps, then times ``--steps``
    steps with ``time.perf_counter`` and reports the median seconds per step. FLOP per step is counted once
    per variant with ``torch.utils.flop_counter.FlopCounterMode`` over an fp32 forward + backward (matmuls,
    convolutions and attention; the optimiser's element-wise work is not counted); GFLOP/s = that count
    divided by the step time, for either dtype. Where the device only emulates bf16 (``adpe.device.native_bf16``:
    e.g. an x86 CPU without AVX-512, where a bf16 step takes about 100x the fp32 one), the bf16 rows are not run
    and read EMULATED: ``--amp`` trains in fp32 there.

    variant             model kwargs                                           baseline
    mae_plus_ape        {}                                                     -
    adpe_ape_embed      adversary='embedding'                                  mae_plus_ape
    adpe_ape_coord      adversary='coordinate'                                 mae_plus_ape
    mae_plus_rpe        position='rpe'                                         -
    adpe_rpe_embed      position='rpe', adversary='embedding'                  mae_plus_rpe
    mae_plus_rpe_cont   position='rpe', rpe_lookup='continuous'                mae_plus_rpe
    adpe_rpe_coord      position='rpe', rpe_lookup='continuous',               mae_plus_rpe and
                        adversary='coordinate'                                 mae_plus_rpe_cont

    The table gives, per variant and dtype: seconds per step, images/s (images, not crops), TFLOP per step,
    achieved GFLOP/s, peak memory, the bf16 speed-up over fp32 and the ratio of step time to the baseline's
    (same dtype; shown only when the baseline is among ``--variants``). Before the table, a small table gives the
    peak rates the utilisation column is measured against: the step's TFLOP/s as a share of the card's dense
    datasheet rate ('sheet', the CUDA cards of ``adpe.tooling.bench.peaks.DATASHEET_TFLOPS`` only) and of the best
    square matmul measured on this machine in the same dtype ('matmul').

How to run it
    .venv/bin/python tools/benchmark_pretrain.py                  # ViT-B, all variants
    .venv/bin/python tools/benchmark_pretrain.py --json bench.json --threads 2
    .venv/bin/python tools/benchmark_pretrain.py --variants mae_plus_rpe adpe_rpe_coord
    .venv/bin/python tools/benchmark_pretrain.py --size tiny --images 2 --steps 1  # smoke test
    .venv/bin/python tools/benchmark_pretrain.py --images 128 --dtypes bf16 --steps 15   # GPU
    .venv/bin/python tools/benchmark_pretrain.py --images 128 --dtypes bf16 --compile \\
        --variants mae_plus_ape                                           # the same step under torch.compile

    On a machine with CUDA the steps run on the GPU (``--device cpu`` forces the CPU). ViT-B on a 2-core
    CPU takes several minutes per (variant, dtype) pair: about an hour for the whole table. Run it on an
    otherwise idle machine: with other load on the cores, the worker's threads stall at each other's
    barriers and step times become erratic (the script warns when the load average is already high).

Targets, checked at the end of the table (``TARGETS``; the GPU ones are set for --images 128)
    The reference configuration is ViT-B, 8 images x 4 crops x 112^2 on the 2-core CPU, where the paper's
    released code takes about 5.8 s per step for MAE+ APE (about 180 GFLOP/s) and about 6.0 s for its RPE
    variants.
"""

from __future__ import annotations

import argparse

from adpe.tooling.bench import cli, driver, measure
from adpe.tooling.bench.peaks import utilisation_fields, utilisation_text
from adpe.tooling.bench.results import Result, bf16_speedup, exit_status, timed, timed_by_key
from adpe.tooling.bench.table import fmt, print_aligned, print_checks
from adpe.tooling.bench.targets import Target, check, describe_all

VARIANTS: dict[str, dict[str, str]] = {
    "mae_plus_ape": {},
    "adpe_ape_embed": {"adversary": "embedding"},
    "adpe_ape_coord": {"adversary": "coordinate"},
    "mae_plus_rpe": {"position": "rpe"},
    "adpe_rpe_embed": {"position": "rpe", "adversary": "embedding"},
    "mae_plus_rpe_cont": {"position": "rpe", "rpe_lookup": "continuous"},
    "adpe_rpe_coord": {"position": "rpe", "rpe_lookup": "continuous", "adversary": "coordinate"},
}
BASELINES: dict[str, tuple[str, ...]] = {
    "mae_plus_ape": (),
    "adpe_ape_embed": ("mae_plus_ape",),
    "adpe_ape_coord": ("mae_plus_ape",),
    "mae_plus_rpe": (),
    "adpe_rpe_embed": ("mae_plus_rpe",),
    "mae_plus_rpe_cont": ("mae_plus_rpe",),
    "adpe_rpe_coord": ("mae_plus_rpe", "mae_plus_rpe_cont"),
}
REFERENCE_CONFIG = {"size": "base", "images": 8, "crops": 4, "img_size": 112, "device": "cpu"}


def _rpe_coord_time(limit: float, device: str) -> tuple[Target, ...]:
    """RPE coordinate mode's time against both of its baselines, on ``device``."""
    return tuple(Target("adpe_rpe_coord", "time", limit, versus=base, device=device)
                 for base in BASELINES["adpe_rpe_coord"])


TARGETS: tuple[Target, ...] = (
    # No slower than the released code at the reference configuration.
    Target("mae_plus_ape", "time", 5.8, dtype="fp32", reference_only=True, source="released code"),
    Target("mae_plus_rpe", "time", 6.0, dtype="fp32", reference_only=True, source="released code"),
    Target("mae_plus_rpe_cont", "time", 6.0, dtype="fp32", reference_only=True, source="released code"),
    *(Target(variant, "bf16_speedup", 2.0, dtype="bf16") for variant in VARIANTS),
    # The adversary costs little over its baseline; RPE coordinate mode (continuous lookup of moved coordinates)
    # more, with its own limits on a CPU and on a GPU.
    *(Target(variant, "time", 1.05, versus=BASELINES[variant][0])
      for variant in ("adpe_ape_embed", "adpe_ape_coord", "adpe_rpe_embed")),
    *_rpe_coord_time(1.15, "cpu"),
    *_rpe_coord_time(1.25, "cuda"),
    Target("adpe_rpe_coord", "memory", 1.20, versus="mae_plus_rpe", device="cuda"),
    Target("mae_plus_ape", "datasheet_share", 0.45, dtype="bf16", device="cuda"),
)

# The recipe's optimiser (pretrain/_base_/pretrain_runtime.py); the lr does not change the step's cost.
LR = 1.5e-4 * 4096 / 256
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.05


# ---------------------------------------------------------------------------------------------- worker
def run_worker(args: argparse.Namespace) -> Result:
    """Build one variant, time its training step in one dtype; the result goes to stdout as JSON."""
    import torch

    from adpe.models.mae import MaskedAutoencoder
    from adpe.models.vit import compile_blocks
    from adpe.optim import pretrain_param_groups

    device = measure.prepare_worker(args)
    model = MaskedAutoencoder(args.size, img_size=args.img_size, **VARIANTS[args.variant]).to(device)
    model.train()
    groups = pretrain_param_groups(model, lr=LR, weight_decay=WEIGHT_DECAY, adv_lr=LR)
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, fused=True)  # as the configs
    imgs = measure.random_inputs((args.images * args.crops, 3, args.img_size, args.img_size), args.seed, device)

    flop_per_step = None
    if args.count_flops and args.compile:  # count on the eager blocks, then compile them as the configs' switch does
        flop_per_step = measure.count_flops(lambda: model(imgs)["loss"].backward())
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
    if args.compile:
        compile_blocks([*model.blocks, *model.decoder_blocks], True, on_cpu=True)

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with measure.autocast(args.dtype, device):
            loss = model(imgs)["loss"]
        loss.backward()
        optimizer.step()
        if model.adversary is not None:
            model.adversary.project_()
        return loss.detach()

    times, loss = measure.time_steps(step, args.warmup, args.steps, device)
    # Peak memory before the FLOP count, so that it is the training step's alone.
    result: Result = {
        "variant": args.variant,
        "dtype": args.dtype,
        **measure.timing_fields(times),
        "final_loss": float(loss) if loss is not None else None,
        **measure.peak_memory_fields(device),
        **measure.model_fields(model),
    }
    if args.count_flops:
        optimizer.zero_grad(set_to_none=True)
        result["flop_per_step"] = flop_per_step or measure.count_flops(lambda: model(imgs)["loss"].backward())
    return result


# ---------------------------------------------------------------------------------------------- driver
def launch(args: argparse.Namespace, identity: Result, count_flops: bool) -> Result:
    """Run one (variant, dtype) pair, ``identity``, in a worker subprocess; ``count_flops``: also count its FLOP."""
    options = ["--variant", identity["variant"],
               *cli.forwarded_options(args, ("size", "images", "crops", "img_size", *cli.RUN_OPTIONS))]
    return driver.launch_pair(__spec__.name, options, args, identity, count_flops)


def fill_derived(results: list[Result], images: int, peaks: dict[str, dict[str, float]]) -> None:
    """Add images/s, FLOP figures, utilisation of ``peaks`` (per dtype), bf16 speed-ups and baseline ratios to the
    results in place."""
    by_key = timed_by_key(results, "variant")
    flops = {r["variant"]: r["flop_per_step"] for r in results if r.get("flop_per_step")}
    for (variant, dtype), r in by_key.items():
        seconds = r["seconds_per_step"]
        r["images_per_s"] = images / seconds
        r["flop_per_step"] = flops.get(variant)
        r["tflop_per_step"] = flops[variant] / 1e12 if variant in flops else None
        r["gflop_per_s"] = flops[variant] / seconds / 1e9 if variant in flops else None
        r.update(utilisation_fields(r, peaks[dtype]))
        r["bf16_speedup"] = bf16_speedup(by_key.get((variant, "fp32")), dtype, seconds)
        r["ratio_to_baseline"] = {
            base: seconds / by_key[(base, dtype)]["seconds_per_step"]
            for base in BASELINES[variant] if (base, dtype) in by_key
        }
        r["cuda_memory_ratio_to_baseline"] = {
            base: r["peak_cuda_gib"] / by_key[(base, dtype)]["peak_cuda_gib"]
            for base in BASELINES[variant] if (base, dtype) in by_key and r["peak_cuda_gib"]
        }


def print_table(results: list[Result], device: str) -> None:
    """One line per (variant, dtype): FAILED or EMULATED with the reason, else its figures."""
    memory = "peak GiB (CUDA)" if device == "cuda" else "peak GiB (RSS)"
    header = ["variant", "dtype", "s/step", "images/s", "TFLOP/step", "GFLOP/s", "of peak", memory, "bf16 x",
              "ratio to baseline (same dtype)"]
    rows = []
    for r in results:
        if not timed(r):
            status, why = ("FAILED", r["error"]) if "error" in r else ("EMULATED", r["skipped"])
            rows.append([r["variant"], r["dtype"], status, "", "", "", "", "", "", why[:100]])
            continue
        mem = r["peak_cuda_gib"] if device == "cuda" else r["peak_rss_gib"]
        ratios = ", ".join(f"{v:.3f} vs {k}" for k, v in r["ratio_to_baseline"].items())
        rows.append([
            r["variant"], r["dtype"], f"{r['seconds_per_step']:.3f}", f"{r['images_per_s']:.2f}",
            fmt(r["tflop_per_step"], ".4g"), fmt(r["gflop_per_s"], ".1f"), utilisation_text(r), f"{mem:.2f}",
            fmt(r["bf16_speedup"], ".2f"), ratios or ("(baseline)" if not BASELINES[r["variant"]] else "-"),
        ])
    print_aligned(header, rows, right={2, 3, 4, 5, 6, 7, 8})


def run_all(args: argparse.Namespace) -> int:
    """Run every (variant, dtype) pair, print the peak rates, the table and the targets; 1 when a worker failed."""
    load = driver.warn_if_busy(args.device)
    results = driver.run_pairs([(v, {"variant": v}) for v in args.variants], args.dtypes,
                               lambda identity, count: launch(args, identity, count))
    import torch

    device_name, peaks = driver.measured_peaks(args)
    fill_derived(results, args.images, peaks)
    print(f"\nViT-{args.size}, {args.images} images x {args.crops} crops x {args.img_size}^2 "
          f"(batch {args.images * args.crops}), device {args.device} ({device_name}), "
          f"{args.threads} threads, median of {args.steps} steps after {args.warmup} warm-up, "
          f"torch {torch.__version__}\n")
    print_table(results, args.device)
    is_reference = driver.matches_reference(args, REFERENCE_CONFIG)
    checks = check(TARGETS, results, "variant", args.device, reference=is_reference)
    note = "" if is_reference else " (not the reference configuration: absolute times not checked)"
    print_checks(f"targets{note}", checks)
    config_keys = ("size", "images", "crops", "img_size", "compile", "warmup", "steps", "threads", "seed", "device",
                   "variants", "dtypes")
    driver.write_report(args, config_keys, device_name, load, results, checks)
    return exit_status(results)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``tools/benchmark_pretrain.py`` (and of its workers)."""
    parser = cli.new_parser(__doc__ + "".join(f"    * {line}\n" for line in describe_all(TARGETS)))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        metavar="VARIANT", help=f"which variants (default: all): {', '.join(VARIANTS)}")
    cli.add_dtypes_option(parser)
    parser.add_argument("--size", default="base", choices=cli.MODEL_SIZES, help="model size (default base)")
    parser.add_argument("--images", type=int, default=8, help="images per step (default 8)")
    parser.add_argument("--crops", type=int, default=4, help="crops per image (default 4)")
    parser.add_argument("--img-size", type=int, default=112, help="crop side (default 112)")
    parser.add_argument("--compile", action="store_true",
                        help="time the step with compiled blocks, as the configs' compile=True does, on any device "
                             "(the warm-up steps compile them)")
    cli.add_run_options(parser, default_steps=3)
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)
    args = cli.parse_checked(parser, argv, positive=("images", "crops", "steps", "threads"))
    args.variants = list(dict.fromkeys(args.variants))
    return args


def main(argv: list[str] | None = None) -> int:
    """Drive the benchmark, or, with ``--worker``, time one pair."""
    return cli.dispatch(parse_args(argv), "variant", run_worker, run_all)


if __name__ == "__main__":
    raise SystemExit(main())
