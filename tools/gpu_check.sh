#!/usr/bin/env bash
# One call on a GPU node with the suite installed (`make setup`): every GPU check, then one table.
#
#   tools/gpu_check.sh [--skip-mm] [--quick] [--only STEP,...] [--python PY] [--out DIR] [--dry-run]
#
#   --skip-mm     leave out the steps that need mmcv's CUDA ops and the OpenMMLab stack (env, demo-data,
#                 pretrain-amp, upernet-amp, maskrcnn-amp): the speed checks alone need only torch and timm, so
#                 they also run with a Python that has no `make setup` behind it (--python python3)
#   --quick       fewer timed steps (pretrain-bench 5 instead of 15): a smoke test of the script, not figures
#   --only STEPS  run these steps only (comma-separated names, see --dry-run)
#   --python PY   the interpreter (default .venv/bin/python; the checkout is put on PYTHONPATH either way)
#   --out DIR     where the logs, the benchmarks' JSON and summary.txt go (default work_dirs/gpu_check)
#   --step-timeout S   seconds after which a step is stopped and failed (default 420)
#   --dry-run     list the steps and their commands; run nothing
#   --rehearse    run on a machine without CUDA, with tiny models and batches: a CPU rehearsal of the
#                 script itself (its figures mean nothing)
#
# Exit status: 0 every step passed and every target was met; 1 a step failed; 2 usage; 3 no CUDA device visible
# to torch (nothing was run); 4 every step ran but some performance targets were missed ([MISS] rows).
# Budget: about 7 minutes on one H100 / H200 with mmcv already built (the benchmarks take most of it); building
# mmcv with CUDA ops (`make setup` on the node) takes about 6.5 minutes more with MAX_JOBS=12.
set -uo pipefail
shopt -s extglob

cd "$(dirname "$0")/.."
ROOT=$PWD
PY=.venv/bin/python
OUT=work_dirs/gpu_check
SKIP_MM=0 QUICK=0 DRY=0 REHEARSE=0 ONLY="" STEP_TIMEOUT=420 PY_GIVEN=0

usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
    case "$1" in
        --skip-mm) SKIP_MM=1 ;;
        --quick) QUICK=1 ;;
        --dry-run) DRY=1 ;;
        --rehearse) REHEARSE=1 ;;
        --only) ONLY=${2:?--only needs step names}; shift ;;
        --python) PY=${2:?--python needs an interpreter}; PY_GIVEN=1; shift ;;
        --out) OUT=${2:?--out needs a folder}; shift ;;
        --step-timeout) STEP_TIMEOUT=${2:?--step-timeout needs seconds}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

# ------------------------------------------------------------------------------------------------ the steps
STEPS=(env pretrain-bench seg-bench det-bench data-bench demo-data pretrain-amp upernet-amp maskrcnn-amp)
MM_STEPS=" env demo-data pretrain-amp upernet-amp maskrcnn-amp "
declare -A WHAT=(
    [env]="make env: the stack imports; mmcv's nms and roi_align run on cpu and cuda"
    [pretrain-bench]="tools/benchmark_pretrain.py: ViT-B, 128 images x 4 crops, bf16 (MAE+ APE >= 45% of peak; RPE coord <= 1.25x MAE+ RPE time, <= 1.20x memory)"
    [seg-bench]="tools/benchmark_backbone.py --only seg: 512^2, batch 8, bf16 (ours 'bias' <= timm Beit in time and memory)"
    [det-bench]="tools/benchmark_backbone.py --only det: 1024^2, batch 2, bf16 (det 'irpe' <= 1.5x det 'bias')"
    [data-bench]="tools/benchmark_data.py --device cuda (device decoding >= the pretraining step's image rate)"
    [demo-data]="tools/make_demo_data.py: the demo ImageNet, ADE20K and COCO folders for the training steps"
    [pretrain-amp]="tools/train.py --amp: tiny AdPE RPE-coordinate pretraining, 1 epoch, then --resume to 2"
    [upernet-amp]="tools/train.py --amp: tiny UperNet on the demo ADE20K, 40 iterations and a validation"
    [maskrcnn-amp]="tools/train.py --amp: tiny Mask R-CNN on the demo COCO, 30 iterations and a validation"
)
for name in ${ONLY//,/ }; do
    [[ " ${STEPS[*]} " == *" $name "* ]] || { echo "gpu_check: --only: no step '$name' (steps: ${STEPS[*]})" >&2; exit 2; }
done
selected() {  # step -> 0 when it runs
    [[ -z "$ONLY" || ",$ONLY," == *",$1,"* ]] || return 1
    [[ $SKIP_MM == 1 && "$MM_STEPS" == *" $1 "* ]] && return 1
    return 0
}

# Sizes: the GPU batch sizes the targets are set for; --rehearse shrinks them for a CPU.
if ((REHEARSE)); then
    PRETRAIN_ARGS=(--size tiny --images 2 --crops 2 --dtypes fp32 --steps 1 --warmup 0 --variants mae_plus_rpe_cont adpe_rpe_coord)
    SEG_ARGS=(--size tiny --seg-size 64 --batch 1 --dtypes fp32 --steps 1 --warmup 0)
    DET_ARGS=(--size tiny --det-size 128 --window-size 4 --batch 1 --dtypes fp32 --steps 1 --warmup 0 --skip-global)
    DATA_ARGS=(--device cpu --generate 16 --batch 4 --batches 1 --workers 1)
    DEMO_ARGS=(--scale tiny)
    TRAIN_DEVICE_OPTS=(train_dataloader.num_workers=0 train_dataloader.persistent_workers=False
                       val_dataloader.num_workers=0 val_dataloader.persistent_workers=False train_dataloader.batch_size=2)
    PRETRAIN_EPOCHS=(1 2) SEG_ITERS=4 DET_ITERS=4
else
    PRETRAIN_ARGS=(--images 128 --dtypes bf16 --steps "$( ((QUICK)) && echo 5 || echo 15)")
    SEG_ARGS=(--dtypes bf16 --batch 8)
    DET_ARGS=(--dtypes bf16 --batch 2)
    DATA_ARGS=(--device cuda)
    DEMO_ARGS=()
    TRAIN_DEVICE_OPTS=()
    PRETRAIN_EPOCHS=(1 2) SEG_ITERS=40 DET_ITERS=30
fi
DATA="$OUT/data"
step_command() {  # step -> the command line(s), as shown by --dry-run and run by run_step
    case "$1" in
        env) if ((PY_GIVEN)) || ! command -v make >/dev/null; then echo "$PY -m adpe.tooling.env"; else echo "make env"; fi ;;
        pretrain-bench) echo "$PY tools/benchmark_pretrain.py ${PRETRAIN_ARGS[*]} --json $OUT/pretrain.json" ;;
        seg-bench) echo "$PY tools/benchmark_backbone.py --only seg ${SEG_ARGS[*]} --json $OUT/seg.json" ;;
        det-bench) echo "$PY tools/benchmark_backbone.py --only det ${DET_ARGS[*]} --json $OUT/det.json" ;;
        data-bench) echo "$PY tools/benchmark_data.py ${DATA_ARGS[*]}" ;;
        demo-data) echo "$PY tools/make_demo_data.py --root $DATA ${DEMO_ARGS[*]}" ;;
        pretrain-amp)
            local opts="train_dataloader.dataset.data_root=$DATA/imagenet default_hooks.checkpoint.interval=1 ${TRAIN_DEVICE_OPTS[*]//val_dataloader.*([^ ])/}"
            echo "$PY tools/train.py pretrain/demo/adpe_vit_tiny_rpe_coord.py --amp --work-dir $OUT/pretrain_amp --cfg-options $opts train_cfg.max_epochs=${PRETRAIN_EPOCHS[0]}"
            echo "$PY tools/train.py pretrain/demo/adpe_vit_tiny_rpe_coord.py --amp --resume --work-dir $OUT/pretrain_amp --cfg-options $opts train_cfg.max_epochs=${PRETRAIN_EPOCHS[1]}" ;;
        upernet-amp)
            local roots="" k
            for k in train_dataloader val_dataloader test_dataloader; do roots+="$k.dataset.data_root=$DATA/ade20k "; done
            echo "$PY tools/train.py benchmarks/ade20k/upernet_adpe_vit_tiny_demo.py --amp --work-dir $OUT/upernet_amp --cfg-options ${roots}train_cfg.max_iters=$SEG_ITERS train_cfg.val_interval=$SEG_ITERS ${TRAIN_DEVICE_OPTS[*]}" ;;
        maskrcnn-amp)
            local roots="" k ann="$DATA/coco/annotations/instances_val2017.json"
            for k in train_dataloader val_dataloader test_dataloader; do roots+="$k.dataset.data_root=$DATA/coco/ "; done
            echo "$PY tools/train.py benchmarks/coco/mask_rcnn_adpe_vit_tiny_demo.py --amp --work-dir $OUT/maskrcnn_amp --cfg-options ${roots}val_evaluator.ann_file=$ann test_evaluator.ann_file=$ann model.test_cfg.rcnn.score_thr=0.0 train_cfg.max_iters=$DET_ITERS train_cfg.val_interval=$DET_ITERS ${TRAIN_DEVICE_OPTS[*]}" ;;
    esac
}

if ((DRY)); then
    echo "gpu_check: steps (--dry-run: nothing is run)"
    i=0
    for name in "${STEPS[@]}"; do
        i=$((i + 1))
        if selected "$name"; then flag=""; else flag=" [skipped]"; fi
        printf '%d. %s%s: %s\n' "$i" "$name" "$flag" "${WHAT[$name]}"
        step_command "$name" | sed 's/^/     $ /'
    done
    exit 0
fi

# ------------------------------------------------------------------------------------------------ CUDA first
[[ -x "$PY" ]] || command -v "$PY" >/dev/null || {
    echo "gpu_check: no interpreter $PY: run \`make setup\` first (or give --python, with --skip-mm)" >&2; exit 2; }
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cuda=$("$PY" -c 'import sys
try:
    import torch
except Exception as err:
    print(f"{type(err).__name__}: {err}")
    sys.exit(5)
ok = torch.cuda.is_available()
print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}" if ok else
      f"torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no CUDA device")
sys.exit(0 if ok else 3)' 2>&1)
case $? in
    0) echo "gpu_check: $cuda" ;;
    3) if ((REHEARSE)); then
           echo "gpu_check: --rehearse: $cuda; running the steps on the CPU with tiny sizes (figures mean nothing)"
       else
           echo "gpu_check: no CUDA: $cuda. Run this on a GPU node (nothing was run; exit 3)." >&2
           exit 3
       fi ;;
    *) echo "gpu_check: $PY cannot import torch ($(tail -n 1 <<< "$cuda")): run \`make setup\` first" >&2; exit 2 ;;
esac

# ------------------------------------------------------------------------------------------------ running
mkdir -p "$OUT/logs"
rm -f "$OUT"/*.json "$OUT/summary.txt"
declare -A STATUS=() SECS=() NOTE=()
summarise() {  # step log -> "STATUS<TAB>note" from its log and JSON
    "$PY" - "$1" "$2" "$OUT" "$SKIP_MM" "$REHEARSE" <<'EOF'
import json, re, sys
from pathlib import Path
step, log, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
skip_mm, rehearse = sys.argv[4] == "1", sys.argv[5] == "1"
text = log.read_text(errors="replace")

def bench(name, key):
    report = json.loads((out / f"{name}.json").read_text())
    errors = [r for r in report["results"] if "error" in r]
    if skip_mm:  # mmseg's MAE row needs the OpenMMLab stack
        errors = [r for r in errors if not str(r.get(key, "")).startswith("mmseg")]
    missed = [t for t in report["targets"] if not t["ok"]]
    timed = [r for r in report["results"] if "error" not in r and "skipped" not in r]
    note = f"{len(timed)} timed, {len(report['targets']) - len(missed)}/{len(report['targets'])} targets met"
    for t in missed:
        note += f"; MISS {t['target']} ({t['value']:.3g})"
    for r in errors:
        note += f"; ERROR {r.get(key)} {r.get('dtype')}: {str(r['error']).splitlines()[-1][:120]}"
    return ("FAIL" if errors else "MISS" if missed else "ok"), note

if step == "env":
    line = next((l for l in text.splitlines() if "mmcv.ops:" in l), "")
    ok = "compiled ops OK" in line and ("cuda" in line.split("built with")[0] or rehearse)
    print(("ok" if ok else "FAIL") + "\t" + (line.split(":", 1)[1].strip() if line else "no mmcv.ops line"))
elif step == "pretrain-bench":
    status, note = bench("pretrain", "variant")
    report = json.loads((out / "pretrain.json").read_text())
    rates = {r["variant"]: r["images_per_s"] for r in report["results"] if "images_per_s" in r}
    if rates:
        (out / "pretrain_rate.txt").write_text(f"{max(rates.values())}\n")
    print(f"{status}\t{note}")
elif step in ("seg-bench", "det-bench"):
    print("\t".join(bench(step.split("-")[0], "config")))
elif step == "data-bench":
    m = re.search(r"^device\s+([0-9.]+)", text, re.M)
    if not m:
        print("FAIL\tno device images/s in the output")
    else:
        rate = float(m[1])
        need = out / "pretrain_rate.txt"
        if need.exists():
            step_rate = float(need.read_text())
            ok = rate >= step_rate
            print(f"{'ok' if ok else 'MISS'}\tdevice path {rate:.0f} images/s vs the fastest pretraining step's "
                  f"{step_rate:.3g} images/s{'' if ok else ' (MISS: decoding slower than training)'}")
        else:
            print(f"ok\tdevice path {rate:.0f} images/s (no pretrain-bench figure to compare with)")
elif step == "demo-data":
    print("ok\t" + "; ".join(" ".join(l.split("  (")[0].split()) for l in text.splitlines() if l.startswith(("wrote", "kept"))))
elif step == "pretrain-amp":
    work = out / "pretrain_amp"
    resumed = re.search(r"resumed epoch", text, re.I) is not None
    ckpts = sorted(p.name for p in work.glob("epoch_*.pth"))
    ok = resumed and "epoch_2.pth" in ckpts
    print(f"{'ok' if ok else 'FAIL'}\tcheckpoints {', '.join(ckpts) or 'none'}; "
          f"{'resumed from epoch 1' if resumed else 'NO resume logged'}")
elif step in ("upernet-amp", "maskrcnn-amp"):
    key = r"mIoU: ([0-9.]+)" if step == "upernet-amp" else r"coco/bbox_mAP: ([0-9.\-]+)"
    m = re.findall(key, text)
    print(("ok\t" + f"validation {key.split(':')[0].replace(chr(92), '')} {m[-1]}") if m else "FAIL\tno validation metric logged")
else:
    print("ok\t")
EOF
}
run_step() {
    local name=$1 log="$OUT/logs/$1.log" start=$SECONDS rc=0 line summary
    echo "== $name: ${WHAT[$name]}"
    : > "$log"
    while IFS= read -r line; do
        echo "   \$ $line" | tee -a "$log"
        # shellcheck disable=SC2086  # the command lines are built from known words
        timeout "$STEP_TIMEOUT" $line >> "$log" 2>&1 || { rc=$?; break; }
    done < <(step_command "$name")
    SECS[$name]=$((SECONDS - start))
    if ((rc == 124)); then
        STATUS[$name]=FAIL NOTE[$name]="stopped after ${STEP_TIMEOUT} s (--step-timeout)"
    elif ((rc != 0)) && ! [[ $rc == 1 && $name == *-bench && -f "$OUT/${name%-bench}.json" ]]; then
        # (a benchmark exits 1 when one of its rows failed: its JSON says which, read below)
        STATUS[$name]=FAIL NOTE[$name]="exit $rc: $(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-160)"
    else
        summary=$(summarise "$name" "$log" 2>>"$log") || summary=$'FAIL\tcould not read its results (see the log)'
        STATUS[$name]=${summary%%$'\t'*} NOTE[$name]=${summary#*$'\t'}
    fi
    echo "   -> ${STATUS[$name]} in ${SECS[$name]} s: ${NOTE[$name]}"
}
start_all=$SECONDS
for name in "${STEPS[@]}"; do
    if selected "$name"; then
        run_step "$name"
    elif [[ -z "$ONLY" || ",$ONLY," == *",$name,"* ]]; then
        STATUS[$name]=skip SECS[$name]=0 NOTE[$name]="--skip-mm"
    fi
done

# ------------------------------------------------------------------------------------------------ the table
{
    echo
    echo "gpu_check: $cuda; $((SECONDS - start_all)) s in all; logs in $OUT/logs"
    printf '%-15s %-6s %6s  %s\n' step status time result
    for name in "${STEPS[@]}"; do
        [[ -n "${STATUS[$name]:-}" ]] || continue
        printf '%-15s %-6s %5ss  %s\n' "$name" "${STATUS[$name]}" "${SECS[$name]}" "${NOTE[$name]}"
    done
} | tee "$OUT/summary.txt"
for name in "${STEPS[@]}"; do
    [[ -f "$OUT/logs/$name.log" ]] && { echo "===== $name"; cat "$OUT/logs/$name.log"; }
done > "$OUT/gpu_check.log"
failed=0 missed=0
for name in "${!STATUS[@]}"; do
    [[ "${STATUS[$name]}" == FAIL ]] && failed=1
    [[ "${STATUS[$name]}" == MISS ]] && missed=1
done
((failed)) && exit 1
((missed)) && exit 4
exit 0
