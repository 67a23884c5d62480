"""Benchmark one MAE+ / AdPE pretraining step per variant, in fp32 and bf16, side by side.

What it measures
    A full training step -- forward, loss, backward, AdamW step (the recipe's betas and weight decay, the
    adversary's ascent group from ``adpe.optim.pretrain_param_groups``) and the adversary's projection --
    on random inputs of ``--images`` images x ``--crops`` crops of 112^2 (default 8 x 4 = a batch of 32
    crops), for each variant below, in fp32 and under bf16 autocast (forward and loss; CPU or CUDA).
    Every (variant, dtype) pair runs in its own subprocess (this script re-invoked with ``--worker``), so
    its peak memory is its own: peak RSS (``getrusage``) on CPU, plus ``torch.cuda.max_memory_allocated``
    on GPU. Each worker builds the model from a fixed seed, runs ``--warmup`` steps, then times ``--steps``
    steps with ``time.perf_counter`` and reports the median seconds per step. FLOP per step is counted once
    per variant with ``torch.utils.flop_counter.FlopCounterMode`` over an fp32 forward + backward (matmuls,
    convolutions and attention; the optimiser's element-wise work is not counted); GFLOP/s = that count
    divided by the step time, for either dtype.

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
    (same dtype; shown only when the baseline is among ``--variants``).

How to run it
    PYTHONPATH=. .venv/bin/python tools/benchmark_pretrain.py                  # ViT-B, all variants
    PYTHONPATH=. .venv/bin/python tools/benchmark_pretrain.py --json bench.json --threads 2
    PYTHONPATH=. .venv/bin/python tools/benchmark_pretrain.py --variants mae_plus_rpe adpe_rpe_coord
    PYTHONPATH=. .venv/bin/python tools/benchmark_pretrain.py --size tiny --images 2 --steps 1  # smoke test

    On a machine with CUDA the steps run on the GPU (``--device cpu`` forces the CPU). ViT-B on a 2-core
    CPU takes several minutes per (variant, dtype) pair: about an hour for the whole table. Run it on an
    otherwise idle machine: with other load on the cores, the worker's threads stall at each other's
    barriers and step times become erratic (the script warns when the load average is already high).

Reference figures (ViT-B, 8 images x 4 crops x 112^2, fp32, 2-core CPU)
    The paper's released code: about 5.8 s per step for MAE+ APE (about 180 GFLOP/s) and about 6.0 s for
    its RPE variants. Targets for this implementation, checked at the end of the table when the run uses
    the reference configuration (the ratio targets are checked for any configuration):
      * fp32: no slower than the released code (mae_plus_ape <= 5.8 s, the RPE baselines <= 6.0 s);
      * bf16: at least 2x faster than our fp32, for every variant;
      * each adversarial variant within 5% of its baseline; RPE coordinate (adpe_rpe_coord) within 15%.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
DTYPES = ("fp32", "bf16")

# Targets (see the docstring); the absolute ones hold for the reference configuration only.
REFERENCE_CONFIG = {"size": "base", "images": 8, "crops": 4, "img_size": 112, "device": "cpu"}
REFERENCE_FP32_S = {"mae_plus_ape": 5.8, "mae_plus_rpe": 6.0, "mae_plus_rpe_cont": 6.0}
MIN_BF16_SPEEDUP = 2.0
MAX_RATIO = {"adpe_rpe_coord": 1.15}  # every other adversarial variant: DEFAULT_MAX_RATIO
DEFAULT_MAX_RATIO = 1.05

# The recipe's optimiser (pretrain/_base_/pretrain_runtime.py); the lr does not change the step's cost.
LR = 1.5e-4 * 4096 / 256
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.05

RESULT_PREFIX = "@@BENCH_RESULT@@ "
GIB = 1024**3


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------- FLOP count
def _attention_flop(q: Any, k: Any, v: Any) -> int:
    """Two batched matmuls, q @ k^T and p @ v: 2 FLOP per multiply-add. Shapes (B, H, S, D)."""
    b, h, s_q, d_q = q
    s_k, d_v = k[-2], v[-1]
    return 2 * b * h * s_q * s_k * (d_q + d_v)


def _cpu_attention_flop(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return _attention_flop(query, key, value)


def _cpu_attention_backward_flop(
    grad: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any
) -> int:
    return 2 * _attention_flop(query, key, value)  # dq, dk, dv and dp: four matmuls


def count_flops(model: Any, imgs: Any) -> int:
    """FLOP of one fp32 forward + backward (gradients are left on the parameters)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    # FlopCounterMode counts the CUDA attention kernels but not the fused CPU one that SDPA picks on CPU.
    custom: dict[Any, Callable[..., int]] = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_attention_flop
        custom[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_attention_backward_flop
    counter = FlopCounterMode(display=False, custom_mapping=custom)
    with counter:
        model(imgs)["loss"].backward()
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------- worker
def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Build one variant, time its training step in one dtype; the result goes to stdout as JSON."""
    import torch

    from adpe.mae import MaskedAutoencoder
    from adpe.optim import pretrain_param_groups

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = MaskedAutoencoder(args.size, img_size=args.img_size, **VARIANTS[args.variant]).to(device)
    model.train()
    groups = pretrain_param_groups(model, lr=LR, weight_decay=WEIGHT_DECAY, adv_lr=LR)
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    shape = (args.images * args.crops, 3, args.img_size, args.img_size)
    imgs = torch.randn(shape, generator=generator).to(device)

    def autocast() -> Any:
        if args.dtype == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return nullcontext()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = model(imgs)["loss"]
        loss.backward()
        optimizer.step()
        if model.adversary is not None:
            model.adversary.project_()
        return loss.detach()

    for _ in range(args.warmup):
        step()
    sync()
    times = []
    loss = None
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - start)

    # Peak memory before the FLOP count, so that it is the training step's alone.
    rss_unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    result: dict[str, Any] = {
        "variant": args.variant,
        "dtype": args.dtype,
        "step_times_s": times,
        "seconds_per_step": statistics.median(times),
        "final_loss": float(loss) if loss is not None else None,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * rss_unit / GIB,
        "peak_cuda_gib": torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
    }
    if args.count_flops:
        optimizer.zero_grad(set_to_none=True)
        result["flop_per_step"] = count_flops(model, imgs)
    return result


# ---------------------------------------------------------------------------------------------- driver
def worker_command(args: argparse.Namespace, variant: str, dtype: str, count: bool) -> list[str]:
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker",
        "--variant", variant, "--dtype", dtype,
        "--size", args.size, "--images", str(args.images), "--crops", str(args.crops),
        "--img-size", str(args.img_size), "--warmup", str(args.warmup), "--steps", str(args.steps),
        "--threads", str(args.threads), "--seed", str(args.seed), "--device", args.device,
    ]
    return cmd + (["--count-flops"] if count else [])


def launch(args: argparse.Namespace, variant: str, dtype: str, count: bool) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    if args.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", str(args.threads))
    cmd = worker_command(args, variant, dtype, count)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout or "(no output)").strip().splitlines()
        return {"variant": variant, "dtype": dtype, "error": f"exit {proc.returncode}: {tail[-1]}",
                "stderr_tail": tail[-30:]}
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def fill_derived(results: list[dict[str, Any]], images: int) -> None:
    """Add images/s, FLOP figures, bf16 speed-ups and baseline ratios to the results in place."""
    by_key = {(r["variant"], r["dtype"]): r for r in results if "error" not in r}
    flops = {r["variant"]: r["flop_per_step"] for r in results if r.get("flop_per_step")}
    for (variant, dtype), r in by_key.items():
        seconds = r["seconds_per_step"]
        r["images_per_s"] = images / seconds
        r["flop_per_step"] = flops.get(variant)
        r["tflop_per_step"] = flops[variant] / 1e12 if variant in flops else None
        r["gflop_per_s"] = flops[variant] / seconds / 1e9 if variant in flops else None
        fp32 = by_key.get((variant, "fp32"))
        r["bf16_speedup"] = fp32["seconds_per_step"] / seconds if dtype == "bf16" and fp32 else None
        r["ratio_to_baseline"] = {
            base: seconds / by_key[(base, dtype)]["seconds_per_step"]
            for base in BASELINES[variant] if (base, dtype) in by_key
        }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[dict[str, Any]], device: str) -> None:
    memory = "peak GiB (CUDA)" if device == "cuda" else "peak GiB (RSS)"
    header = ["variant", "dtype", "s/step", "images/s", "TFLOP/step", "GFLOP/s", memory, "bf16 x",
              "ratio to baseline (same dtype)"]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["variant"], r["dtype"], "FAILED", "", "", "", "", "", r["error"][:100]])
            continue
        mem = r["peak_cuda_gib"] if device == "cuda" else r["peak_rss_gib"]
        ratios = ", ".join(f"{v:.3f} vs {k}" for k, v in r["ratio_to_baseline"].items())
        rows.append([
            r["variant"], r["dtype"], f"{r['seconds_per_step']:.3f}", f"{r['images_per_s']:.2f}",
            _fmt(r["tflop_per_step"], ".4g"), _fmt(r["gflop_per_s"], ".1f"), f"{mem:.2f}",
            _fmt(r["bf16_speedup"], ".2f"), ratios or ("(baseline)" if not BASELINES[r["variant"]] else "-"),
        ])
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    right = {2, 3, 4, 5, 6, 7}
    for n, row in enumerate([header, *rows]):
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def check_targets(results: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The docstring's targets that this run can check: [{'target', 'value', 'ok'}]."""
    checks: list[dict[str, Any]] = []
    is_reference = all(getattr(args, k) == v for k, v in REFERENCE_CONFIG.items())
    for r in results:
        if "error" in r:
            continue
        variant, dtype = r["variant"], r["dtype"]
        if is_reference and dtype == "fp32" and variant in REFERENCE_FP32_S:
            limit = REFERENCE_FP32_S[variant]
            checks.append({"target": f"{variant} fp32 <= {limit} s/step (released code)",
                           "value": r["seconds_per_step"], "ok": r["seconds_per_step"] <= limit})
        if r["bf16_speedup"] is not None:
            checks.append({"target": f"{variant} bf16 >= {MIN_BF16_SPEEDUP}x faster than fp32",
                           "value": r["bf16_speedup"], "ok": r["bf16_speedup"] >= MIN_BF16_SPEEDUP})
        if "adversary" in VARIANTS[variant]:
            limit = MAX_RATIO.get(variant, DEFAULT_MAX_RATIO)
            for base, ratio in r["ratio_to_baseline"].items():
                checks.append({"target": f"{variant} {dtype} <= {limit:.2f}x {base}",
                               "value": ratio, "ok": ratio <= limit})
    return checks


def print_checks(checks: list[dict[str, Any]], args: argparse.Namespace) -> None:
    if not checks:
        return
    is_reference = all(getattr(args, k) == v for k, v in REFERENCE_CONFIG.items())
    note = "" if is_reference else " (not the reference configuration: absolute times not checked)"
    print(f"\ntargets{note}:")
    for c in checks:
        print(f"  [{'ok' if c['ok'] else 'MISS'}] {c['target']}: {c['value']:.3f}")


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def run_all(args: argparse.Namespace) -> int:
    load = load_average()
    if args.device == "cpu" and load is not None and load > 0.5:
        print(f"[bench] warning: 1-minute load average is {load:.1f} before the run; CPU timings will be "
              "noisy unless the machine is otherwise idle", file=sys.stderr, flush=True)
    results: list[dict[str, Any]] = []
    for variant in args.variants:
        for n, dtype in enumerate(args.dtypes):
            print(f"[bench] {variant} {dtype} ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            result = launch(args, variant, dtype, count=n == 0)
            status = result.get("error") or f"{result['seconds_per_step']:.3f} s/step"
            wall = time.perf_counter() - started
            print(f"[bench]   {status} ({wall:.0f} s wall)", file=sys.stderr, flush=True)
            results.append(result)
    fill_derived(results, args.images)

    import torch

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    print(f"\nViT-{args.size}, {args.images} images x {args.crops} crops x {args.img_size}^2 "
          f"(batch {args.images * args.crops}), device {args.device} ({device_name}), "
          f"{args.threads} threads, median of {args.steps} steps after {args.warmup} warm-up, "
          f"torch {torch.__version__}\n")
    print_table(results, args.device)
    checks = check_targets(results, args)
    print_checks(checks, args)
    if args.json:
        report = {
            "config": {k: getattr(args, k) for k in (
                "size", "images", "crops", "img_size", "warmup", "steps", "threads", "seed", "device",
                "variants", "dtypes")},
            "environment": {"torch": torch.__version__, "python": platform.python_version(),
                            "machine": platform.machine(), "device_name": device_name,
                            "cpu_count": os.cpu_count(), "load_average_before": load},
            "results": results,
            "targets": checks,
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nwrote {args.json}")
    return 1 if any("error" in r for r in results) else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        metavar="VARIANT", help=f"which variants (default: all): {', '.join(VARIANTS)}")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES),
                        help="fp32 and/or bf16 autocast (default: both)")
    parser.add_argument("--size", default="base", choices=["tiny", "base", "large", "huge"],
                        help="model size (default base)")
    parser.add_argument("--images", type=int, default=8, help="images per step (default 8)")
    parser.add_argument("--crops", type=int, default=4, help="crops per image (default 4)")
    parser.add_argument("--img-size", type=int, default=112, help="crop side (default 112)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--steps", type=int, default=3,
                        help="timed steps; the median is reported (default 3)")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="torch.set_num_threads on CPU (default: all cores available)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: cuda when available, else cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", help="also write every figure to this JSON file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=DTYPES, help=argparse.SUPPRESS)
    parser.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.images, args.crops, args.steps, args.threads) < 1 or args.warmup < 0:
        parser.error("--images, --crops, --steps and --threads must be >= 1, --warmup >= 0")
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.variants = list(dict.fromkeys(args.variants))
    args.dtypes = [d for d in DTYPES if d in args.dtypes]  # fp32 first: it carries the FLOP count
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        if args.variant is None or args.dtype is None:
            raise SystemExit("--worker needs --variant and --dtype")
        print(RESULT_PREFIX + json.dumps(run_worker(args)), flush=True)
        return 0
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
